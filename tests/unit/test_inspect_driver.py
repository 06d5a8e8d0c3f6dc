"""The inspecting proxy's I/O driver with a scripted layer between socket pairs: what
one side's bytes make the layer send reaches the other side whole and in order, also
while a send waits for a slow reader."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable

from netwarden.inspect.commands import Close, Command, Send, Side
from netwarden.policy.inspect_model import InspectPolicy
from netwarden.proxy.inspecting import Inspector, _Driver

BIG = 4 * 1024 * 1024


class _Scripted:
    """The server's "big" makes a large answer to the client, the client's "ping" a
    small one; an end closes."""

    def from_client(self, data: bytes) -> list[Command]:
        if not data:
            return [Close()]
        return [Send(Side.CLIENT, b"B" * 10)] if data == b"ping" else []

    def from_server(self, data: bytes) -> list[Command]:
        return [Send(Side.CLIENT, b"A" * BIG)] if data == b"big" else [Close()]


async def _read(sock: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < count:
        piece = await loop.sock_recv(sock, 1 << 20)
        if not piece:
            break
        data += piece
    return data


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the driver never got there")


async def _scenario() -> bytes:
    client_app, conn = socket.socketpair()
    upstream, server_app = socket.socketpair()
    for sock in (client_app, conn, upstream, server_app):
        sock.setblocking(False)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    driver = _Driver(
        conn, upstream, ("192.0.2.1", 1), ("192.0.2.2", 2), Inspector(InspectPolicy()), 30
    )
    running = asyncio.ensure_future(driver.run(_Scripted(), b"hello"))
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(server_app, b"big")
    # The large answer is under way (it cannot all fit: the client does not read yet).
    await _until(lambda: bool(select.select([client_app], [], [], 0)[0]))
    await loop.sock_sendall(client_app, b"ping")
    await _until(lambda: driver.stats.client_to_server == len(b"hello" + b"ping"))
    received = await _read(client_app, BIG + 10)
    server_app.close()
    await asyncio.wait_for(running, 10)
    client_app.close()
    await asyncio.sleep(0.1)  # the proxy's side closes once it saw the client's end
    return received


def test_a_send_waiting_for_a_slow_reader_is_not_overtaken() -> None:
    received = asyncio.run(_scenario())
    assert len(received) == BIG + 10
    assert received == b"A" * BIG + b"B" * 10  # not a byte of the small answer in between
