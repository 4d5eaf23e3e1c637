"""Renderers: pure functions from torchscope's records to text, Markdown and HTML.

They import record types only for type checking, so records can delegate to them.
"""
