"""A small web server for tests and benchmarks, over HTTP or HTTPS (HTTP/1.1):

    python -m netwarden.testing.web --port 8443 --cert server.pem --key server.key

  GET /bytes/N    N bytes of 'x' (streamed, any size)
  GET /headers    the request's headers as JSON
  GET /eicar      the EICAR test file; /eicar-after/N: N bytes of 'x', then it
  GET /marker     a body holding MARKER (a signature netwarden's own scanners do not know)
  POST anything   "received N bytes" (each body also written to --uploads FILE)
  anything else   "hello from PATH"
With --h2 it offers HTTP/2 (ALPN h2) besides HTTP/1.1.
Every response carries "Server: netlab-web". It prints one JSON line once it listens.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from netwarden.inspect.scanning import EICAR
from netwarden.testing import web_h2

if TYPE_CHECKING:
    from netwarden.testing.netlab import Host

CHUNK = 256 * 1024
MARKER = b"netwarden-clamd-marker-7d1f"
UPLOADS: list[Path] = []  # where POST bodies are recorded (--uploads)


def _record_upload(path: str, body: bytes) -> None:
    for log in UPLOADS:
        with log.open("a") as out:
            out.write(json.dumps({"path": path, "body": body.decode("latin-1")}) + "\n")


def _sample(path: str) -> tuple[int, bytes] | None:
    """(bytes of 'x' first, then this body) for the sample paths."""
    if path == "/eicar":
        return 0, EICAR
    if path == "/marker":
        return 0, b"a file with " + MARKER + b" inside\n"
    if path.startswith("/eicar-after/"):
        return int(path.split("/")[2]), EICAR
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "netlab-web"
    disable_nagle_algorithm = True  # headers and body are written apart
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        sample = _sample(self.path)
        if self.path.startswith("/bytes/") or sample is not None:
            size, tail = sample or (int(self.path.split("/")[2]), b"")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size + len(tail)))
            self.end_headers()
            block = b"x" * CHUNK
            while size > 0:
                self.wfile.write(block[: min(size, CHUNK)])
                size -= CHUNK
            self.wfile.write(tail)
        elif self.path == "/headers":
            self._answer(json.dumps(dict(self.headers.items())).encode(), "application/json")
        else:
            self._answer(f"hello from {self.path}\n".encode())

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        _record_upload(self.path, body)
        self._answer(f"received {len(body)} bytes\n".encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET6
    context: ssl.SSLContext | None = None

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, object]:
        conn, address = super().get_request()
        if self.context is not None:
            conn = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def finish_request(self, request: object, client_address: object) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError):
                return
            if request.selected_alpn_protocol() == "h2":
                web_h2.serve(request, _answer_h2)
                return
        super().finish_request(request, client_address)  # type: ignore[arg-type]


def _answer_h2(
    path: str, headers: dict[str, str], body: bytes
) -> tuple[dict[str, str], int, bytes]:
    """(response headers, N, body) for an HTTP/2 request: N bytes of 'x', then body."""
    common = {"server": "netlab-web"}
    if headers.get(":method") == "POST":
        _record_upload(path, body)
        answer = f"received {len(body)} bytes\n".encode()
        return {**common, "content-type": "text/plain"}, 0, answer
    sample = _sample(path)
    if sample is not None:
        size, tail = sample
        kind = {**common, "content-type": "application/octet-stream"}
        return {**kind, "content-length": str(size + len(tail))}, size, tail
    if path.startswith("/bytes/"):
        size = int(path.split("/")[2])
        return (
            {**common, "content-type": "application/octet-stream", "content-length": str(size)},
            size,
            b"",
        )
    if path == "/headers":
        body = web_h2.headers_json(headers)
        return {**common, "content-type": "application/json"}, 0, body
    body = f"hello from {path}\n".encode()
    return {**common, "content-type": "text/plain"}, 0, body

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away, a refused handshake: nothing to report


def start(
    host: Host,
    port: int,
    cert: Path | None = None,
    key: Path | None = None,
    h2: bool = False,
    uploads: Path | None = None,
) -> subprocess.Popen[str]:
    """This server in a netlab host, once it listens (HTTPS when given cert and key)."""
    argv = [sys.executable, "-m", "netwarden.testing.web", "--port", str(port)]
    if cert is not None and key is not None:
        argv += ["--cert", str(cert), "--key", str(key)]
    if h2:
        argv.append("--h2")
    if uploads is not None:
        argv += ["--uploads", str(uploads)]
    server = host.popen(argv, stdout=subprocess.PIPE)
    assert server.stdout is not None
    json.loads(server.stdout.readline())  # printed once it listens
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--key", help="... and this key")
    parser.add_argument("--h2", action="store_true", help="offer HTTP/2 too (ALPN h2)")
    parser.add_argument("--uploads", type=Path, help="append each POST body here (JSON lines)")
    args = parser.parse_args()
    if args.uploads:
        UPLOADS.append(args.uploads)
    server = _Server(("::", args.port), _Handler)
    if args.cert:
        server.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.context.load_cert_chain(args.cert, args.key)
        server.context.set_alpn_protocols(["h2", "http/1.1"] if args.h2 else ["http/1.1"])
    print(json.dumps({"listening": args.port, "tls": bool(args.cert)}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
