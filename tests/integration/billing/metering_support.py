"""Helpers for the metering tests (a uniquely named module the test modules import): a
database with sessions, envelopes as provisioning and storage publish them, delivery
through the real consumers with the inbox, and the ledger's view of an organization."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from handlers.billing import consumers, metering, published
from handlers.billing.metering_tables import UsageRecord
from handlers.billing.tables import LedgerTransfer
from hangar import inbox
from hangar.bus import Bus
from hangar.config import Settings
from hangar.outbox import OutboxEvent

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def envelope(event_type: str, organization_id: uuid.UUID, at: datetime, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "organization_id": str(organization_id),
        "data": {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in data.items()},
    }


def running(org: uuid.UUID, instance: uuid.UUID, at: datetime, price: int = 36, kind: str = "cpu-2") -> dict[str, Any]:
    return envelope(
        "instance.running",
        org,
        at,
        instance_id=instance,
        region="fra1",
        zone="fra1-a",
        host_id=uuid.uuid4(),
        instance_type=kind,
        vcpus=2,
        memory_mb=4096,
        disk_gb=80,
        gpus=0,
        price_per_hour=price,
        currency="USD",
    )


def stopped(org: uuid.UUID, instance: uuid.UUID, at: datetime, event: str = "instance.stopped") -> dict[str, Any]:
    if event == "instance.failed":
        return envelope(event, org, at, instance_id=instance, error_code="host_error", message="boom")
    return envelope(event, org, at, instance_id=instance, reason=None)


@dataclass
class World:
    engine: Engine
    sessions: sessionmaker[Session]
    settings: Settings
    bus: Bus

    def deliver(self, env: dict[str, Any]) -> bool:
        """Deliver through the bus (inbox dedupe included); True if the metering consumer ran."""
        return self.bus.deliver_to(consumers.METERING, env)

    def tick(self, at: datetime, **kwargs: Any) -> metering.TickReport:
        return metering.tick(self.sessions, self.settings, now=at, **kwargs)

    def balance(self, org: uuid.UUID) -> published.Balance:
        with self.sessions() as session:
            return published.wallet_balance(session, org)

    def invariants(self) -> list[str]:
        with self.sessions() as session:
            return published.check_invariants(session)

    def usage(self, org: uuid.UUID) -> list[UsageRecord]:
        with self.sessions() as session:
            return list(
                session.scalars(select(UsageRecord).where(UsageRecord.organization_id == org).order_by(UsageRecord.day))
            )

    def charged(self, org: uuid.UUID) -> int:
        """Usage as the ledger tells it: into revenue, net of what was given back."""
        with self.sessions() as session:
            revenue = published.account_id("platform:revenue")
            rows = session.execute(
                select(LedgerTransfer.amount, LedgerTransfer.credit_account_id, LedgerTransfer.debit_account_id).where(
                    LedgerTransfer.organization_id == org,
                    LedgerTransfer.code.in_(("usage", "usage_uncollected")),
                    LedgerTransfer.kind == "single",
                )
            ).all()
        return sum(
            r.amount if r.credit_account_id == revenue else -r.amount
            for r in rows
            if revenue in (r.credit_account_id, r.debit_account_id)
        )

    def events(self, *types: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.scalars(select(OutboxEvent).where(OutboxEvent.type.in_(types)).order_by(OutboxEvent.seq))
            return [r.payload for r in rows]

    def fund(self, org: uuid.UUID, amount: int, at: datetime = T0) -> None:
        """Open the wallet (no signup credit) and credit it from promotions."""
        with self.sessions() as session, session.begin():
            wallet = published.wallet(session, org, now=at)
            if amount > 0:
                published.transfer(
                    session,
                    id=uuid.uuid4(),
                    debit=published.platform_account(session, "promotions", now=at),
                    credit=wallet,
                    amount=amount,
                    code="promotion",
                    organization_id=org,
                    now=at,
                )


def make_world(engine: Engine, settings: Settings) -> World:
    sessions = sessionmaker(engine, expire_on_commit=False)
    metering.configure(settings)
    bus = Bus(sessions)
    consumers.register(bus)
    return World(engine, sessions, settings, bus)


def seconds_between(start: datetime, end: datetime) -> int:
    return int((end - start).total_seconds())


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def processed(session: Session, event_id: str) -> bool:
    return inbox.already_processed(session, consumers.METERING, uuid.UUID(event_id))


def days(start: datetime, n: int) -> Iterator[datetime]:
    for i in range(n):
        yield start + timedelta(days=i)
