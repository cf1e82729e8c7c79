"""The runtime's `invoke`: what happens around every handler call (docs/architecture.md).

The generated endpoint calls `invoke(op, call, raw_body)` in a worker thread. In order:
authentication, scopes and the key's rate limit (hangar.security, on this request's
session), idempotency (hangar.idempotency), then the unit of work: `call(ctx)` runs the
handler; success commits the session (state change, outbox rows and idempotency record
together); a `Problem` rolls it back and becomes problem+json; a database constraint that
refuses the work (two requests racing for one unique value) is a 409. Anything else
propagates to the edge, which answers 500 without details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import Response

from hangar.context import RequestContext
from hangar.errors import render_problem
from hangar.idempotency import Claim, IdempotencyStore, StoredResponse, fingerprint
from hangar.problems import Conflict, Problem
from hangar.requestid import RequestState, current_state
from hangar.security import Gatekeeper, Guarded

log = logging.getLogger("hangar.invoke")

JSON = "application/json"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEPT_HEADERS = ("content-type", "location")


class Invocable(Guarded, Protocol):
    """What invoke needs to know about an operation (generated.routing.Operation), beyond
    what the security gate needs."""

    @property
    def idempotent(self) -> bool: ...
    @property
    def success_status(self) -> int: ...
    @property
    def params(self) -> tuple[Any, ...]: ...


def success_response(op: Invocable, body: Any) -> Response:
    if body is None:
        return Response(status_code=op.success_status)
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        status_code=op.success_status,
        media_type=JSON,
    )


def _stored(response: Response) -> StoredResponse:
    headers = {k: v for k, v in response.headers.items() if k in _KEPT_HEADERS}
    return StoredResponse(response.status_code, bytes(response.body).decode(), headers)


class CommitConflict(Conflict):
    """The database refused the work on a constraint: almost always two requests racing
    for the same unique value (an e-mail signed up twice at once). A 409 tells the client
    to look again; the constraint's text stays in the log."""


def _constrained(exc: IntegrityError, request_id: str) -> CommitConflict:
    log.warning("request %s: refused by a database constraint: %s", request_id, exc.orig)
    return CommitConflict("The request conflicts with a concurrent change; read the current state and retry.")


def _replay(stored: StoredResponse) -> Response:
    return Response(
        stored.body.encode(), status_code=stored.status_code, headers={**stored.headers, "Idempotent-Replayed": "true"}
    )


class Invoker:
    """`invoke` for generated.routing.bind, holding what every call needs."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        gatekeeper: Gatekeeper,
        idempotency: IdempotencyStore,
    ) -> None:
        # The relay listens on this session factory's commits (hangar.relay), so events
        # written by a handler are delivered without invoke doing anything more.
        self._sessions = session_factory
        self._gatekeeper = gatekeeper
        self._idempotency = idempotency

    def __call__(self, op: Invocable, call: Callable[[RequestContext], Any], raw_body: Any) -> Response:
        state = current_state.get()
        with self._sessions() as session:
            try:
                principal = self._gatekeeper.admit(op, state, session)
            except Problem as problem:
                session.rollback()
                return render_problem(problem, state.request_id, state.path)
            ctx = RequestContext(
                request_id=state.request_id,
                session=session,
                principal=principal,
                client_address=state.client_address,
                now=state.now,
                raw_body=state.raw_body,
                headers=state.params,
            )
            key = state.params.get(IDEMPOTENCY_HEADER) if op.idempotent else None
            if key is not None:
                return self._idempotent(op, ctx, call, raw_body, key, state)
            try:
                try:
                    body = call(ctx)
                    session.commit()
                except IntegrityError as exc:
                    raise _constrained(exc, state.request_id) from None
            except Problem as problem:
                session.rollback()
                return render_problem(problem, state.request_id, state.path)
        return success_response(op, body)

    def _idempotent(
        self,
        op: Invocable,
        ctx: RequestContext,
        call: Callable[[RequestContext], Any],
        raw_body: Any,
        key: str,
        state: RequestState,
    ) -> Response:
        session = ctx.session
        # End the authentication transaction first: on SQLite it may hold the write lock
        # (last_used_at), and the claim below writes from another connection.
        session.commit()
        principal = ctx.principal
        scope = f"key:{principal.api_key_id}" if principal is not None else f"addr:{state.client_address}"
        params = {p.name: state.params.get(p.name) for p in op.params}
        try:
            # `x-sensitive` fields (card numbers) enter the fingerprint masked: the idempotency
            # table must not hold a hash of them, which their small keyspace would let anyone
            # reverse (hangar.validators.CompiledSchema.masked).
            fingerprinted = state.masked_body if state.masked_body is not None else raw_body
            outcome = self._idempotency.begin(
                scope, op.operation_id, key, fingerprint(params, fingerprinted), state.now
            )
        except Problem as problem:
            return render_problem(problem, state.request_id, state.path)
        if isinstance(outcome, StoredResponse):
            return _replay(outcome)
        claim: Claim = outcome
        try:
            try:
                response = success_response(op, call(ctx))
                session.flush()  # constraint races surface here, before the record is written
            except IntegrityError as exc:
                session.rollback()
                self._idempotency.release(claim)  # a race is not an answer to store
                return render_problem(_constrained(exc, state.request_id), state.request_id, state.path)
            except Problem as problem:
                session.rollback()
                response = render_problem(problem, state.request_id, state.path)
                if problem.status >= 500:  # not the request's fault: let a retry run again
                    self._idempotency.release(claim)
                    return response
            self._idempotency.complete(session, claim, _stored(response))
            session.commit()
        except Problem as lost:  # complete() found the claim taken over: nothing commits
            session.rollback()
            return render_problem(lost, state.request_id, state.path)
        except BaseException:
            session.rollback()
            self._idempotency.release(claim)
            raise
        return response
