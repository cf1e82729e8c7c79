"""Races that must not break the rules: two transactions at once, each on its own connection,
really committing. The outcomes asserted hold whatever the interleaving (no timing)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from handlers.identity import policy, services
from handlers.identity.tables import ApiKey, Membership
from hangar.context import Principal, RequestContext
from hangar.outbox import OutboxEvent
from hangar.problems import Conflict, NotFound

pytestmark = pytest.mark.postgres


def _as(session: Session, org_id: uuid.UUID, user_id: uuid.UUID, role: str) -> RequestContext:
    ctx = RequestContext(request_id="req_race", session=session)
    ctx.principal = Principal(org_id, user_id, uuid.uuid4(), role, policy.caps(role))
    return ctx


def _race(engine: Engine, *jobs: Callable[[Session], Any]) -> list[Any]:
    """Run each job in its own thread and transaction, started together; return each job's
    result or the exception it raised. A job's transaction commits if it returns."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(i: int, job: Callable[[Session], Any]) -> None:
        with Session(engine, expire_on_commit=False) as session:
            barrier.wait()
            try:
                results[i] = job(session)
                session.commit()
            except Exception as exc:
                session.rollback()
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _signup(engine: Engine, email: str | None = None) -> services.SignupResult:
    with Session(engine, expire_on_commit=False) as session:
        ctx = RequestContext(request_id="req_setup", session=session)
        email = email or f"race-{uuid.uuid4().hex[:8]}@example.com"
        result = services.sign_up(
            ctx, email=email, password="correct-horse-battery", organization_name="Race", name=None
        )
        session.commit()
        return result


def test_two_owners_demoting_each_other_leave_one_owner(committing_engine: Engine) -> None:
    first = _signup(committing_engine)
    org_id = first.organization.id
    with Session(committing_engine, expire_on_commit=False) as session:
        second = services.invite_member(
            _as(session, org_id, first.user.id, "owner"),
            org_id,
            email=f"co-{uuid.uuid4().hex[:6]}@example.com",
            role="owner",
        ).member
        first_member = session.scalars(select(Membership).where(Membership.user_id == first.user.id)).one()
        session.commit()

    results = _race(
        committing_engine,
        lambda s: services.update_member(
            _as(s, org_id, first.user.id, "owner"), org_id, second.membership.id, role="admin"
        ),
        lambda s: services.update_member(
            _as(s, org_id, second.user.id, "owner"), org_id, first_member.id, role="admin"
        ),
    )
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(conflicts) == 1 and conflicts[0].slug == "last-owner", results
    assert sum(isinstance(r, services.Member) for r in results) == 1, results
    with Session(committing_engine) as session:
        owners = session.scalar(
            select(func.count()).where(Membership.organization_id == org_id, Membership.role == "owner")
        )
    assert owners == 1


def test_concurrent_revokes_emit_one_event(committing_engine: Engine) -> None:
    owner = _signup(committing_engine)
    org_id, key_id = owner.organization.id, owner.api_key.id
    results = _race(
        committing_engine,
        *[lambda s: services.revoke_api_key(_as(s, org_id, owner.user.id, "owner"), key_id) for _ in range(2)],
    )
    assert results == [None, None]
    with Session(committing_engine) as session:
        events = session.scalars(select(OutboxEvent).where(OutboxEvent.type == "api_key.revoked")).all()
        mine = [e for e in events if e.payload["data"]["api_key_id"] == str(key_id)]
        assert len(mine) == 1
        assert session.get_one(ApiKey, key_id).revoked_at is not None


def test_concurrent_signups_with_one_email_make_one_user(committing_engine: Engine) -> None:
    email = f"twin-{uuid.uuid4().hex[:8]}@example.com"

    def sign_up(session: Session) -> services.SignupResult:
        ctx = RequestContext(request_id="req_race", session=session)
        return services.sign_up(ctx, email=email, password="correct-horse-battery", organization_name="Twin", name=None)

    results = _race(committing_engine, sign_up, sign_up)
    assert sum(isinstance(r, services.SignupResult) for r in results) == 1, results
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(conflicts) == 1 and conflicts[0].slug == "email-taken", results


def test_two_acceptances_of_one_invitation_join_once(committing_engine: Engine) -> None:
    owner = _signup(committing_engine)
    org_id = owner.organization.id
    with Session(committing_engine, expire_on_commit=False) as session:
        invited = services.invite_member(
            _as(session, org_id, owner.user.id, "owner"),
            org_id,
            email=f"once-{uuid.uuid4().hex[:6]}@example.com",
            role="member",
        )
        session.commit()

    def accept(session: Session) -> services.SignupResult:
        ctx = RequestContext(request_id="req_race", session=session)
        return services.accept_invitation(ctx, token=invited.token, password="correct-horse-battery", name=None)

    results = _race(committing_engine, accept, accept)
    assert sum(isinstance(r, services.SignupResult) for r in results) == 1, results
    misses = [r for r in results if isinstance(r, NotFound)]
    assert len(misses) == 1 and misses[0].slug == "invitation-not-found", results
    with Session(committing_engine) as session:
        keys = session.scalars(
            select(ApiKey).where(ApiKey.organization_id == org_id, ApiKey.user_id == invited.member.user.id)
        ).all()
        joined = session.scalars(select(OutboxEvent).where(OutboxEvent.type == "member.joined")).all()
    assert len(keys) == 1
    assert [e.payload["data"]["member_id"] for e in joined].count(str(invited.member.membership.id)) == 1
