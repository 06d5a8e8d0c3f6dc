"""The flow table: kernel observations merged into flows with processes, bytes and rates."""
