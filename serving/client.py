"""A small stdlib HTTP client for a running finsent app (``finsent classify``, tests and the benchmark).

One ``ServeClient`` keeps one keep-alive connection; use one client per thread.
"""

from __future__ import annotations

import http.client
import json
import logging
from typing import Any
from urllib.parse import urlsplit

from classifier.errors import FinsentError

log = logging.getLogger(__name__)


class ServeHTTPError(FinsentError):
    """The app answered with an error status; ``status`` and the decoded ``body`` say why."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        detail = body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")


class ServeClient:
    """``POST /v1/classify``, ``GET /v1/model`` and ``GET /healthz`` of a finsent app at ``base_url``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"base_url {base_url!r} must look like http://127.0.0.1:8000[/prefix]")
        self.base_url = base_url.rstrip("/")
        self._host, self._port = parts.hostname, parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """One request on the keep-alive connection (reconnects once if the server closed it)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
            except BaseException:
                # a timeout or any other failure mid-request leaves http.client's connection half-used
                # ("Request-sent"): drop it, so the next call starts on a fresh connection
                self.close()
                raise
        try:
            decoded: Any = json.loads(data) if data else None
        except ValueError:
            decoded = data.decode("utf-8", "replace")
        return resp.status, decoded

    def classify(self, texts: list[str], explain: bool = False) -> list[dict[str, Any]]:
        body = json.dumps({"texts": texts, "explain": explain}, ensure_ascii=False).encode("utf-8")
        status, data = self.request("POST", "/v1/classify", body)
        if status != 200:
            raise ServeHTTPError(status, data)
        return data["results"]

    def model(self) -> dict[str, Any]:
        status, data = self.request("GET", "/v1/model")
        if status != 200:
            raise ServeHTTPError(status, data)
        return data

    def health(self) -> dict[str, Any]:
        status, data = self.request("GET", "/healthz")
        if status != 200:
            raise ServeHTTPError(status, data)
        return data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ServeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
