"""The terminal websocket: `/v1/terminal-sessions/{sessionId}/stream`, protocol
`hangar.terminal.v1` (specs/asyncapi/terminal.yaml; ADR 0013).

    accept (subprotocol hangar.terminal.v1)
    → the auth frame (channel 5, JSON {ticket, cols?, rows?}) within terminal_auth_timeout_seconds
    → services.admit: the ticket consumed, the session the ticket's, pending, unexpired, its
      instance running, the organization under its cap → session active, event + audit line
    → the host driver's attach (hangar.drivers.terminal), in a worker thread
    → pump: stdin (0) and resize (4) frames in, stdout (1) frames out, concurrently, on the
      event loop (no thread per session, none per byte)
    → the exit frame (3) and close 1000 when the shell exits; a limit, a close request or the
      instance stopping ends it with the exit frame and the code the contract gives.

Nothing runs in the instance before `admit` returns. A refusal before that is only a close
code and a short reason (no exit frame: nothing was started). Every frame is binary; byte 0
is the channel. The ticket is only ever in the first frame, so no URL and therefore no
access log line ever carries it.

`TerminalRoutes` mounts the endpoint in front of the generated API (hangar.app): it takes
websocket scopes on the stream path, serves the protocol's AsyncAPI document at
/v1/terminal-asyncapi.json, and records the scheme and Host of createTerminalSession
requests so the answer's `url` points back at this server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from handlers.terminal import registry, services, urls
from handlers.terminal.services import (
    CLOSE_INSTANCE_STOPPED,
    CLOSE_INTERNAL,
    CLOSE_MALFORMED,
    CLOSE_MAX_DURATION,
    CLOSE_NORMAL,
    CLOSE_NOT_FOUND,
    CLOSE_NOT_RUNNING,
    CLOSE_UNAUTHORIZED,
    Admission,
    Refused,
)
from hangar.config import ROOT, Settings
from hangar.drivers.terminal import AttachError, Attachment, TerminalHost, make_terminal_host

log = logging.getLogger(__name__)

SUBPROTOCOL = "hangar.terminal.v1"
STREAM = re.compile(r"/v1/terminal-sessions/(?P<id>[^/]+)/stream")
CREATE = re.compile(r"/v1/instances/[^/]+/terminal-sessions")
DOCUMENT_PATH = "/v1/terminal-asyncapi.json"
DOCUMENT_SOURCE = ROOT / "specs" / "asyncapi" / "terminal.yaml"

STDIN, STDOUT, EXIT, RESIZE, AUTH = 0, 1, 3, 4, 5
MAX_DIMENSION = 1000
DRAIN_SECONDS = 1.0  # after the shell exits, how long its last output may take to arrive

# Why a session ended → the close code the client gets.
CLOSE_CODES = {
    "exited": CLOSE_NORMAL,
    "closed": CLOSE_NORMAL,
    "idle_timeout": services.CLOSE_IDLE,
    "max_duration": CLOSE_MAX_DURATION,
    "instance_stopped": CLOSE_INSTANCE_STOPPED,
    "key_revoked": CLOSE_UNAUTHORIZED,
    "malformed_frame": CLOSE_MALFORMED,
    "host_error": CLOSE_INTERNAL,
    "instance_not_running": CLOSE_NOT_RUNNING,
}


class Malformed(Exception):  # noqa: N818 - a protocol violation, answered with 4400
    pass


def _dimension(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DIMENSION:
        raise Malformed(f"`{name}` must be an integer from 1 to {MAX_DIMENSION}")
    return value


def _json_object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Malformed(f"the {what} frame's payload is not UTF-8 JSON") from exc
    if not isinstance(doc, dict):
        raise Malformed(f"the {what} frame's payload is not a JSON object")
    return doc


def parse_auth(payload: bytes) -> tuple[str, int | None, int | None]:
    doc = _json_object(payload, "auth")
    extra = set(doc) - {"ticket", "cols", "rows"}
    if extra:
        raise Malformed(f"the auth frame has unknown field(s) {sorted(extra)}")
    ticket = doc.get("ticket")
    if not isinstance(ticket, str) or not 1 <= len(ticket) <= 128:
        raise Malformed("the auth frame needs a `ticket` string")
    cols = _dimension(doc["cols"], "cols") if "cols" in doc else None
    rows = _dimension(doc["rows"], "rows") if "rows" in doc else None
    return ticket, cols, rows


def parse_resize(payload: bytes) -> tuple[int, int]:
    doc = _json_object(payload, "resize")
    if set(doc) != {"cols", "rows"}:
        raise Malformed("the resize frame is exactly {cols, rows}")
    return _dimension(doc["cols"], "cols"), _dimension(doc["rows"], "rows")


def exit_frame(exit_code: int | None, reason: str) -> bytes:
    return bytes([EXIT]) + json.dumps({"exit_code": exit_code, "reason": reason}, separators=(",", ":")).encode()


@dataclass
class _End:
    reason: str
    exit_code: int | None = None


class Gateway:
    """Serves the stream websocket for one app (its settings, its database)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], host: TerminalHost | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.host = host or make_terminal_host(settings)

    async def serve(self, ws: WebSocket, raw_id: str) -> None:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        if SUBPROTOCOL not in offered:
            await self._refuse(ws, CLOSE_MALFORMED, f"offer the subprotocol {SUBPROTOCOL}")
            return
        try:
            session_id = uuid.UUID(raw_id)
        except ValueError:
            await self._refuse(ws, CLOSE_NOT_FOUND, "no such terminal session")
            return
        try:
            ticket, cols, rows = await self._auth_frame(ws)
        except Refused as refusal:
            await self._refuse(ws, refusal.code, refusal.message)
            return
        except Malformed as exc:
            await self._refuse(ws, CLOSE_MALFORMED, str(exc))
            return
        except WebSocketDisconnect:
            return
        client = ws.scope.get("client")
        try:
            admission = await run_in_threadpool(
                services.admit,
                self.sessions,
                self.settings,
                session_id=session_id,
                ticket=ticket,
                client_address=client[0] if client else None,
            )
        except Refused as refusal:
            await self._refuse(ws, refusal.code, refusal.message)
            return
        await Attached(self, ws, admission, cols or admission.cols, rows or admission.rows).run()

    async def _auth_frame(self, ws: WebSocket) -> tuple[str, int | None, int | None]:
        try:
            message = await asyncio.wait_for(ws.receive(), timeout=self.settings.terminal_auth_timeout_seconds)
        except TimeoutError as exc:
            raise Refused(
                CLOSE_UNAUTHORIZED, f"no auth frame within {self.settings.terminal_auth_timeout_seconds:g} s"
            ) from exc
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        data = message.get("bytes")
        if data is None:
            raise Malformed("frames are binary; byte 0 is the channel")
        if not data:
            raise Malformed("an empty frame has no channel")
        if data[0] != AUTH:
            raise Refused(CLOSE_UNAUTHORIZED, "the first frame must be the auth frame (channel 5)")
        return parse_auth(bytes(data[1:]))

    @staticmethod
    async def _refuse(ws: WebSocket, code: int, reason: str) -> None:
        log.info("terminal websocket refused: %s %s", code, reason)
        if ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(code=code, reason=reason[:120])


class Attached:
    """One admitted session: the process, the pumps, the limits, the end."""

    def __init__(self, gateway: Gateway, ws: WebSocket, admission: Admission, cols: int, rows: int) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.ws = ws
        self.admission = admission
        self.cols, self.rows = cols, rows
        self.bytes_in = 0
        self.bytes_out = 0
        self.loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[_End] = self.loop.create_future()
        self.started = time.monotonic()
        self.last_activity = self.started
        self.attachment: Attachment | None = None
        self.output_done = asyncio.Event()

    def end(self, reason: str, exit_code: int | None = None) -> None:
        if not self.ended.done():
            self.ended.set_result(_End(reason, exit_code))

    def _request_close(self, reason: str) -> None:  # any thread (registry)
        self.loop.call_soon_threadsafe(self.end, reason)

    async def run(self) -> None:
        sid = self.admission.session_id
        registry.hold(sid, self._request_close)
        tasks: list[asyncio.Task[None]] = []
        end = _End("host_error")
        try:
            try:
                self.attachment = await run_in_threadpool(
                    self.gateway.host.open,
                    self.admission.instance_id,
                    command=self.admission.command,
                    cols=self.cols,
                    rows=self.rows,
                )
            except AttachError as exc:
                log.warning("terminal session %s: attach failed: %s (%s)", sid, exc.code, exc.message)
                if exc.code == "command_not_found":
                    message = f"hangar: {exc.message}\r\n".encode()
                    self.bytes_out += len(message)
                    await self._send(bytes([STDOUT]) + message)
                    end = _End("exited", 127)
                elif exc.code in ("not_running", "instance_missing"):
                    end = _End("instance_not_running")
                else:
                    end = _End("host_error")
                return
            tasks = [
                asyncio.create_task(self._pump_out()),
                asyncio.create_task(self._pump_in()),
                asyncio.create_task(self._wait_exit()),
                asyncio.create_task(self._watch()),
            ]
            end = await self.ended
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            registry.release(sid)
            if self.attachment is not None:
                attachment = self.attachment
                await run_in_threadpool(attachment.kill)
                attachment.close()
            try:
                await run_in_threadpool(
                    services.finish,
                    self.gateway.sessions,
                    self.admission,
                    reason=end.reason,
                    exit_code=end.exit_code,
                    bytes_in=self.bytes_in,
                    bytes_out=self.bytes_out,
                )
            except Exception:  # the client still gets its close; the sweeper ends the row later
                log.exception("terminal session %s: recording its end failed", sid)
            await self._close(end)

    async def _close(self, end: _End) -> None:
        if end.reason == "client_closed" or self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(Exception):
            await self.ws.send_bytes(exit_frame(end.exit_code, end.reason))
            await self.ws.close(code=CLOSE_CODES.get(end.reason, CLOSE_NORMAL), reason=end.reason)

    async def _send(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)

    async def _pump_out(self) -> None:
        assert self.attachment is not None
        try:
            while True:
                data = await self.attachment.read()
                if not data:
                    return
                self.bytes_out += len(data)
                self.last_activity = time.monotonic()
                await self._send(bytes([STDOUT]) + data)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.end("client_closed")
        finally:
            self.output_done.set()

    async def _pump_in(self) -> None:
        assert self.attachment is not None
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.end("client_closed")
                return
            data = message.get("bytes")
            try:
                if data is None:
                    raise Malformed("frames are binary; byte 0 is the channel")
                if not data:
                    raise Malformed("an empty frame has no channel")
                channel, payload = data[0], bytes(data[1:])
                if channel == STDIN:
                    self.bytes_in += len(payload)
                    self.last_activity = time.monotonic()
                    await self.attachment.write(payload)
                elif channel == RESIZE:
                    self.cols, self.rows = parse_resize(payload)
                    self.last_activity = time.monotonic()
                    self.attachment.resize(self.cols, self.rows)
                else:
                    raise Malformed(f"channel {channel} is not one a client may send after the auth frame")
            except Malformed as exc:
                log.info("terminal session %s: malformed frame: %s", self.admission.session_id, exc)
                self.end("malformed_frame")
                return

    async def _wait_exit(self) -> None:
        assert self.attachment is not None
        status = await self.attachment.wait()
        # Let the output the program wrote before it exited reach the client first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.output_done.wait(), DRAIN_SECONDS)
        self.end("exited", status)

    async def _watch(self) -> None:
        """The limits and the re-check (close requests, instance state) on one timer."""
        s = self.settings
        tick = max(
            0.05,
            min(
                1.0,
                s.terminal_recheck_seconds,
                s.terminal_idle_timeout_seconds / 4,
                s.terminal_max_duration_seconds / 4,
            ),
        )
        next_check = time.monotonic() + s.terminal_recheck_seconds
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - self.started >= s.terminal_max_duration_seconds:
                self.end("max_duration")
                return
            if now - self.last_activity >= s.terminal_idle_timeout_seconds:
                self.end("idle_timeout")
                return
            if now >= next_check:
                next_check = now + s.terminal_recheck_seconds
                check = await run_in_threadpool(
                    services.checkpoint,
                    self.gateway.sessions,
                    self.admission,
                    bytes_in=self.bytes_in,
                    bytes_out=self.bytes_out,
                )
                if check.close_reason is not None:
                    self.end(check.close_reason)
                    return


class TerminalRoutes:
    """ASGI middleware in front of the generated API; see the module docstring."""

    def __init__(self, app: ASGIApp, *, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.app = app
        self.gateway = Gateway(settings, sessions)
        self._document = _document(DOCUMENT_SOURCE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            match = STREAM.fullmatch(scope["path"])
            if match is None:
                await send({"type": "websocket.close", "code": 1008, "reason": "no websocket here"})
                return
            await self.gateway.serve(WebSocket(scope, receive, send), match["id"])
            return
        if scope["type"] == "http":
            if scope["path"] == DOCUMENT_PATH and scope["method"] in ("GET", "HEAD"):
                await _serve_document(self._document, scope, send)
                return
            if scope["method"] == "POST" and CREATE.fullmatch(scope["path"]):
                host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
                token = urls.request_origin.set((scope.get("scheme", "http"), host) if host else None)
                try:
                    await self.app(scope, receive, send)
                finally:
                    urls.request_origin.reset(token)
                return
        await self.app(scope, receive, send)


def _document(path: Path) -> bytes:
    try:
        return json.dumps(yaml.safe_load(path.read_text(encoding="utf-8")), indent=2, sort_keys=False).encode()
    except OSError:
        return b"{}"


async def _serve_document(body: bytes, scope: Scope, send: Send) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"access-control-allow-origin", b"*"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def middleware(settings: Settings, sessions: sessionmaker[Session]) -> Any:
    """What hangar.app puts first in its middleware list."""

    def make(app: ASGIApp) -> TerminalRoutes:
        return TerminalRoutes(app, settings=settings, sessions=sessions)

    return make
