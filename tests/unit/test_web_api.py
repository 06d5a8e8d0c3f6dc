"""The control API's guard (token, cookie and CSRF header, loopback Host names), its
prompt answers, and the live view's pushes."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from netwarden.daemon.web.api import Daemon, build_app
from netwarden.daemon.web.live import LiveView
from netwarden.engine.prompts import PromptBook
from netwarden.model import Endpoint, FlowEventKind, ProcessInfo, Transport
from netwarden.model.connect import ConnectDirection, ConnectRequest
from netwarden.testing.fakes import flow_event

TOKEN = "t" * 43
CURL = ProcessInfo(pid=42, name="curl", exe="/usr/bin/curl", uid=0)


@pytest.fixture
def book() -> PromptBook:
    return PromptBook(timeout=30)


@pytest.fixture
def client(book: PromptBook) -> TestClient:
    live = LiveView()
    live.on_events(
        [
            flow_event(FlowEventKind.OPENED, CURL, 0, 0),
            flow_event(FlowEventKind.UPDATED, CURL, 100, 5000),
        ]
    )
    daemon = Daemon(live, book, None, lambda: {"callouts": []}, None, lambda: [])
    return TestClient(build_app(daemon, TOKEN), base_url="http://127.0.0.1:8470")


def test_every_request_needs_the_token(client: TestClient) -> None:
    assert client.get("/api/flows").status_code == 401
    assert client.get("/api/flows", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/", headers={"X-Netwarden-Token": TOKEN}).status_code == 200
    flows = client.get("/api/flows", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    (flow,) = flows["flows"]
    assert flow["id"] == "tcp 10.0.0.1:40000 192.0.2.7:443"
    assert (flow["bytes_sent"], flow["bytes_received"]) == (100, 5000)
    assert flows["processes"][0]["bytes_received"] == 5000


def test_a_foreign_host_name_is_refused_even_with_the_token(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Host": "attacker.example:8470"}
    assert client.get("/api/flows", headers=headers).status_code == 403


def test_the_cookie_serves_the_page_and_changes_need_the_csrf_header(
    client: TestClient, book: PromptBook
) -> None:
    assert client.get("/login?token=wrong", follow_redirects=False).status_code == 401
    login = client.get(f"/login?token={TOKEN}", follow_redirects=False)
    assert login.status_code == 303
    assert "samesite=strict" in login.headers["set-cookie"].lower()
    assert "httponly" in login.headers["set-cookie"].lower()
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../api-token").status_code == 404
    held = ConnectRequest(
        1, Transport.TCP, ConnectDirection.OUT, Endpoint("10.0.0.1", 1), Endpoint("10.0.0.2", 80)
    )
    book.hold(held, CURL, "policy")
    (prompt,) = book.pending()
    body = {"action": "allow"}
    assert client.post(f"/api/prompts/{prompt.id}", json=body).status_code == 403
    csrf = {"X-Netwarden-CSRF": "1"}
    assert client.get("/api/prompts").json()[0]["program"] == "curl"
    bad = client.post(f"/api/prompts/{prompt.id}", json={"action": "maybe"}, headers=csrf)
    assert bad.status_code == 422
    answered = client.post(f"/api/prompts/{prompt.id}", json=body, headers=csrf)
    assert answered.json()["state"] == "allow once"
    again = client.post(f"/api/prompts/{prompt.id}", json=body, headers=csrf)
    assert again.status_code == 409


def test_pushes_carry_what_changed_once_and_drop_a_client_that_falls_behind() -> None:
    live = LiveView()
    loop = asyncio.new_event_loop()
    try:
        reader = live.join(loop)
        live.push()
        assert reader.queue.empty()  # nothing changed
        opened = flow_event(FlowEventKind.OPENED, CURL, 0, 0)
        live.on_events([opened, flow_event(FlowEventKind.CLOSED, CURL, 10, 20)])
        live.push()
        payload = reader.queue.get_nowait().decode()
        assert payload.startswith("event: update\ndata: ")
        assert payload.count('"id":"tcp 10.0.0.1:40000 192.0.2.7:443"') == 1  # sent once
        assert '"bytes_sent":10,' in payload  # its last state
        for n in range(100):
            live.on_events([flow_event(FlowEventKind.UPDATED, CURL, n, n)])
            live.push()
        assert reader.queue.full()
        live.on_events([flow_event(FlowEventKind.UPDATED, CURL, 1000, 1000)])
        live.push()  # too far behind: dropped (its browser reconnects for a snapshot)
        assert not live._clients
    finally:
        loop.close()
