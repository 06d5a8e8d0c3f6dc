"""The socket side of proxying: listeners and the relay between two connections."""
