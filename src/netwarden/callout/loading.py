"""Callouts from a Python file (its module-level `callouts` list) or from an
installed package's entry point in the group `netwarden.callouts`."""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from netwarden.callout.api import layers_of, name_of
from netwarden.callout.registry import LoadedCallout

ENTRY_POINT_GROUP = "netwarden.callouts"


class CalloutLoadError(Exception):
    """A callout source that cannot be used, said in one sentence."""


def load(source: str) -> list[LoadedCallout]:
    """A path to a .py file, or the name of an entry point."""
    if source.endswith(".py") or "/" in source:
        return load_file(Path(source))
    return load_entry_point(source)


def load_file(path: Path) -> list[LoadedCallout]:
    if not path.is_file():
        raise CalloutLoadError(f"{path}: no such file")
    name = f"netwarden_callouts_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CalloutLoadError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CalloutLoadError(f"{path}: loading it raised {type(exc).__name__}: {exc}") from exc
    callouts = getattr(module, "callouts", None)
    if callouts is None:
        raise CalloutLoadError(f"{path} defines no `callouts` list (callouts = [MyCallout()])")
    return _checked(callouts, str(path))


def load_entry_point(name: str) -> list[LoadedCallout]:
    found = [e for e in metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == name]
    if not found:
        known = sorted(e.name for e in metadata.entry_points(group=ENTRY_POINT_GROUP))
        hint = f" (installed: {', '.join(known)})" if known else " (none is installed)"
        raise CalloutLoadError(f"no callout file or entry point named {name!r}{hint}")
    entry = found[0]
    try:
        value = entry.load()
    except Exception as exc:
        raise CalloutLoadError(f"entry point {name!r} ({entry.value}) failed: {exc}") from exc
    if isinstance(value, type):
        value = value()
    return _checked(
        value if isinstance(value, list | tuple) else [value], f"entry point {name} ({entry.value})"
    )


def _checked(callouts: Any, origin: str) -> list[LoadedCallout]:
    if not isinstance(callouts, list | tuple):
        raise CalloutLoadError(f"{origin}: `callouts` must be a list of callout objects")
    loaded = []
    for item in callouts:
        if isinstance(item, type):
            raise CalloutLoadError(
                f"{origin}: {item.__name__} is a class; list an instance ({item.__name__}())"
            )
        if not layers_of(item):
            raise CalloutLoadError(
                f"{origin}: {name_of(item)} defines no hook (classify, packet, "
                "flow_established, flow_deleted)"
            )
        loaded.append(LoadedCallout(item, origin))
    return loaded
