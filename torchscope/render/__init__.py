"""Exporters: functions from records to DOT, SVG, the HTML page, TensorBoard events and plots.

Records never import this package: their drawing methods (``Graph.render``, ``to_dot``, ...)
look their exporter up by name in :mod:`torchscope.records._exporters` when called.
"""
