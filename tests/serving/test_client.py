"""ServeClient against a real loopback HTTP server whose first answer comes too late."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.client import ServeClient


class _SlowOnce(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Serve proxy
    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).calls += 1
        if type(self).calls == 1:
            time.sleep(1.0)  # past the client's 0.3 s timeout
        body = json.dumps({"status": "ok", "call": type(self).calls}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the client already gave up on this one

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def slow_server() -> Iterator[str]:
    _SlowOnce.calls = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowOnce)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_timed_out_request_does_not_break_the_next_ones(slow_server: str) -> None:
    with ServeClient(slow_server, timeout=0.3) as client:
        with pytest.raises(TimeoutError):
            client.health()
        # before the fix every later call failed with CannotSendRequest('Request-sent')
        assert client.health() == {"status": "ok", "call": 2}
        assert client.health() == {"status": "ok", "call": 3}
