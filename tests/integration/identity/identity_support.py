"""Test helpers for Identity & Access (a uniquely named module: test modules and the
conftest import it; `from conftest import …` would be ambiguous with several conftests)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers.identity import published, services
from hangar.context import Principal, RequestContext
from hangar.db import make_engine
from hangar.outbox import OutboxEvent


class World:
    """Signs organizations up and builds request contexts the way the runtime does: from a
    key's secret, through the published authenticate()."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def anonymous(self, now: datetime | None = None) -> RequestContext:
        ctx = RequestContext(request_id="req_test", session=self.session)
        if now is not None:
            ctx.now = now
        return ctx

    def signup(self, email: str | None = None, organization: str = "Acme") -> services.SignupResult:
        email = email or f"owner-{uuid.uuid4().hex[:8]}@example.com"
        result = services.sign_up(
            self.anonymous(), email=email, password="correct-horse-battery", organization_name=organization, name=None
        )
        self.session.flush()
        return result

    def principal(self, secret: str, now: datetime | None = None) -> Principal:
        ctx = self.anonymous(now)
        principal = published.authenticate(self.session, secret, ctx.now)
        assert principal is not None, "the key did not authenticate"
        return principal

    def ctx(self, secret: str, now: datetime | None = None) -> RequestContext:
        ctx = self.anonymous(now)
        ctx.principal = self.principal(secret, ctx.now)
        return ctx

    def invite(self, owner_secret: str, role: str, email: str | None = None) -> services.InvitedMember:
        owner = self.ctx(owner_secret)
        email = email or f"{role}-{uuid.uuid4().hex[:6]}@example.com"
        invited = services.invite_member(owner, owner.caller.organization_id, email=email, role=role)
        self.session.flush()
        return invited

    def member_with_key(self, owner_secret: str, role: str) -> tuple[services.Member, str]:
        """Invite someone with `role`; they accept the invitation (setting their password)
        and get their first key, holding every scope the role allows."""
        invited = self.invite(owner_secret, role)
        accepted = services.accept_invitation(
            self.anonymous(), token=invited.token, password="correct-horse-battery", name=None
        )
        self.session.flush()
        return invited.member, accepted.secret

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        self.session.flush()
        query = select(OutboxEvent).order_by(OutboxEvent.seq)
        if event_type:
            query = query.where(OutboxEvent.type == event_type)
        return [row.payload for row in self.session.scalars(query)]


class Backdoor:
    """Direct database access beside the running app, for what the API cannot do (yet) and
    for reading the outbox."""

    def __init__(self, database_url: str, validate: Callable[[dict[str, Any]], None]) -> None:
        self.engine = make_engine(database_url)
        self._validate = validate

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Outbox envelopes in order; each one is checked against its AsyncAPI schema."""
        with Session(self.engine) as db:
            query = select(OutboxEvent).order_by(OutboxEvent.seq)
            if event_type:
                query = query.where(OutboxEvent.type == event_type)
            rows = [row.payload for row in db.scalars(query)]
        for row in rows:
            self._validate(row)
        return rows

    def execute(self, statement: Any) -> None:
        with Session(self.engine) as db:
            db.execute(statement)
            db.commit()
