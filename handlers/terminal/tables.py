"""Terminal Gateway persistence: one row per terminal session, ticket included.

The ticket is a column group of the session rather than a table of its own because the two
live and die together: one ticket per session, used once. Only its SHA-256 is stored
(`ticket_hash`, unique: the gateway finds the session by it); `ticket_used_at` is set by
one conditional UPDATE, which is what makes a ticket single-use under concurrency.

No content is ever stored: the byte counters are all the gateway records of what went
through. No foreign keys leave the context (organization, instance and API key ids are
identity's and provisioning's, carried as values).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, CheckConstraint, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from hangar.db import Base, UTCDateTime

STATUSES: tuple[str, ...] = ("pending", "active", "ended")


class TerminalSession(Base):
    __tablename__ = "terminal_sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    instance_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    api_key_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    # argv, or None for an interactive login shell.
    command: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    cols: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))

    ticket_hash: Mapped[str] = mapped_column(String(64), unique=True)
    ticket_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ticket_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    # Written by the gateway holding an active session at every re-check: a session whose
    # heartbeat stopped belongs to a gateway that died, and the sweeper ends it.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Set by deleteTerminalSession or a consumer (instance stopped, key revoked) for an active
    # session: the reason the gateway holding it must end it with. The gateway polls for it.
    close_requested: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Where the client connected from and where the ticket was asked from (audit).
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'active', 'ended')", name="status"),
        CheckConstraint("bytes_in >= 0 AND bytes_out >= 0", name="bytes"),
        Index("ix_terminal_sessions_org_created", "organization_id", "created_at", "id"),
        Index("ix_terminal_sessions_instance_status", "instance_id", "status"),
        Index("ix_terminal_sessions_org_status", "organization_id", "status"),
    )
