"""Terminal Gateway use cases: the REST side (tickets, listing, closing) inside the caller's
unit of work, and the gateway side (admitting a ticket, saving counters, ending a session)
on sessions of its own. operations.py turns rows into API models; gateway.py runs the
websocket and calls the `gateway side` functions in a worker thread.

Tickets: 32 random bytes (`hgt_` + base64url), shown once; only their SHA-256 is stored. A
ticket is consumed by ONE conditional UPDATE (`ticket_used_at IS NULL`), so of two clients
racing with the same ticket exactly one gets past it — on SQLite and on PostgreSQL. Any
presentation consumes it, even one that is then refused (wrong session, expired, …): a
ticket is never good for a second try.

Tenant isolation: REST rows are loaded by (id, caller's organization); on the websocket the
ticket is the credential, so the organization is the ticket's and a ticket presented for
another session (any organization's) is refused with 4404 without telling which.

Nothing here logs or stores terminal content; the audit lines (logger `hangar.audit`) name
who, what instance, when, how it ended and byte counts — never argv, input or output.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, event, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from handlers.provisioning import published
from handlers.terminal import registry
from handlers.terminal.tables import TerminalSession
from hangar import outbox
from hangar.config import Settings
from hangar.context import RequestContext
from hangar.db import utcnow
from hangar.pagination import Page, paginate
from hangar.problems import Conflict, NotFound

log = logging.getLogger(__name__)
audit = logging.getLogger("hangar.audit")

TICKET_PREFIX = "hgt_"
MAX_TICKET_TTL_SECONDS = 60
RUNNING = "running"

# Close codes of the websocket contract (specs/asyncapi/terminal.yaml).
CLOSE_NORMAL = 1000
CLOSE_MALFORMED = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE = 4408
CLOSE_NOT_RUNNING = 4409
CLOSE_MAX_DURATION = 4410
CLOSE_TOO_MANY = 4429
CLOSE_INSTANCE_STOPPED = 4499
CLOSE_INTERNAL = 1011


class InstanceNotRunning(Conflict):
    slug = "instance-not-running"
    title = "Instance Not Running"


class SessionLimit(Conflict):
    slug = "terminal-session-limit"
    title = "Terminal Session Limit"


def ticket_ttl(settings: Settings) -> int:
    return max(1, min(MAX_TICKET_TTL_SECONDS, int(settings.terminal_ticket_ttl_seconds)))


def new_ticket() -> tuple[str, str]:
    """(the ticket to show once, the hash to store)."""
    token = TICKET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return token, hash_ticket(token)


def hash_ticket(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# --- REST side ----------------------------------------------------------------------------


def _lock_organization(session: Session, organization_id: uuid.UUID) -> None:
    """Serialise the cap check of one organization's sessions (PostgreSQL: a transaction
    advisory lock; SQLite: the caller's first write already holds the database lock)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(
            hashlib.blake2b(b"terminal:" + organization_id.bytes, digest_size=8).digest(), "big", signed=True
        )
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _held(session: Session, organization_id: uuid.UUID, now: datetime, *, excluding: uuid.UUID | None = None) -> int:
    """Sessions that count against the cap: active ones and unexpired pending ones."""
    query = (
        select(func.count())
        .select_from(TerminalSession)
        .where(
            TerminalSession.organization_id == organization_id,
            or_(
                TerminalSession.status == "active",
                and_(TerminalSession.status == "pending", TerminalSession.ticket_expires_at > now),
            ),
        )
    )
    if excluding is not None:
        query = query.where(TerminalSession.id != excluding)
    return int(session.scalar(query) or 0)


def create_session(
    ctx: RequestContext, settings: Settings, *, instance_id: uuid.UUID, command: list[str] | None, cols: int, rows: int
) -> tuple[TerminalSession, str]:
    caller, session, now = ctx.caller, ctx.session, ctx.now
    view = published.instance_view(session, caller.organization_id, instance_id)
    if view is None:
        raise NotFound(f"Instance {instance_id} was not found.", slug="not-found")
    if view.state != RUNNING:
        raise InstanceNotRunning(
            f"Instance {instance_id} is {view.state}; a terminal can only be opened into a running instance."
        )
    token, digest = new_ticket()
    row = TerminalSession(
        id=uuid.uuid4(),
        organization_id=caller.organization_id,
        instance_id=instance_id,
        api_key_id=caller.api_key_id,
        user_id=caller.user_id,
        command=list(command) if command else None,
        cols=cols,
        rows=rows,
        status="pending",
        ticket_hash=digest,
        ticket_expires_at=now + timedelta(seconds=ticket_ttl(settings)),
        created_at=now,
        bytes_in=0,
        bytes_out=0,
        client_address=ctx.client_address[:64] if ctx.client_address else None,
    )
    # The insert first: on SQLite it takes the write lock, so two creates of one organization
    # cannot both count below the cap; on PostgreSQL the advisory lock does that.
    session.add(row)
    session.flush()
    _lock_organization(session, caller.organization_id)
    held = _held(session, caller.organization_id, now, excluding=row.id)
    cap = settings.terminal_max_sessions_per_org
    if held >= cap:
        raise SessionLimit(
            f"The organization already holds {held} terminal session(s), the most it may hold at once "
            f"({cap}); close one (DELETE /v1/terminal-sessions/{{id}}) or wait for one to end."
        )
    audit.info(
        "terminal.ticket_issued session=%s org=%s instance=%s key=%s interactive=%s client=%s",
        row.id, row.organization_id, row.instance_id, row.api_key_id, command is None, row.client_address,
    )  # fmt: skip
    return row, token


def effective_status(row: TerminalSession, now: datetime) -> tuple[str, datetime | None, str | None]:
    """(status, ended_at, end_reason) as the API shows them: a pending session whose ticket
    expired is ended (`ticket_expired`) even before the sweeper writes it down."""
    if row.status == "pending" and row.ticket_expires_at <= now:
        return "ended", row.ticket_expires_at, "ticket_expired"
    return row.status, row.ended_at, row.end_reason


def list_sessions(
    ctx: RequestContext, *, limit: int, cursor: str | None, instance_id: uuid.UUID | None, status: str | None
) -> Page[TerminalSession]:
    now = ctx.now
    query = select(TerminalSession).where(TerminalSession.organization_id == ctx.caller.organization_id)
    if instance_id is not None:
        query = query.where(TerminalSession.instance_id == instance_id)
    if status == "pending":
        query = query.where(TerminalSession.status == "pending", TerminalSession.ticket_expires_at > now)
    elif status == "ended":
        query = query.where(
            or_(
                TerminalSession.status == "ended",
                and_(TerminalSession.status == "pending", TerminalSession.ticket_expires_at <= now),
            )
        )
    elif status is not None:
        query = query.where(TerminalSession.status == status)
    return paginate(
        ctx.session,
        query,
        (TerminalSession.created_at, TerminalSession.id),
        limit=limit,
        cursor=cursor,
        descending=True,
    )


def get_session(ctx: RequestContext, session_id: uuid.UUID) -> TerminalSession:
    row = ctx.session.scalar(
        select(TerminalSession).where(
            TerminalSession.id == session_id, TerminalSession.organization_id == ctx.caller.organization_id
        )
    )
    if row is None:
        raise NotFound(f"Terminal session {session_id} was not found.", slug="not-found")
    return row


def close_session(ctx: RequestContext, session_id: uuid.UUID) -> None:
    """Pending → ended (`closed`) at once; active → a close request its gateway acts on."""
    row = get_session(ctx, session_id)
    session, now = ctx.session, ctx.now
    ended = _rowcount(
        session.execute(
            update(TerminalSession)
            .where(TerminalSession.id == row.id, TerminalSession.status == "pending")
            .values(
                status="ended",
                ended_at=now,
                end_reason="closed",
                ticket_used_at=func.coalesce(TerminalSession.ticket_used_at, now),
            )
            .execution_options(synchronize_session=False)
        )
    )
    if ended:
        audit.info(
            "terminal.closed session=%s org=%s key=%s (before attach)",
            row.id,
            row.organization_id,
            ctx.caller.api_key_id,
        )
        return
    asked = _rowcount(
        session.execute(
            update(TerminalSession)
            .where(
                TerminalSession.id == row.id,
                TerminalSession.status == "active",
                TerminalSession.close_requested.is_(None),
            )
            .values(close_requested="closed")
            .execution_options(synchronize_session=False)
        )
    )
    if asked:
        audit.info(
            "terminal.close_requested session=%s org=%s key=%s", row.id, row.organization_id, ctx.caller.api_key_id
        )
        notify_after_commit(session, {row.id: "closed"})


def notify_after_commit(session: Session, closes: dict[uuid.UUID, str]) -> None:
    """Tell this process's gateway (if it holds them) to end these sessions once the close
    requests are committed; gateways elsewhere see them at their next re-check."""

    def _notify(_committed: Session) -> None:
        for session_id, reason in closes.items():
            registry.request_close(session_id, reason)

    event.listen(session, "after_commit", _notify, once=True)


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


# --- consumers' side: instances that stop, keys that are revoked --------------------------


def close_for_instance(session: Session, instance_id: uuid.UUID, reason: str, now: datetime) -> int:
    """End the instance's pending sessions and ask its active ones to close."""
    return _close_where(session, TerminalSession.instance_id == instance_id, reason, now)


def close_for_api_key(session: Session, api_key_id: uuid.UUID, now: datetime) -> int:
    return _close_where(session, TerminalSession.api_key_id == api_key_id, "key_revoked", now)


def _close_where(session: Session, condition: Any, reason: str, now: datetime) -> int:
    pending = _rowcount(
        session.execute(
            update(TerminalSession)
            .where(condition, TerminalSession.status == "pending")
            .values(status="ended", ended_at=now, end_reason=reason)
            .execution_options(synchronize_session=False)
        )
    )
    active = list(
        session.scalars(
            select(TerminalSession.id).where(
                condition, TerminalSession.status == "active", TerminalSession.close_requested.is_(None)
            )
        )
    )
    if active:
        session.execute(
            update(TerminalSession)
            .where(TerminalSession.id.in_(active), TerminalSession.close_requested.is_(None))
            .values(close_requested=reason)
            .execution_options(synchronize_session=False)
        )
        notify_after_commit(session, dict.fromkeys(active, reason))
    return pending + len(active)


# --- gateway side -------------------------------------------------------------------------


class Refused(Exception):  # noqa: N818 - a refusal, answered with a close code
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Admission:
    session_id: uuid.UUID
    organization_id: uuid.UUID
    instance_id: uuid.UUID
    api_key_id: uuid.UUID
    command: list[str] | None
    cols: int
    rows: int
    instance: published.InstanceView
    started_at: datetime


def admit(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    session_id: uuid.UUID,
    ticket: str,
    client_address: str | None,
    now: datetime | None = None,
) -> Admission:
    """Consume the ticket and make the session active, or raise Refused with the close code.

    The consumption commits on its own before anything else is decided, so a refused ticket
    stays used. Then, in a second transaction: the session must be the ticket's, pending and
    unexpired, its instance running, and the organization under its cap of active sessions."""
    now = now or utcnow()
    digest = hash_ticket(ticket)
    with sessions() as session:
        row = session.scalar(select(TerminalSession).where(TerminalSession.ticket_hash == digest))
        if row is None:
            raise Refused(CLOSE_UNAUTHORIZED, "the ticket is not valid")
        consumed = _rowcount(
            session.execute(
                update(TerminalSession)
                .where(TerminalSession.id == row.id, TerminalSession.ticket_used_at.is_(None))
                .values(ticket_used_at=now)
                .execution_options(synchronize_session=False)
            )
        )
        session.commit()
        if not consumed:
            raise Refused(CLOSE_UNAUTHORIZED, "the ticket has already been used")
        target = row.id
        org = row.organization_id

    # The refusals below end the session (a write that must commit), so they are returned
    # from the transaction and raised after it.
    with sessions() as session, session.begin():
        outcome = _admit_in(session, settings, target, org, session_id, client_address, now)
    if isinstance(outcome, Refused):
        raise outcome
    return outcome


def _admit_in(
    session: Session,
    settings: Settings,
    target: uuid.UUID,
    org: uuid.UUID,
    session_id: uuid.UUID,
    client_address: str | None,
    now: datetime,
) -> Admission | Refused:
    row = session.scalar(select(TerminalSession).where(TerminalSession.id == target).with_for_update())
    assert row is not None
    if row.id != session_id:
        if row.status == "pending":
            _end(session, row, "ticket_refused", None, now, emit=False)
        audit.warning("terminal.refused session=%s ticket_for=%s reason=wrong_session", session_id, row.id)
        return Refused(CLOSE_NOT_FOUND, "no such terminal session")
    if row.status == "ended" and row.end_reason in ("instance_stopped", "instance_not_running"):
        return Refused(CLOSE_NOT_RUNNING, "the instance is not running")
    if row.status != "pending":
        return Refused(CLOSE_UNAUTHORIZED, f"the session is {row.status} ({row.end_reason or 'no reason'})")
    if row.ticket_expires_at <= now:
        _end(session, row, "ticket_expired", None, now, emit=False)
        return Refused(CLOSE_UNAUTHORIZED, "the ticket has expired")
    view = published.instance_view(session, org, row.instance_id)
    if view is None:
        _end(session, row, "instance_not_running", None, now, emit=False)
        return Refused(CLOSE_NOT_FOUND, "the instance no longer exists")
    if view.state != RUNNING:
        _end(session, row, "instance_not_running", None, now, emit=False)
        return Refused(CLOSE_NOT_RUNNING, f"the instance is {view.state}")
    _lock_organization(session, org)
    active = int(
        session.scalar(
            select(func.count())
            .select_from(TerminalSession)
            .where(TerminalSession.organization_id == org, TerminalSession.status == "active")
        )
        or 0
    )
    if active >= settings.terminal_max_sessions_per_org:
        _end(session, row, "session_limit", None, now, emit=False)
        return Refused(CLOSE_TOO_MANY, f"the organization already has {active} attached session(s)")
    row.status = "active"
    row.started_at = now
    row.heartbeat_at = now
    if client_address:
        row.client_address = client_address[:64]
    outbox.record(
        session,
        "terminal.session_started",
        org,
        {
            "session_id": str(row.id),
            "instance_id": str(row.instance_id),
            "api_key_id": str(row.api_key_id),
            "interactive": row.command is None,
        },
        occurred_at=now,
    )
    audit.info(
        "terminal.session_started session=%s org=%s instance=%s key=%s interactive=%s client=%s",
        row.id, org, row.instance_id, row.api_key_id, row.command is None, row.client_address,
    )  # fmt: skip
    return Admission(
        session_id=row.id,
        organization_id=org,
        instance_id=row.instance_id,
        api_key_id=row.api_key_id,
        command=list(row.command) if row.command else None,
        cols=row.cols,
        rows=row.rows,
        instance=view,
        started_at=now,
    )


@dataclass(frozen=True)
class Check:
    close_reason: str | None  # a close request (API, consumer), or the instance not running
    instance_state: str | None


def checkpoint(sessions: sessionmaker[Session], admission: Admission, *, bytes_in: int, bytes_out: int) -> Check:
    """Save the counters; say whether the session must end (asked to, or its instance is no
    longer running: what a gateway in another process than the consumer learns this way)."""
    with sessions() as session, session.begin():
        session.execute(
            update(TerminalSession)
            .where(TerminalSession.id == admission.session_id, TerminalSession.status == "active")
            .values(bytes_in=bytes_in, bytes_out=bytes_out, heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        row = session.get(TerminalSession, admission.session_id)
        view = published.instance_view(session, admission.organization_id, admission.instance_id)
    state = view.state if view is not None else None
    if row is None or row.status != "active":
        return Check(close_reason=(row.end_reason if row is not None else None) or "closed", instance_state=state)
    if row.close_requested:
        return Check(close_reason=row.close_requested, instance_state=state)
    if state != RUNNING:
        return Check(close_reason="instance_stopped", instance_state=state)
    return Check(close_reason=None, instance_state=state)


def finish(
    sessions: sessionmaker[Session],
    admission: Admission,
    *,
    reason: str,
    exit_code: int | None,
    bytes_in: int,
    bytes_out: int,
    now: datetime | None = None,
) -> bool:
    """End an active session once (True if this call ended it), with terminal.session_ended."""
    now = now or utcnow()
    with sessions() as session, session.begin():
        row = session.scalar(
            select(TerminalSession).where(TerminalSession.id == admission.session_id).with_for_update()
        )
        if row is None or row.status != "active":
            return False
        row.bytes_in = bytes_in
        row.bytes_out = bytes_out
        _end(session, row, reason, exit_code, now, emit=True)
        return True


def _end(
    session: Session, row: TerminalSession, reason: str, exit_code: int | None, now: datetime, *, emit: bool
) -> None:
    row.status = "ended"
    row.ended_at = now
    row.end_reason = reason
    row.exit_code = exit_code
    row.close_requested = None
    if not emit:
        audit.info("terminal.refused session=%s org=%s reason=%s", row.id, row.organization_id, reason)
        return
    started = row.started_at or now
    duration = max(0.0, (now - started).total_seconds())
    outbox.record(
        session,
        "terminal.session_ended",
        row.organization_id,
        {
            "session_id": str(row.id),
            "instance_id": str(row.instance_id),
            "api_key_id": str(row.api_key_id),
            "reason": reason,
            "exit_code": exit_code,
            "bytes_in": int(row.bytes_in),
            "bytes_out": int(row.bytes_out),
            "duration_seconds": round(duration, 3),
        },
        occurred_at=now,
    )
    audit.info(
        "terminal.session_ended session=%s org=%s instance=%s key=%s reason=%s exit_code=%s bytes_in=%d bytes_out=%d duration=%.3fs",
        row.id, row.organization_id, row.instance_id, row.api_key_id, reason, exit_code, row.bytes_in, row.bytes_out, duration,
    )  # fmt: skip


def sweep(sessions: sessionmaker[Session], *, lost_after: timedelta, now: datetime | None = None) -> int:
    """Write down pending sessions whose ticket expired (the API already shows them ended),
    and end active sessions whose gateway stopped saving them (its process died): nobody
    else would, and they would hold the organization's cap forever."""
    now = now or utcnow()
    with sessions() as session, session.begin():
        expired = _rowcount(
            session.execute(
                update(TerminalSession)
                .where(TerminalSession.status == "pending", TerminalSession.ticket_expires_at <= now)
                .values(status="ended", ended_at=TerminalSession.ticket_expires_at, end_reason="ticket_expired")
                .execution_options(synchronize_session=False)
            )
        )
        lost = list(
            session.scalars(
                select(TerminalSession)
                .where(TerminalSession.status == "active", TerminalSession.heartbeat_at < now - lost_after)
                .with_for_update(skip_locked=True)
            )
        )
        for row in lost:
            _end(session, row, "gateway_lost", None, now, emit=True)
    return expired + len(lost)
