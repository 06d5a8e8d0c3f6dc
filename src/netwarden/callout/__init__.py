"""Callouts: Python functions at named layers that see connections and decide them,
as WFP callout drivers do (classify, notify, flow delete)."""
