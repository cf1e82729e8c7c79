"""Identity & Access persistence: organizations, users, memberships, invitations, API keys.

Every tenant-owned row carries `organization_id`, and services always load by
(id, organization_id) so another tenant's id behaves exactly like a missing one.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, String, UniqueConstraint, Uuid, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hangar.db import Base, UTCDateTime

_ROLE_CHECK = "role IN ('owner', 'admin', 'member', 'billing', 'viewer')"


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    billing_email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    # The platform operator's organization (created by `hangar-admin create-operator`, never by
    # signup): its owners and admins also hold the admin:* scopes (handlers/identity/policy.py).
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class User(Base):
    """A person. `email_normalized` (lower-cased) is unique, so an address can belong to one
    user whatever its case; a user created by an invitation is `invited` (no password) until
    that person signs up or accepts an invitation."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    email_normalized: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("status IN ('invited', 'active')", name="status"),)


class Membership(Base):
    """A person's place in an organization. An invited membership (`status` `invited`) grants
    nothing — no key authenticates through it — until its invitation is accepted."""

    __tablename__ = "memberships"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    # lazy="raise": load it explicitly (joinedload) where needed, never one query per row.
    user: Mapped[User] = relationship(lazy="raise")

    __table_args__ = (
        # One membership per person per organization; also the index for listing by org.
        UniqueConstraint("organization_id", "user_id"),
        Index("ix_memberships_org_created", "organization_id", "created_at", "id"),
        CheckConstraint(_ROLE_CHECK, name="role"),
        CheckConstraint("status IN ('invited', 'active')", name="status"),
    )


class Invitation(Base):
    """The invitation to an invited membership. Only `token_hash` (SHA-256 of the token) is
    stored; it is looked up by that hash. Single use: `accepted_at` is set once, and an
    accepted or expired row stays (for audit) until its membership goes."""

    __tablename__ = "invitations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # One invitation per membership: re-inviting is a 409 while the membership exists.
    membership_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("memberships.id", ondelete="CASCADE"), unique=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiKey(Base):
    """An API key. Only `key_hash` (SHA-256 of the full key) is stored, never the secret;
    `prefix` is the public part used for lookup. Revoked and expired keys stay for audit."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(20), nullable=True)

    __table_args__ = (
        # Newest-first pages of an organization's keys, and of one member's keys.
        Index("ix_api_keys_org_created", "organization_id", "created_at", "id"),
        Index("ix_api_keys_org_user_created", "organization_id", "user_id", "created_at", "id"),
    )

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"
