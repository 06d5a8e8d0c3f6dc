"""netwarden: monitor and control network traffic per process."""

__version__ = "0.1.0"
