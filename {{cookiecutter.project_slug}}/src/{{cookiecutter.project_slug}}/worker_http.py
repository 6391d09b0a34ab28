"""The worker's own HTTP endpoints on METRICS_PORT: `/metrics`, `/health/live` and `/health/ready`.

The API serves these itself; a worker started alone (`python -m {{ cookiecutter.project_slug }}.worker`)
serves them here, from a standard-library server in a daemon thread, for Prometheus and for
liveness and readiness probes. A taken port is not fatal: several workers on one host all start,
the later ones on a free port that they log.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

logger = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    is_ready: Callable[[], bool]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/health/live":
            self._send_json(HTTPStatus.OK, {"status": "alive"})
        elif path == "/health/ready":
            try:
                running = self.server.is_ready()
            except Exception:
                logger.exception("readiness check failed")
                running = False
            status = HTTPStatus.OK if running else HTTPStatus.SERVICE_UNAVAILABLE
            body = {"status": "ready" if running else "not ready", "consumer": "running" if running else "stopped"}
            self._send_json(status, body)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"detail": "Not Found"})

    def _send_json(self, status: HTTPStatus, body: dict[str, str]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Probes every few seconds would flood the log; keep them at DEBUG."""
        logger.debug("%s %s", self.address_string(), format % args)


class WorkerHTTP:
    """A running server; `port` is where it listens, `close()` stops it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="worker-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _bind(host: str, port: int, is_ready: Callable[[], bool]) -> _Server:
    server = _Server((host, port), _Handler)
    server.is_ready = is_ready
    return server


def serve(port: int, is_ready: Callable[[], bool], host: str = "0.0.0.0") -> WorkerHTTP | None:
    """Serve the endpoints on `port`; if it is taken, on a free one (logged), or not at all."""
    try:
        server = _bind(host, port, is_ready)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            logger.warning("cannot serve /metrics and /health on port %d (%s); carrying on without them", port, error)
            return None
        try:
            server = _bind(host, 0, is_ready)
        except OSError as again:
            logger.warning("METRICS_PORT %d is in use, and so is every other (%s); carrying on without", port, again)
            return None
        running = WorkerHTTP(server)
        logger.warning(
            "METRICS_PORT %d is in use (another worker on this host?); serving /metrics and /health on port %d instead",
            port,
            running.port,
        )
        return running
    running = WorkerHTTP(server)
    logger.info("metrics and health on http://%s:%d/metrics, /health/live, /health/ready", host, running.port)
    return running
