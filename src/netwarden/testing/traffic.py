"""Traffic generators with exact byte counts, runnable inside netlab hosts.

    python -m netwarden.testing.traffic tcp-server --port 5000 --send 3000000
    python -m netwarden.testing.traffic tcp-client --host 10.200.1.2 --port 5000 --send 7000000

Every client prints one JSON line: its pid, its local and remote endpoints and the
bytes it moved, so a test can compare with what the monitor reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from typing import Any

CHUNK = 64 * 1024
STARTED = time.monotonic()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _send_exact(sock: socket.socket, count: int) -> None:
    block = b"n" * CHUNK
    while count > 0:
        sent = sock.send(block[: min(count, CHUNK)])
        count -= sent


def _recv_exact(sock: socket.socket, count: int) -> int:
    got = 0
    while got < count:
        data = sock.recv(min(CHUNK, count - got))
        if not data:
            break
        got += len(data)
    return got


def _report(**fields: object) -> None:
    sys.stdout.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")
    sys.stdout.flush()


def tcp_server(args: argparse.Namespace) -> None:
    """Per connection: read until the client half-closes, then send --send bytes."""
    listener = socket.socket(_family(args.bind), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.bind, args.port))
    listener.listen(1024)
    _report(listening=args.port)

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # a client may leave early
            while conn.recv(CHUNK):
                pass
            _send_exact(conn, args.send)

    while True:
        conn, _peer = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def tcp_client(args: argparse.Namespace) -> None:
    for _ in range(args.count):
        sock = socket.create_connection((args.host, args.port))
        local = sock.getsockname()
        _send_exact(sock, args.send)
        sock.shutdown(socket.SHUT_WR)
        received = _recv_exact(sock, args.recv) if args.recv else 0
        if args.linger:
            time.sleep(args.linger)
        sock.close()
        if not args.quiet:
            _report(local_port=local[1], sent=args.send, received=received)
    if args.quiet:
        _report(connections=args.count)


def quick_exit(args: argparse.Namespace) -> None:
    """Connect, send, and exit at once (no reply awaited): a very short-lived process."""
    sock = socket.create_connection((args.host, args.port))
    _send_exact(sock, args.send)
    _report(local_port=sock.getsockname()[1], sent=args.send, seconds=time.monotonic() - STARTED)
    os._exit(0)


def udp_server(args: argparse.Namespace) -> None:
    """Answer every datagram with --reply bytes."""
    sock = socket.socket(_family(args.bind), socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    _report(listening=args.port)
    reply = b"r" * args.reply
    while True:
        _data, peer = sock.recvfrom(65535)
        sock.sendto(reply, peer)


def udp_client(args: argparse.Namespace) -> None:
    """Send --count datagrams of --size bytes; count the replies' bytes."""
    sock = socket.socket(_family(args.host), socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.connect((args.host, args.port))
    received = 0
    for _ in range(args.count):
        sock.send(b"u" * args.size)
        received += len(sock.recv(65535))
    _report(local_port=sock.getsockname()[1], sent=args.count * args.size, received=received)
    if args.linger:
        time.sleep(args.linger)
    sock.close()


def _client(sub: Any, name: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    return parser


def probe(args: argparse.Namespace) -> None:
    """Try one connection (tcp) or one request (udp) and say how it went:
    connected/answered, refused (reset or ICMP unreachable), timeout (dropped on the way)
    or denied (dropped by this host's own output rules: the kernel says EPERM)."""
    kind = socket.SOCK_STREAM if args.protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(_family(args.host), kind)
    sock.settimeout(args.timeout)
    outcome = "timeout"
    try:
        sock.connect((args.host, args.port))
        if args.protocol == "udp":
            sock.send(b"probe")
            sock.recv(65535)
            outcome = "answered"
        else:
            outcome = "connected"
    except ConnectionRefusedError:
        outcome = "refused"
    except TimeoutError:
        outcome = "timeout"
    except PermissionError:  # a local firewall dropped what this socket sent
        outcome = "denied"
    except OSError as exc:
        outcome = f"error:{exc.errno}"
    finally:
        sock.close()
    _report(outcome=outcome)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m netwarden.testing.traffic")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("tcp-server")
    p.add_argument("--bind", default="::")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--send", type=int, default=0)
    p.set_defaults(func=tcp_server)
    p = _client(sub, "tcp-client")
    p.add_argument("--send", type=int, default=0)
    p.add_argument("--recv", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--linger", type=float, default=0.0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=tcp_client)
    p = _client(sub, "quick-exit")
    p.add_argument("--send", type=int, default=100_000)
    p.set_defaults(func=quick_exit)
    p = sub.add_parser("udp-server")
    p.add_argument("--bind", default="::")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--reply", type=int, default=0)
    p.set_defaults(func=udp_server)
    p = _client(sub, "udp-client")
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--linger", type=float, default=0.0)
    p.set_defaults(func=udp_client)
    p = _client(sub, "probe")
    p.add_argument("--protocol", choices=["tcp", "udp"], default="tcp")
    p.add_argument("--timeout", type=float, default=1.0)
    p.set_defaults(func=probe)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
