"""Runnable benchmarks that compare torchscope with its peers in one run (``python -m benchmarks``)."""
