"""Small shared utilities below every layer: nested containers, number formatting, call inputs."""
