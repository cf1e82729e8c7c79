"""The per-request work every comparison app does, written once so that only the framework
layer differs between the apps bench/api.py compares.

On the happy path it is what the generated server does around a handler (hangar.security,
hangar.invoke, the generated adapters), step for step:

- the same engine and session factory (hangar.db: SQLite WAL pragmas, or PostgreSQL pool);
- the same authentication: `handlers.identity.published.authenticate` (checksum, one
  indexed lookup joined to the membership, SHA-256 compare, `last_used_at` at most once a
  minute), then the per-key `hangar.ratelimit.RateLimiter` and the scope check;
- the same handler functions (`handlers.identity.operations`) on a `RequestContext`, so the
  same queries, pydantic response models and outbox rows;
- the same serialisation (`model_dump(mode="json", by_alias=True, exclude_none=True)`, then
  compact `json.dumps`) and the same response headers (`X-Request-Id`, `RateLimit-*`);
- one commit per request, all of it in one worker thread (SQLAlchemy is synchronous).

Request validation is each framework's own: bench/api.py checks, before measuring, that the
apps answer the same request with the same JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

from handlers.identity.published import authenticate
from hangar.config import Settings
from hangar.context import RequestContext
from hangar.db import make_engine, make_session_factory, utcnow
from hangar.problems import Forbidden, Problem, TooManyRequests, Unauthorized, problem_body
from hangar.ratelimit import RateLimiter
from hangar.requestid import accept_or_generate
from hangar.security import bearer_token

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"


def dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class Outcome:
    status: int
    body: bytes
    media_type: str
    headers: list[tuple[str, str]]

    def response(self, request_id: str) -> Response:
        headers = {"X-Request-Id": request_id, **dict(self.headers)}
        return Response(self.body, status_code=self.status, media_type=self.media_type, headers=headers)


def problem_outcome(
    problem: Problem, request_id: str, path: str, headers: list[tuple[str, str]] | None = None
) -> Outcome:
    body = problem_body(
        problem.status,
        problem.title,
        problem.detail,
        request_id,
        slug=problem.slug,
        instance=path,
        errors=problem.errors,
    )
    return Outcome(problem.status, dumps(body), PROBLEM_JSON, [*(headers or []), *problem.headers.items()])


def request_id_of(supplied: str | None) -> str:
    return accept_or_generate(supplied)


def token_of(authorization: str | None) -> str | None:
    return bearer_token(authorization)


class Work:
    """Everything one app instance owns: engine, sessions, the per-key rate limiter."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.sessions = make_session_factory(self.engine)
        self.per_key = RateLimiter(settings.rate_limit_per_minute)

    def close(self) -> None:
        self.engine.dispose()

    def handle(
        self,
        *,
        scopes: frozenset[str],
        success: int,
        token: str | None,
        request_id: str,
        path: str,
        client: str,
        call: Callable[[RequestContext], BaseModel],
    ) -> Outcome:
        """Authenticate, check scopes and the rate limit, run `call` in a unit of work and
        serialise what it returns (synchronous: call it in a worker thread)."""
        if token is None:
            return problem_outcome(
                Unauthorized("This operation needs an API key: send `Authorization: Bearer <key>`."), request_id, path
            )
        now = utcnow()
        with self.sessions() as session:
            principal = authenticate(session, token, now)
            if principal is None:
                return problem_outcome(
                    Unauthorized("The API key is not valid: it is unknown, revoked or expired."), request_id, path
                )
            decision = self.per_key.hit(str(principal.api_key_id))
            limits = decision.headers()
            missing = sorted(scopes - principal.scopes)
            if missing:
                return problem_outcome(
                    Forbidden(f"This operation needs the scope(s) {', '.join(missing)}.", slug="missing-scope"),
                    request_id,
                    path,
                    limits,
                )
            if not decision.allowed:
                over = TooManyRequests(
                    "This API key is over its limit.", headers={"Retry-After": str(decision.reset_seconds)}
                )
                return problem_outcome(over, request_id, path, limits)
            ctx = RequestContext(
                request_id=request_id, session=session, principal=principal, client_address=client, now=now
            )
            try:
                body = call(ctx).model_dump(mode="json", by_alias=True, exclude_none=True)
                session.commit()
            except Problem as problem:
                session.rollback()
                return problem_outcome(problem, request_id, path, limits)
        return Outcome(success, dumps(body), JSON, limits)
