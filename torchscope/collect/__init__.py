"""Collectors: run the user's model under instrumentation and produce records."""
