"""The billing API end to end through the HTTP app: balance, transactions (paged, filtered,
statuses of holds), usage (ranges and their limits), statements (open, finalised once and
never changed), tenant isolation, and the operator's credit limit and credit adjustments."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from handlers.billing import ledger, statements
from handlers.billing.metering_tables import UsageRecord
from handlers.billing.tables import Statement
from handlers.identity.published import create_operator
from hangar.db import make_engine, utcnow
from hangar.outbox import OutboxEvent

pytestmark = pytest.mark.postgres

PASSWORD = "correct-horse-battery-staple"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def http(make_settings: Callable[..., Any], cheap_passwords: None) -> Iterator[TestClient]:
    from hangar.app import create_app

    # No signup credit: every cent in these tests is put there by the test.
    with TestClient(create_app(make_settings(run_relay=True, billing_signup_credit=0))) as client:
        yield client


class Org:
    def __init__(self, http: TestClient, secret: str, organization_id: str) -> None:
        self.http, self.id = http, organization_id
        self.headers = {"Authorization": f"Bearer {secret}"}

    def get(self, path: str, **params: Any) -> Any:
        return self.http.get(path, params=params, headers=self.headers)


def _wallet_opened(engine: Engine, organization_id: str) -> None:
    """Billing opens the wallet on organization.created (delivered just after the signup)."""
    wallet = ledger.account_id(ledger.wallet_code(uuid.UUID(organization_id)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with Session(engine) as s:
            if s.execute(select(ledger.ACCOUNTS.c.id).where(ledger.ACCOUNTS.c.id == wallet)).first():
                return
        time.sleep(0.02)
    raise AssertionError("the wallet never opened")


@pytest.fixture
def make_org(http: TestClient, engine: Engine) -> Callable[[], Org]:
    def make() -> Org:
        email = f"owner-{uuid.uuid4().hex[:10]}@example.com"
        r = http.post("/v1/signup", json={"email": email, "password": PASSWORD, "organization": "Acme"})
        assert r.status_code == 201, r.text
        org = Org(http, r.json()["secret"], r.json()["organization"]["id"])
        _wallet_opened(engine, org.id)
        return org

    return make


@pytest.fixture
def operator(http: TestClient, engine: Engine) -> Org:
    with Session(engine) as s:
        org_id, _, secret = create_operator(
            s, email=f"ops-{uuid.uuid4().hex[:8]}@example.com", organization_name="Ops", now=utcnow()
        )
        s.commit()
    return Org(http, secret, org_id)


def _ledger(engine: Engine, fn: Callable[[Session], Any]) -> Any:
    with Session(engine) as s, s.begin():
        return fn(s)


def _top_up(engine: Engine, org: Org, amount: int, at: datetime | None = None) -> uuid.UUID:
    def go(s: Session) -> uuid.UUID:
        when = at or utcnow()
        clearing = ledger.platform_account(s, "psp_clearing", now=when)
        wallet = ledger.wallet(s, uuid.UUID(org.id), now=when)
        return ledger.transfer(
            s,
            id=uuid.uuid4(),
            debit=clearing,
            credit=wallet,
            amount=amount,
            code="top_up",
            reference="top-up",
            now=when,
        ).id

    return _ledger(engine, go)


def _adjust(operator: Org, org: Org, direction: str, amount: int, **headers: str) -> Any:
    return operator.http.post(
        f"/v1/admin/organizations/{org.id}/credit-adjustments",
        json={"direction": direction, "amount": amount, "reason": "test"},
        headers={**operator.headers, **headers},
    )


# --- balance and transactions -------------------------------------------------------------------


def test_a_new_organization_has_a_zero_balance(make_org: Callable[[], Org]) -> None:
    r = make_org().get("/v1/billing/balance")
    assert r.status_code == 200
    assert r.json() == {"currency": "USD", "balance": 0, "available": 0, "held": 0, "credit_limit": 0}


def test_balance_and_transactions_follow_the_ledger(make_org: Callable[[], Org], engine: Engine) -> None:
    org = make_org()
    _top_up(engine, org, 5_000)

    def hold_and_settle(s: Session) -> tuple[uuid.UUID, uuid.UUID]:
        now = utcnow()
        wallet = ledger.wallet(s, uuid.UUID(org.id), now=now)
        holds = ledger.platform_account(s, "holds", now=now)
        settled = ledger.transfer(
            s, id=uuid.uuid4(), debit=wallet, credit=holds, amount=800, code="hold", pending=True, now=now
        )
        ledger.post_pending(s, id=uuid.uuid4(), pending_id=settled.id, amount=300, now=now)
        open_hold = ledger.transfer(
            s,
            id=uuid.uuid4(),
            debit=wallet,
            credit=holds,
            amount=400,
            code="hold",
            pending=True,
            timeout_seconds=3600,
            now=now,
        )
        return settled.id, open_hold.id

    settled, open_hold = _ledger(engine, hold_and_settle)
    assert org.get("/v1/billing/balance").json() == {
        "currency": "USD",
        "balance": 4_700,
        "available": 4_300,
        "held": 400,
        "credit_limit": 0,
    }
    rows = org.get("/v1/billing/transactions").json()["data"]
    by_id = {r["id"]: r for r in rows}
    assert by_id[str(settled)]["status"] == "posted_pending"
    assert by_id[str(open_hold)]["status"] == "pending" and by_id[str(open_hold)]["expires_at"]
    post = next(r for r in rows if r["pending_id"] == str(settled))
    assert (post["status"], post["amount"], post["direction"]) == ("posted", 300, "debit")
    top_up = next(r for r in rows if r["code"] == "top_up")
    assert (top_up["direction"], top_up["amount"]) == ("credit", 5_000)
    # the balance is the sum of the posted rows
    assert (
        sum(r["amount"] * (1 if r["direction"] == "credit" else -1) for r in rows if r["status"] == "posted") == 4_700
    )
    # newest first, paged, filtered
    assert [r["created_at"] for r in rows] == sorted((r["created_at"] for r in rows), reverse=True)
    first = org.get("/v1/billing/transactions", limit=2).json()
    second = org.get("/v1/billing/transactions", limit=2, cursor=first["next_cursor"]).json()
    assert [r["id"] for r in first["data"] + second["data"]] == [r["id"] for r in rows][:4]
    only = org.get("/v1/billing/transactions", code="top_up").json()["data"]
    assert [r["code"] for r in only] == ["top_up"]
    assert org.get("/v1/billing/transactions", cursor="not-a-cursor!").status_code == 400


# --- usage --------------------------------------------------------------------------------------


def _usage(engine: Engine, org: Org, day: date, amount: int, seconds: int = 3600, kind: str = "instance") -> uuid.UUID:
    rid = uuid.uuid4()
    with Session(engine) as s, s.begin():
        s.add(
            UsageRecord(
                resource_id=rid,
                day=day,
                organization_id=uuid.UUID(org.id),
                resource_type=kind,
                description="cpu-2" if kind == "instance" else "data-1 (10 GiB)",
                currency="USD",
                seconds=seconds,
                units=seconds,
                amount=amount,
                updated_at=utcnow(),
            )
        )
    return rid


def test_usage_lists_per_resource_per_day_within_the_range(make_org: Callable[[], Org], engine: Engine) -> None:
    org = make_org()
    today = utcnow().date()
    _usage(engine, org, today, 36)
    _usage(engine, org, today, 7, kind="volume")
    _usage(engine, org, today - timedelta(days=40), 99)
    body = org.get("/v1/billing/usage").json()  # the current month so far
    assert body["from"] == today.replace(day=1).isoformat() and body["to"] == (today + timedelta(days=1)).isoformat()
    assert sorted(line["amount"] for line in body["data"]) == [7, 36] and body["total"] == 43
    wide = org.get("/v1/billing/usage", **{"from": (today - timedelta(days=60)).isoformat()}).json()
    assert wide["total"] == 142
    volumes = org.get("/v1/billing/usage", resource_type="volume").json()
    assert [line["resource_type"] for line in volumes["data"]] == ["volume"]
    paged = org.get("/v1/billing/usage", limit=1, **{"from": (today - timedelta(days=60)).isoformat()}).json()
    assert len(paged["data"]) == 1 and paged["next_cursor"] and paged["total"] == 142


@pytest.mark.parametrize(
    ("start", "end", "slug"),
    [("2026-03-01", "2026-06-03", "range-too-long"), ("2026-03-02", "2026-03-01", "invalid-range")],
)
def test_usage_refuses_bad_ranges(make_org: Callable[[], Org], start: str, end: str, slug: str) -> None:
    r = make_org().get("/v1/billing/usage", **{"from": start, "to": end})
    assert r.status_code == 422 and r.json()["type"].endswith(slug), r.text


# --- statements ---------------------------------------------------------------------------------


def _months_ago(n: int) -> date:
    start = utcnow().date().replace(day=1)
    for _ in range(n):
        start = (start - timedelta(days=1)).replace(day=1)
    return start


def test_statements_open_for_this_month_and_finalised_once_for_a_past_one(
    make_org: Callable[[], Org], engine: Engine
) -> None:
    org = make_org()
    past = _months_ago(2)
    at = datetime(past.year, past.month, 3, 12, tzinfo=UTC)
    _top_up(engine, org, 10_000, at=at)

    def charge(s: Session) -> None:
        wallet = ledger.wallet(s, uuid.UUID(org.id), now=at)
        revenue = ledger.platform_account(s, "revenue", now=at)
        ledger.transfer(
            s, id=uuid.uuid4(), debit=wallet, credit=revenue, amount=250, code="usage", now=at + timedelta(hours=1)
        )

    _ledger(engine, charge)
    _usage(engine, org, past + timedelta(days=2), 250, seconds=90_000)
    _top_up(engine, org, 1_000)  # this month

    listed = org.get("/v1/billing/statements").json()["data"]
    assert listed[0]["status"] == "open"
    old = next(s for s in listed if s["period"] == f"{past.year:04d}-{past.month:02d}")
    assert old["status"] == "finalized" and old["finalized_at"]
    assert (old["opening_balance"], old["top_ups"], old["usage"], old["closing_balance"]) == (0, 10_000, -250, 9_750)
    full = org.get(f"/v1/billing/statements/{old['id']}").json()
    assert [(line["kind"], line["amount"]) for line in full["lines"]] == [("usage", -250), ("top_up", 10_000)]
    assert full["lines"][0]["seconds"] == 90_000
    assert sum(line["amount"] for line in full["lines"]) == full["closing_balance"] - full["opening_balance"]
    current = org.get(f"/v1/billing/statements/{listed[0]['id']}").json()
    assert current["status"] == "open" and current["opening_balance"] == 9_750 and current["closing_balance"] == 10_750
    lines = org.get(f"/v1/billing/statements/{old['id']}/lines", limit=1).json()
    assert len(lines["data"]) == 1 and lines["next_cursor"]

    # Finalised for good: a transfer written afterwards into that month changes nothing.
    _top_up(engine, org, 777, at=at + timedelta(days=1))
    again = org.get(f"/v1/billing/statements/{old['id']}").json()
    assert again == full
    with Session(engine) as s:
        assert (
            s.scalar(select(func.count()).select_from(Statement).where(Statement.organization_id == uuid.UUID(org.id)))
            == 2
        )
        # (the month between, with no activity, is finalised too)


def test_concurrent_first_reads_finalise_a_month_once(make_org: Callable[[], Org], engine: Engine) -> None:
    import threading

    org = make_org()
    past = _months_ago(1)
    _top_up(engine, org, 500, at=datetime(past.year, past.month, 1, 0, 30, tzinfo=UTC))
    later = datetime(past.year, past.month, 1, tzinfo=UTC) + timedelta(days=70)
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def read() -> None:
        barrier.wait()
        with Session(engine) as s:
            view = statements.statement(s, uuid.UUID(org.id), past, now=later)
            s.commit()
            results.append((view.closing_balance, view.id))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and len(set(results)) == 1
    with Session(engine) as s:
        rows = s.scalars(select(Statement).where(Statement.organization_id == uuid.UUID(org.id))).all()
        assert [r.closing_balance for r in rows] == [500]


def test_another_organizations_statement_is_not_found(make_org: Callable[[], Org]) -> None:
    a, b = make_org(), make_org()
    theirs = a.get("/v1/billing/statements").json()["data"][0]["id"]
    assert b.get(f"/v1/billing/statements/{theirs}").status_code == 404
    assert b.get(f"/v1/billing/statements/{theirs}/lines").status_code == 404
    assert b.get(f"/v1/billing/statements/{uuid.uuid4()}").status_code == 404


def test_a_tenant_sees_only_its_own_transactions(make_org: Callable[[], Org], engine: Engine) -> None:
    a, b = make_org(), make_org()
    _top_up(engine, a, 100)
    assert b.get("/v1/billing/transactions").json()["data"] == []
    assert b.get("/v1/billing/balance").json()["balance"] == 0


# --- operator -----------------------------------------------------------------------------------


def test_operator_credit_adjustments_move_money_and_emit_an_event(
    make_org: Callable[[], Org], operator: Org, engine: Engine
) -> None:
    org = make_org()
    r = _adjust(operator, org, "credit", 2_500, **{"Idempotency-Key": "adj-1"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["direction"], body["amount"], body["balance"]["balance"]) == ("credit", 2_500, 2_500)
    replay = _adjust(operator, org, "credit", 2_500, **{"Idempotency-Key": "adj-1"})
    assert replay.json()["id"] == body["id"]
    assert org.get("/v1/billing/balance").json()["balance"] == 2_500
    refused = _adjust(operator, org, "debit", 2_501)
    assert refused.status_code == 409 and refused.json()["type"].endswith("insufficient-funds")
    assert _adjust(operator, org, "debit", 2_000).json()["balance"]["balance"] == 500
    with Session(engine) as s:
        events = s.scalars(
            select(OutboxEvent).where(
                OutboxEvent.type == "credit.adjusted", OutboxEvent.organization_id == uuid.UUID(org.id)
            )
        ).all()
        assert sorted(e.payload["data"]["direction"] for e in events) == ["credit", "debit"]
        assert ledger.check_invariants(s) == []


def test_operator_credit_limit(make_org: Callable[[], Org], operator: Org, engine: Engine) -> None:
    org = make_org()
    url = f"/v1/admin/organizations/{org.id}/credit-limit"
    r = operator.http.put(url, json={"credit_limit": 1_000}, headers=operator.headers)
    assert r.status_code == 200 and r.json()["available"] == 1_000, r.text
    assert _adjust(operator, org, "debit", 600).status_code == 201
    assert org.get("/v1/billing/balance").json() == {
        "currency": "USD",
        "balance": -600,
        "available": 400,
        "held": 0,
        "credit_limit": 1_000,
    }
    low = operator.http.put(url, json={"credit_limit": 599}, headers=operator.headers)
    assert low.status_code == 409 and low.json()["type"].endswith("credit-limit-below-balance")
    seen = operator.http.get(f"/v1/admin/organizations/{org.id}/balance", headers=operator.headers)
    assert seen.json()["balance"] == -600


def test_operator_operations_on_an_unknown_organization_are_not_found(operator: Org) -> None:
    nobody = uuid.uuid4()
    assert operator.http.get(f"/v1/admin/organizations/{nobody}/balance", headers=operator.headers).status_code == 404
    r = operator.http.put(
        f"/v1/admin/organizations/{nobody}/credit-limit", json={"credit_limit": 5}, headers=operator.headers
    )
    assert r.status_code == 404


def test_a_tenant_cannot_use_the_operator_operations(make_org: Callable[[], Org]) -> None:
    org = make_org()
    r = org.http.put(
        f"/v1/admin/organizations/{org.id}/credit-limit", json={"credit_limit": 10**9}, headers=org.headers
    )
    assert r.status_code == 403
