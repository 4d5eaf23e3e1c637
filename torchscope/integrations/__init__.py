"""Front ends that plug torchscope into other tools: the pytest plugin, the Lightning callback."""
