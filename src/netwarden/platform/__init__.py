"""Operating-system backends behind the protocols in :mod:`netwarden.platform.base`.

:func:`netwarden.platform.select.current` is the one place that picks a backend.
"""
