"""The websocket URL createTerminalSession answers with.

The handler runs in a worker thread that never sees the request's headers, so the gateway
middleware (outermost, see gateway.TerminalRoutes) records the scheme and Host of the
createTerminalSession request in a context variable, which the worker thread inherits.
`terminal_public_url` overrides both (a deployment behind a proxy that rewrites Host).
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar

from hangar.config import Settings

STREAM_PATH = "/v1/terminal-sessions/{session_id}/stream"

# (scheme, host) of the current HTTP request, e.g. ("https", "api.hangar.dev").
request_origin: ContextVar[tuple[str, str] | None] = ContextVar("terminal_request_origin", default=None)


def stream_url(settings: Settings, session_id: uuid.UUID) -> str:
    path = STREAM_PATH.format(session_id=session_id)
    if settings.terminal_public_url:
        return settings.terminal_public_url.rstrip("/") + path
    origin = request_origin.get()
    if origin is not None:
        scheme, host = origin
        return f"{'wss' if scheme in ('https', 'wss') else 'ws'}://{host}{path}"
    return f"ws://{settings.host}:{settings.port}{path}"
