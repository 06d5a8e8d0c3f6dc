"""The composition root of `netwarden up`: policy, proxy, monitor and history together."""
