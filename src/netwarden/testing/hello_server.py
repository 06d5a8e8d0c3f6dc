"""The local server of the classic redirect example: answers every HTTP request with
"Hello from local server" and says where the connection was originally going.

    python -m netwarden.testing.hello_server --port 55555
    netwarden redirect --dport 80 --to 127.0.0.1:55555 --to [::1]:55555
    curl -i http://192.0.2.7/   ->  Hello from local server
                                    (header X-Original-Destination: 192.0.2.7:80)

It listens on 127.0.0.1 and ::1. It is also the example of
netwarden.engine.host.original_destination for third-party listeners.
"""

from __future__ import annotations

import argparse
import socket
import threading

from netwarden.engine.host import original_destination

BODY = b"Hello from local server\n"


def _serve(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 65536:
            data = conn.recv(4096)
            if not data:
                return
            request += data
        host, port = original_destination(conn)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"X-Original-Destination: {shown}\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
            + BODY
        )


def _listen(family: int, address: str, port: int) -> socket.socket:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind((address, port))
    listener.listen(128)
    return listener


def _accept_forever(listener: socket.socket) -> None:
    while True:
        conn, _peer = listener.accept()
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m netwarden.testing.hello_server")
    parser.add_argument("--port", type=int, default=55555)
    args = parser.parse_args()
    listeners = [_listen(socket.AF_INET, "127.0.0.1", args.port),
                 _listen(socket.AF_INET6, "::1", args.port)]  # fmt: skip
    print(f"listening on 127.0.0.1:{args.port} and [::1]:{args.port}", flush=True)
    threading.Thread(target=_accept_forever, args=(listeners[1],), daemon=True).start()
    _accept_forever(listeners[0])


if __name__ == "__main__":
    main()
