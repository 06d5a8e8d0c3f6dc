"""Policies: a TOML file -> validated Policy -> pure matcher and backend-neutral rules."""
