"""The /metrics endpoint of every service, always in Prometheus' classic text format.

prometheus_client answers an OpenMetrics Accept header with names escaped for OpenMetrics
(`vllm:num_requests_running` becomes `vllm_num_requests_running`), and Prometheus asks for
OpenMetrics by default. Serving the classic format keeps vLLM's metric names as vLLM documents
them, which is what the Grafana dashboards query.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = generate_latest(REGISTRY)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet: scraped every few seconds
        return


def start_metrics_server(port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve /metrics from a daemon thread; returns the server (its port when 0 was given)."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
