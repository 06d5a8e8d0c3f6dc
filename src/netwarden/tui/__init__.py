"""Terminal user interface (textual)."""
