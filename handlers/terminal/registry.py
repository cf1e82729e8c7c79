"""The sessions this process's gateway holds, so that a close request made in this process
(deleteTerminalSession, a consumer of instance.stopped) reaches the websocket at once.

Requests made in other processes reach it through the database instead: the gateway
re-reads its row every `terminal_recheck_seconds` (services.checkpoint). The registry is
an accelerator, never the only path.

`request_close` may be called from any thread (the relay's consumers run in its thread);
the callback a gateway registers hands the request to its event loop thread-safely.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

_LOCK = threading.Lock()
_HELD: dict[uuid.UUID, Callable[[str], None]] = {}


def hold(session_id: uuid.UUID, close: Callable[[str], None]) -> None:
    with _LOCK:
        _HELD[session_id] = close


def release(session_id: uuid.UUID) -> None:
    with _LOCK:
        _HELD.pop(session_id, None)


def request_close(session_id: uuid.UUID, reason: str) -> bool:
    """Ask the gateway holding `session_id` in this process to end it; False if none does."""
    with _LOCK:
        close = _HELD.get(session_id)
    if close is None:
        return False
    close(reason)
    return True


def held() -> set[uuid.UUID]:
    with _LOCK:
        return set(_HELD)
