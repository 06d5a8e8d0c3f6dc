"""`netwarden up --metrics ADDRESS`: the engine's Prometheus metrics over HTTP, GET
/metrics only. Without authentication, so it listens where the caller says (loopback
by default) and says so when that is not loopback."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from netwarden.engine.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


class MetricsServer:
    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        served = metrics

        class Handler(BaseHTTPRequestHandler):
            server_version = "netwarden"
            sys_version = ""

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                body = served.exposition()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, port), Handler)
        if not ipaddress.ip_address(host).is_loopback:
            log.warning("metrics on %s:%d, reachable from other hosts, without a token", host, port)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="netwarden-metrics", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
