"""What a handler receives besides its generated models: who is calling, the unit of work,
and a way to record domain events.

The runtime opens `session` before the handler runs and commits it after the handler
returns (together with the idempotency record and the outbox rows); a raised Problem rolls
everything back. Handlers never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from hangar import outbox
from hangar.db import utcnow
from hangar.problems import Unauthorized


@dataclass(frozen=True)
class Principal:
    """An authenticated API key and what it may do."""

    organization_id: uuid.UUID
    user_id: uuid.UUID
    api_key_id: uuid.UUID
    role: str
    scopes: frozenset[str]


@dataclass
class RequestContext:
    request_id: str
    session: Session
    principal: Principal | None = None
    client_address: str = "unknown"
    now: datetime = field(default_factory=utcnow)
    # The request body's bytes as received, and the declared header parameters (validated, by
    # spec name): for handlers that verify a signature over the body (the payments webhook).
    raw_body: bytes | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def caller(self) -> Principal:
        if self.principal is None:  # only public operations run without one
            raise Unauthorized("This operation needs an API key.")
        return self.principal

    def emit(self, event_type: str, organization_id: uuid.UUID, data: dict[str, Any]) -> uuid.UUID:
        """Record a domain event in the outbox, in this request's transaction."""
        return outbox.record(self.session, event_type, organization_id, data, occurred_at=self.now)
