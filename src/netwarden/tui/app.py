"""The live connection table, TCPView-style, on textual.

The monitor runs in a worker thread and hands its events over through a deque;
the UI applies them to a :class:`LiveView` on a timer and redraws.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, Static

from netwarden.cli.render import byte_cells, how_label, human_bytes
from netwarden.engine.core import Engine
from netwarden.model import FlowEvent
from netwarden.monitor.filters import FlowFilter
from netwarden.monitor.live import LiveView, Row, RowStatus, SortKey

FLOW_COLUMNS: tuple[tuple[str, SortKey | None], ...] = (
    ("Process", SortKey.PROCESS),
    ("PID", SortKey.PID),
    ("Proto", None),
    ("Local", SortKey.LOCAL),
    ("Remote", SortKey.REMOTE),
    ("State", SortKey.STATE),
    ("Sent", SortKey.SENT),
    ("Received", SortKey.RECEIVED),
    ("Rate", SortKey.RATE),
    ("How", None),
)
TOTAL_COLUMNS = ("Process", "PID", "Flows", "Sent", "Received", "Send/s", "Receive/s", "Path")
# Rows drawn at most: a screen shows a few dozen; redrawing thousands costs a second.
MAX_ROWS = 250
STYLES = {RowStatus.NEW: "bold green", RowStatus.LIVE: "", RowStatus.CLOSED: "red"}


# What one row shows: its style and the text of each column.
Cells = tuple[str, tuple[str, ...]]


def _cells(row: Row) -> Cells:
    flow = row.flow
    proc = flow.process
    style = STYLES[row.status] + (" dim" if row.fade > 0.5 else "")
    values = (
        proc.name if proc and proc.name else "?",
        str(proc.pid) if proc else "-",
        str(flow.key.transport),
        str(flow.key.local),
        str(flow.key.remote),
        flow.state,
        *byte_cells(flow),
        f"{human_bytes(flow.send_rate + flow.receive_rate)}/s",
        f"{how_label(flow)} {flow.app}" if flow.app else how_label(flow),
    )
    return style, values


def draw_rows(table: DataTable[Any], rows: list[Row], drawn: list[Cells]) -> list[Cells]:
    """Show rows in the table unless it shows them already; what it shows now."""
    cells = [_cells(row) for row in rows]
    if cells != drawn:
        table.clear()
        table.add_rows(tuple(Text(v, style=style) for v in values) for style, values in cells)
    return cells


class MonitorApp(App[None]):
    TITLE = "netwarden monitor"
    CSS = """
    #status { height: 1; background: $boost; }
    #filter { display: none; }
    #filter.shown { display: block; }
    #totals { display: none; }
    .totals #totals { display: block; }
    .totals #flows { display: none; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("slash", "filter", "Filter"),
        Binding("t", "toggle_totals", "Per process"),
        Binding("p", "sort('process')", "Sort process"),
        Binding("r", "sort('rate')", "Sort rate"),
        Binding("b", "sort('sent')", "Sort sent"),
        Binding("s", "sort('state')", "Sort state"),
        Binding("l", "sort('local')", "Sort local port"),
        Binding("a", "sort('age')", "Sort age"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(
        self,
        engine: Engine,
        stop: threading.Event,
        flow_filter: FlowFilter | None = None,
        duration: float | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.stop = stop
        self.duration = duration
        self.view = LiveView()
        if flow_filter is not None:
            self.view.filter = flow_filter
        self._pending: collections.deque[list[FlowEvent]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._error: str = ""
        self._drawn: list[Cells] = []

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        hint = "proc:NAME port:N state:S addr:A app:TLS proto:tcp|udp|icmp|raw|packet"
        yield Input(placeholder=hint, id="filter")
        yield DataTable(id="flows", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="totals", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        flows = self.query_one("#flows", DataTable)
        for label, sort in FLOW_COLUMNS:
            flows.add_column(label, key=sort.value if sort else label.lower())
        self.query_one("#totals", DataTable).add_columns(*TOTAL_COLUMNS)
        flows.focus()  # keys act on the table from the start, not on the hidden filter box
        self._thread = threading.Thread(target=self._run_monitor, daemon=True)
        self._thread.start()
        self.set_interval(min(self.engine.monitor.interval, 1.0), self.redraw)

    def _run_monitor(self) -> None:
        try:
            self.engine.bus.subscribe(self._take)
            self.engine.run(self.stop, self.duration)
        except Exception as exc:  # shown in the status line instead of killing the UI
            self._error = f"monitor stopped: {exc}"
        if self.duration is not None and not self.stop.is_set():
            self.call_from_thread(self.exit)

    def _take(self, events: Sequence[object]) -> None:
        self._pending.append([e for e in events if isinstance(e, FlowEvent)])

    def redraw(self) -> None:
        now = time.time()
        while self._pending:
            self.view.apply(self._pending.popleft(), now)
        self.view.expire(now)
        if self.has_class("totals"):
            self._draw_totals()
        else:
            self._draw_flows(now)

    def _draw_flows(self, now: float) -> None:
        table = self.query_one("#flows", DataTable)
        rows = self.view.rows(now, MAX_ROWS)
        shown = f"{len(rows)} shown" if len(rows) < MAX_ROWS else (
            f"first {MAX_ROWS} of {self.view.matching()} shown (filter with /)"
        )  # fmt: skip
        self._drawn = draw_rows(table, rows, self._drawn)
        missing = "  |  " + "; ".join(self.engine.missing) if self.engine.missing else ""
        order = "desc" if self.view.descending else "asc"
        self.query_one("#status", Static).update(
            f"{len(self.view)} live flows, {shown}  |  sort: {self.view.sort_key} "
            f"{order}  |  filter: {self._filter_text() or 'none'}{missing}{self._error}"
        )

    def _draw_totals(self) -> None:
        table = self.query_one("#totals", DataTable)
        table.clear()
        table.add_rows(
            (t.name, str(t.pid) if t.pid is not None else "-", str(t.flows),
             human_bytes(t.bytes_sent), human_bytes(t.bytes_received),
             f"{human_bytes(t.send_rate)}/s", f"{human_bytes(t.receive_rate)}/s", t.exe)
            for t in self.view.totals()
        )  # fmt: skip
        self.query_one("#status", Static).update("per-process totals (t: back to flows)")

    def _filter_text(self) -> str:
        f = self.view.filter
        parts = [
            f"proc:{f.process}" if f.process else "",
            f"port:{f.port}" if f.port is not None else "",
            f"state:{f.state}" if f.state else "",
            f"addr:{f.address}" if f.address else "",
            f.transport or "",
        ]
        return " ".join(p for p in parts if p)

    def action_sort(self, key: str) -> None:
        self.view.sort_by(SortKey(key))
        self.redraw()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key in {k.value for k in SortKey}:
            self.action_sort(str(key))

    def action_toggle_totals(self) -> None:
        self.toggle_class("totals")
        self.redraw()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self._filter_text()
        box.focus()

    def action_clear_filter(self) -> None:
        self.view.filter = FlowFilter()
        self.query_one("#filter", Input).remove_class("shown")
        self.query_one("#flows", DataTable).focus()
        self.redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            self.view.filter = FlowFilter.parse(event.value)
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        event.input.remove_class("shown")
        self.query_one("#flows", DataTable).focus()
        self.redraw()

    def on_unmount(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
