"""The live view driven like a user would: keys, filter box, totals view."""

from __future__ import annotations

import asyncio
import threading

from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from netwarden.engine.core import Engine
from netwarden.model import ProcessInfo
from netwarden.monitor.service import Monitor
from netwarden.testing.fakes import FakeResolver, FakeSocketTable, FakeSources, tcp_socket
from netwarden.tui.app import MonitorApp


def _app() -> MonitorApp:
    resolver = FakeResolver(
        owners={1: 10, 2: 20, 3: 20},
        processes={
            10: ProcessInfo(pid=10, name="curl", exe="/usr/bin/curl"),
            20: ProcessInfo(pid=20, name="nginx", exe="/usr/sbin/nginx"),
        },
    )
    sockets = FakeSocketTable([
        tcp_socket("10.0.0.1:40000", "192.0.2.7:443", inode=1, sent=5000),
        tcp_socket("10.0.0.1:80", "198.51.100.2:51000", inode=2, sent=900),
        tcp_socket("10.0.0.1:80", "198.51.100.3:51001", inode=3, sent=100),
    ])  # fmt: skip
    sources = FakeSources(sockets=sockets, processes=resolver)
    return MonitorApp(Engine(sources, Monitor(sources, interval=0.1), True), threading.Event())


def _column(table: DataTable[object], index: int) -> list[str]:
    return [str(table.get_row_at(row)[index]) for row in range(table.row_count)]


def test_table_shows_flows_and_filters_and_totals() -> None:
    async def scenario() -> None:
        app = _app()
        async with app.run_test(size=(160, 30)) as pilot:
            flows = app.query_one("#flows", DataTable)
            for _ in range(50):
                await pilot.pause(0.05)
                if flows.row_count == 3:
                    break
            assert flows.row_count == 3
            assert sorted(_column(flows, 0)) == ["curl", "nginx", "nginx"]

            await pilot.press("b")  # sort by bytes sent, most first
            assert _column(flows, 6)[0] == "4.9 KiB"

            await pilot.press("slash")
            box = app.query_one("#filter", Input)
            box.value = "proc:nginx"
            await pilot.press("enter")
            assert _column(flows, 0) == ["nginx", "nginx"]
            status = str(app.query_one("#status", Static).render())
            assert "proc:nginx" in status

            await pilot.press("t")
            totals = app.query_one("#totals", DataTable)
            assert _column(totals, 0) == ["nginx"]
            assert _column(totals, 2) == ["2"]
            await pilot.press("q")

    asyncio.run(scenario())


def test_bad_filter_is_reported_and_keeps_the_old_one() -> None:
    async def scenario() -> None:
        app = _app()
        async with app.run_test(size=(160, 30)) as pilot:
            await pilot.pause(0.3)
            await pilot.press("slash")
            app.query_one("#filter", Input).value = "colour:red"
            await pilot.press("enter")
            assert app.view.filter.process is None
            assert app.query_one("#flows", DataTable).row_count == 3
            await pilot.press("q")

    asyncio.run(scenario())


def test_keys_work_from_a_fresh_start_and_the_footer_lists_them() -> None:
    async def scenario() -> None:
        app = _app()
        async with app.run_test(size=(200, 30)) as pilot:
            await pilot.pause(0.3)
            assert isinstance(app.focused, DataTable)
            await pilot.press("t")  # the very first key acts
            assert app.has_class("totals")
            assert app.view.filter.process is None
            shown = {b.key for b in app.BINDINGS if isinstance(b, Binding) and b.show}
            assert {"q", "slash", "t", "p", "r", "b", "s", "l", "a"} <= shown
            await pilot.press("t", "q")
        assert app.return_code == 0

    asyncio.run(scenario())
