"""Who may call what: bearer authentication, scopes and rate limits.

Order of the answers, whatever else is wrong with a request: 401 (no or bad key) before 403
(a scope is missing) before 429 (over the limit) before 400 (the request breaks the
contract). connexion cannot give us that: it never checks scopes for bearer schemes, and
its security runs before validation only by doing a database lookup on the event loop.

So the work is split to keep the common path to one worker-thread hop:
- `SecurityGate` (a middleware, on the event loop, no database): public operations are
  rate-limited per client address; a secured operation without a bearer token is a 401.
- `Gatekeeper.admit` looks the key up, checks scopes and the key's rate limit. It runs in
  the handler's worker thread, on the handler's session (hangar.invoke), for a request
  that passed validation — or, for one that failed it, in the gate just before the 400
  leaves, so the 401/403/429 still wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from connexion.exceptions import ProblemException
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from hangar.context import Principal
from hangar.problems import Forbidden, Problem, TooManyRequests, Unauthorized
from hangar.ratelimit import Decision, RateLimiter
from hangar.requestid import RequestState, state_of

log = logging.getLogger("hangar.security")

# handlers.identity.published.authenticate: the key's principal, or None if the key is
# unknown, revoked or expired.
Authenticate = Callable[[Session, str, datetime], Principal | None]

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="hangar"'}


class Guarded(Protocol):
    """What the gate needs to know about an operation (generated.routing.Operation)."""

    @property
    def operation_id(self) -> str: ...
    @property
    def public(self) -> bool: ...
    @property
    def scopes(self) -> tuple[str, ...]: ...


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class Gatekeeper:
    def __init__(
        self,
        authenticate: Authenticate,
        session_factory: sessionmaker[Session],
        *,
        per_key: RateLimiter,
        per_address: RateLimiter,
        unauthenticated: RateLimiter,
    ) -> None:
        self._authenticate = authenticate
        self._sessions = session_factory
        self._per_key = per_key
        self._per_address = per_address
        # Failed authentications per address: bounds how fast one client can make us look
        # up keys, without sharing the (small) public signup budget.
        self._unauthenticated = unauthenticated

    @staticmethod
    def _apply(state: RequestState, decision: Decision) -> None:
        state.response_headers = [h for h in state.response_headers if not h[0].startswith(b"ratelimit-")]
        for name, value in decision.headers():
            state.add_header(name, value)

    def _over_limit(self, decision: Decision, who: str) -> TooManyRequests:
        return TooManyRequests(
            f"{who} made more than {decision.limit} requests in a minute; retry after {decision.reset_seconds} s.",
            headers={"Retry-After": str(decision.reset_seconds)},
        )

    def limit_address(self, state: RequestState) -> None:
        """Public operations: one budget per client address (on the event loop)."""
        decision = self._per_address.hit(state.client_address)
        self._apply(state, decision)
        if not decision.allowed:
            raise self._over_limit(decision, "This address")
        state.admitted = True

    def reject(self, state: RequestState, detail: str) -> Problem:
        decision = self._unauthenticated.hit(state.client_address)
        self._apply(state, decision)
        if not decision.allowed:
            return self._over_limit(decision, "This address")
        return Unauthorized(detail, headers=CHALLENGE)

    def admit(self, op: Guarded, state: RequestState, session: Session) -> Principal | None:
        """Authenticate, check scopes, count the request; raise the problem that wins."""
        if state.admitted:
            return state.principal
        if op.public:
            state.admitted = True
            return None
        token = bearer_token(state.authorization)
        if token is None:
            raise self.reject(state, "This operation needs an API key: send `Authorization: Bearer <key>`.")
        principal = self._authenticate(session, token, state.now)
        if principal is None:
            raise self.reject(state, "The API key is not valid: it is unknown, revoked or expired.")
        state.principal = principal
        decision = self._per_key.hit(str(principal.api_key_id))
        self._apply(state, decision)
        missing = sorted(set(op.scopes) - principal.scopes)
        if missing:
            raise Forbidden(
                f"This operation needs the scope(s) {', '.join(missing)}, which this API key does not hold.",
                slug="missing-scope",
            )
        if not decision.allowed:
            raise self._over_limit(decision, "This API key")
        state.admitted = True
        return principal

    def admit_alone(self, op: Guarded, state: RequestState) -> None:
        """`admit` on a session of its own (for requests that never reach a handler)."""
        with self._sessions() as session:
            self.admit(op, state, session)
            session.commit()  # the key's last_used_at, if authenticate touched it


class SecurityGate:
    """The event-loop half of the checks; see the module docstring."""

    def __init__(self, app: ASGIApp, *, operations: Mapping[str, Guarded], gatekeeper: Gatekeeper) -> None:
        self.app = app
        self._operations = operations
        self._gatekeeper = gatekeeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        routing: dict[str, Any] = scope.get("extensions", {}).get("connexion_routing", {})
        op = self._operations.get(routing.get("operation_id") or "")
        if op is None:  # not an API operation (404, 405, docs): nothing to guard
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        if op.public:
            self._gatekeeper.limit_address(state)
        elif bearer_token(state.authorization) is None:
            raise self._gatekeeper.reject(state, "This operation needs an API key: send `Authorization: Bearer <key>`.")
        try:
            await self.app(scope, receive, send)
        except (Problem, ProblemException):
            # Validation failed before the key was looked at; the key's verdict comes first.
            if not state.admitted:
                await run_in_threadpool(self._gatekeeper.admit_alone, op, state)
            raise
