"""Command-line front-end: parses arguments and calls the core."""
