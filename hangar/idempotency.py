"""Idempotency keys with Stripe's semantics.

A client sends `Idempotency-Key` on a create so it can retry safely. The first response
is stored and replayed byte for byte (with `Idempotent-Replayed: true`; a replayed problem
keeps the `request_id` of the request that produced it, the replay's own id is in
`X-Request-Id`) for `idempotency_ttl_seconds`;
the same key with a different request is a 422 `idempotency-key-reused`; a retry that
arrives while the first attempt still runs is a 409 `idempotency-key-in-flight`.

Never two side effects: before the handler runs, the key is *claimed* by inserting its row
in a short transaction of its own, and the table's primary key decides which of two
concurrent requests owns it. The owner's handler then writes the response into the same
row in the handler's own transaction, so the effect and its record commit together. A
handler that raises a Problem stores the problem (it replays too); an unexpected error
releases the claim so the client can retry.

Keys are scoped to the API key that sent them (public operations: the client address).
Scoping to the whole organization, as Stripe does per account, would let one member replay
another member's response — `createApiKey`'s response holds a secret.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, Uuid, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from hangar.db import Base, UTCDateTime
from hangar.problems import Conflict, Unprocessable

# A claim older than this whose owner never finished is abandoned (its process died): a new
# request may take it over. Far longer than any request may run.
STALE_CLAIM = timedelta(minutes=5)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(120), primary_key=True)
    operation_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    # Who holds the claim; the owner's final write is conditional on it.
    claim: Mapped[uuid.UUID] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Null while the first request is in flight.
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)


@dataclass(frozen=True)
class Claim:
    scope: str
    operation_id: str
    key: str
    token: uuid.UUID


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: str
    headers: dict[str, str]


def fingerprint(params: dict[str, Any], body: Any) -> str:
    """sha256 of the request's canonical JSON (its body and parameters): the same key must
    come with the same request, target included."""
    canonical = json.dumps(
        {"params": params, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _reused() -> Unprocessable:
    return Unprocessable(
        "This Idempotency-Key was used with a different request. Use a new key for a new request.",
        slug="idempotency-key-reused",
    )


def _in_flight() -> Conflict:
    return Conflict(
        "A request with this Idempotency-Key is still being processed. Retry shortly to get its response.",
        slug="idempotency-key-in-flight",
    )


class IdempotencyStore:
    def __init__(self, session_factory: sessionmaker[Session], ttl_seconds: int) -> None:
        self._sessions = session_factory
        self._ttl = timedelta(seconds=ttl_seconds)

    def begin(self, scope: str, operation_id: str, key: str, fingerprint: str, now: datetime) -> Claim | StoredResponse:
        """Claim the key (→ Claim: run the handler) or find its first response (→ replay).
        Raises the 409/422 problems."""
        for _ in range(3):  # a claim that expires or is released under us: look again
            token = uuid.uuid4()
            with self._sessions() as session:
                # Insert first, read only on conflict: on SQLite a read-then-write transaction
                # can fail to upgrade its lock; a plain insert waits for the writer instead.
                session.add(
                    IdempotencyKey(
                        scope=scope,
                        operation_id=operation_id,
                        key=key,
                        fingerprint=fingerprint,
                        claim=token,
                        created_at=now,
                        expires_at=now + self._ttl,
                    )
                )
                try:
                    session.commit()
                    return Claim(scope, operation_id, key, token)
                except IntegrityError:
                    session.rollback()
            outcome = self._existing(scope, operation_id, key, fingerprint, now)
            if outcome is not None:
                return outcome
        raise _in_flight()

    def _existing(
        self, scope: str, operation_id: str, key: str, fp: str, now: datetime
    ) -> Claim | StoredResponse | None:
        with self._sessions() as session:
            row = session.get(IdempotencyKey, (scope, operation_id, key))
            if row is None:
                return None  # released meanwhile: claim again
            if row.expires_at <= now:
                self._delete(session, row.scope, row.operation_id, row.key, row.claim)
                return None
            if row.fingerprint != fp:
                raise _reused()
            if row.status_code is not None:
                return StoredResponse(row.status_code, row.response_body or "", dict(row.response_headers or {}))
            if now - row.created_at < STALE_CLAIM:
                raise _in_flight()
            # Abandoned: take it over, conditionally, so two rescuers cannot both win.
            token = uuid.uuid4()
            taken = session.execute(
                update(IdempotencyKey)
                .where(
                    *_pk(scope, operation_id, key),
                    IdempotencyKey.claim == row.claim,
                    IdempotencyKey.status_code.is_(None),
                )
                .values(claim=token, created_at=now, expires_at=now + self._ttl)
            )
            session.commit()
            if getattr(taken, "rowcount", 0) == 1:
                return Claim(scope, operation_id, key, token)
            raise _in_flight()

    @staticmethod
    def _delete(session: Session, scope: str, operation_id: str, key: str, token: uuid.UUID) -> None:
        session.execute(delete(IdempotencyKey).where(*_pk(scope, operation_id, key), IdempotencyKey.claim == token))
        session.commit()

    @staticmethod
    def complete(session: Session, claim: Claim, response: StoredResponse) -> None:
        """Record the response in `session`'s transaction (the handler's). If the claim was
        lost (taken over as abandoned) the whole transaction must not commit: 409."""
        result = session.execute(
            update(IdempotencyKey)
            .where(*_pk(claim.scope, claim.operation_id, claim.key), IdempotencyKey.claim == claim.token)
            .values(status_code=response.status_code, response_body=response.body, response_headers=response.headers)
        )
        if getattr(result, "rowcount", 0) != 1:
            raise _in_flight()

    def release(self, claim: Claim) -> None:
        """Give the key back after an unexpected failure, so a retry runs the handler."""
        with self._sessions() as session:
            self._delete(session, claim.scope, claim.operation_id, claim.key, claim.token)

    def purge_expired(self, now: datetime) -> int:
        """Delete expired records (a worker may call this; lookups ignore them anyway)."""
        with self._sessions() as session:
            result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
            session.commit()
            return int(getattr(result, "rowcount", 0) or 0)


def _pk(scope: str, operation_id: str, key: str) -> tuple[Any, ...]:
    return (IdempotencyKey.scope == scope, IdempotencyKey.operation_id == operation_id, IdempotencyKey.key == key)


def lookup(session: Session, scope: str, operation_id: str, key: str) -> IdempotencyKey | None:
    """The record, for tests and operators."""
    return session.scalar(select(IdempotencyKey).where(*_pk(scope, operation_id, key)))
