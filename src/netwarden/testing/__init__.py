"""Test helpers shipped with netwarden: isolated hosts (netlab) and traffic tools."""
