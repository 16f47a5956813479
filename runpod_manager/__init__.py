"""rpm: keep a RunPod GPU pod available when you need it and stopped when you don't."""

__version__ = "0.1.0"
