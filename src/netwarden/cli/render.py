"""Plain-text rendering of flows for --once and history (no terminal UI needed)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from netwarden.model import Flow
from netwarden.model.flow import host_port, relay_role

if TYPE_CHECKING:  # a table listing does not load the proxy (nor asyncio)
    from netwarden.proxy.relay import RelayStats


def relayed_flow(
    kind: str, client: tuple[str, int], destination: tuple[str, int], stats: RelayStats
) -> dict[str, object]:
    """One NDJSON line for a flow a proxy relayed: the same for `netwarden up` and
    `netwarden proxy` (docs/redirect.md, "What the proxy prints")."""
    record: dict[str, object] = {
        "kind": kind,
        "client": host_port(client),
        "destination": host_port(destination),
        "bytes_up": stats.client_to_server,
        "bytes_down": stats.server_to_client,
        "error": stats.error,
    }
    if stats.app:
        record["app"] = stats.app
    return record


def human_bytes(count: float) -> str:
    """Binary multiples, labelled as such: 1,000,000 bytes are 976.6 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def byte_cells(flow: Flow) -> tuple[str, str]:
    """Sent and received, or '-' where nothing measured them; '+' before the counts
    of a conversation counted only since the monitor started."""
    if not flow.bytes_measured:
        return "-", "-"
    since = "+" if flow.counted_since is not None else ""
    return since + human_bytes(flow.bytes_sent), since + human_bytes(flow.bytes_received)


def process_label(flow: Flow) -> tuple[str, str]:
    if flow.process is None:
        return "-", "?"
    return str(flow.process.pid), flow.process.name or "?"


def how_label(flow: Flow) -> str:
    """How the process was found, and the flow's part in a relayed connection."""
    role = relay_role(flow.relay)
    return f"{flow.attribution.method} {role}" if role else str(flow.attribution.method)


HEADER = ("PROTO", "LOCAL", "REMOTE", "STATE", "PID", "PROCESS", "SENT", "RECV", "HOW")


def table(flows: Iterable[Flow], *, with_time: bool = False) -> str:
    """The flows as aligned columns; an APP column (what netwarden's proxy identified)
    when any flow has one."""
    flows = list(flows)
    with_app = any(flow.app for flow in flows)
    rows: list[tuple[str, ...]] = [
        HEADER + (("LAST SEEN",) if with_time else ()) + (("APP",) if with_app else ())
    ]
    for flow in flows:
        pid, name = process_label(flow)
        row: tuple[str, ...] = (
            str(flow.key.transport), str(flow.key.local), str(flow.key.remote), flow.state,
            pid, name, *byte_cells(flow),
            how_label(flow),
        )  # fmt: skip
        if with_time:
            row += (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(flow.last_seen)),)
        if with_app:
            row += (flow.app or "-",)
        rows.append(row)
    return aligned(rows)


def aligned(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def detection_table(detections: Iterable[dict[str, object]]) -> str:
    """Findings of the content scanners (history rows) as aligned columns."""
    rows: list[tuple[str, ...]] = [
        ("TIME", "PID", "PROCESS", "WHAT", "WAY", "SCANNER", "SIGNATURE", "MATCHED", "ACTION")
    ]
    for found in detections:
        moment = float(str(found["time"]))
        what = f"{found['method']} {found['host']}{found['path']}".strip()
        rows.append(
            (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)),
                str(found["pid"] or "-"),
                str(found["process_name"] or "-"),
                what or f"{found['client']} -> {found['destination']}",
                str(found["direction"]),
                str(found["scanner"]),
                str(found["signature"]),
                str(found["matched"] or "-"),
                str(found["action"]),
            )
        )
    return aligned(rows)
