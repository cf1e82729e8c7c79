"""Request ids and the per-request state the server's layers share.

Every response carries `X-Request-Id`; every problem repeats it as `request_id`. A client
may send its own id (to correlate its logs with ours) but only in a shape that is safe to
echo into headers, logs and problem bodies: ^[A-Za-z0-9_-]{1,64}$. Anything else is
replaced, never rejected: a bad correlation id is not worth failing a request for.

`RequestState` is created by the edge middleware, stored in the ASGI scope under
`SCOPE_KEY` and filled in as the request moves inward (validated parameters, parsed body,
the principal, rate-limit headers). The scope is shallow-copied by some layers; the state
object is shared by reference, so every layer sees the same one.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hangar.context import Principal
from hangar.db import utcnow

SCOPE_KEY = "hangar"
HEADER = "X-Request-Id"
_VALID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_request_id() -> str:
    # 128 random bits: unique without coordination between processes.
    return "req_" + secrets.token_hex(16)


def accept_or_generate(supplied: str | None) -> str:
    """The client's id if it is safe to echo, else a fresh one."""
    if supplied and _VALID.fullmatch(supplied):
        return supplied
    return new_request_id()


@dataclass
class RequestState:
    request_id: str
    client_address: str
    method: str
    path: str
    now: datetime = field(default_factory=utcnow)
    # Raw `Authorization` header value; parsed by hangar.security.
    authorization: str | None = None
    # Validated request parameters by spec name (path, query, header), with spec defaults.
    params: dict[str, Any] = field(default_factory=dict)
    # The parsed JSON body (None when the operation has none or it was empty).
    body: Any = None
    # The body's bytes exactly as received (None without a body): what a signature over the
    # body is computed on (the payments webhook), since re-serialising the parsed JSON would
    # not give the same bytes.
    raw_body: bytes | None = None
    # The parsed body with `x-sensitive` fields (card numbers) masked (hangar.validators.mask):
    # what the idempotency fingerprint hashes instead of `body` (hangar.validators); None when
    # the schema has no such field.
    masked_body: Any = None
    principal: Principal | None = None
    # True once authentication, scopes and rate limits have been applied to this request.
    admitted: bool = False
    # Headers every response to this request carries (RateLimit-*), added at the edge.
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def add_header(self, name: str, value: str) -> None:
        self.response_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))


def state_of(scope: Any) -> RequestState:
    """The state the edge put in this scope (every HTTP request has one)."""
    return scope[SCOPE_KEY]  # type: ignore[no-any-return]


# The endpoint runs in a worker thread that never sees the ASGI scope; the dispatcher sets
# this for the duration of the call so `invoke` can find the request it serves.
current_state: ContextVar[RequestState] = ContextVar("hangar_request_state")
