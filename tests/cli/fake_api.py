"""A scripted stand-in for the Hangar API: each (method, path) answers from a queue of
(status, body) pairs, the last one repeating, and every request is recorded."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACTION_ID = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
INSTANCE_ID = "7d1f0e2a-3b4c-4d5e-8f60-718293a4b5c6"
NOT_FOUND = {"type": "https://docs.hangar.dev/problems/not-found", "title": "Not Found", "status": 404,
             "detail": "No such thing.", "request_id": "req_fake"}  # fmt: skip


def action(status: str, progress: int, *, kind: str = "create", error: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "id": ACTION_ID,
        "instance_id": INSTANCE_ID,
        "type": kind,
        "status": status,
        "progress": progress,
        "error": error,
        "created_at": "2026-11-28T10:00:00Z",
        "started_at": None,
        "completed_at": None,
    }


# States in which an action is under way (the instance is `locked`).
TRANSITIONAL = frozenset({"pending", "provisioning", "stopping", "starting", "rebooting", "terminating"})


def instance(state: str, locked: bool | None = None) -> dict[str, Any]:
    return {
        "id": INSTANCE_ID, "name": "web-1", "state": state, "state_reason": None, "region": "fra1", "zone": None,
        "instance_type": "cpu-2", "image": "ubuntu-24.04", "vcpus": 2, "memory_mb": 4096, "disk_gb": 80, "gpus": 0,
        "gpu_model": None, "price_per_hour": 3, "currency": "USD",
        "locked": state in TRANSITIONAL if locked is None else locked,
        "created_at": "2026-11-28T10:00:00Z", "updated_at": "2026-11-28T10:00:00Z", "launched_at": None,
        "terminated_at": None,
    }  # fmt: skip


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeApi:
    url: str = ""
    routes: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Any, status: int = 200) -> None:
        """Answer `method path` with these bodies in turn (the last repeats); a tuple is (status, body)."""
        self.routes[(method, path)] = [a if isinstance(a, tuple) else (status, a) for a in answers]

    def answer(self, request: Request) -> tuple[int, Any]:
        self.requests.append(request)
        queue = self.routes.get((request.method, request.path))
        if not queue:
            return 404, NOT_FOUND
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def polls(self, path: str) -> int:
        return sum(1 for r in self.requests if r.method == "GET" and r.path == path)


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(self.command, self.path, dict(self.headers), json.loads(raw) if raw else None)
            status, body = api.answer(request)
            data = json.dumps(body).encode()
            self.send_response(status)
            kind = "application/problem+json" if status >= 400 else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def log_message(self, *args: object) -> None:  # keep pytest's output clean
            pass

    return Handler


@contextmanager
def serve() -> Iterator[FakeApi]:
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
