"""Chaos for metering: instances created, stopped, started and terminated at random on a
failing simulated fleet, while metering ticks run — two or three at once, some crashing at
random points mid-organization — and provisioning's events reach billing late, out of
order and twice. Organizations that run out of credit are stopped through
billing.balance_depleted, as in production.

Afterwards: the ledger balances (check_invariants is empty: Σ = 0 per currency, totals
match transfers, no wallet below its limit); every instance's usage seconds equal the
seconds it was running by provisioning's own state changes (running … stopped / failed /
terminated); its amount is exactly floor(price × seconds / 3600); and the ledger's usage
transfers add up to the usage records. The sagas and the ticks run on a simulated clock
(97 s a round), so the run takes seconds; its wall time is logged, never asserted."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from metering_support import make_world
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from handlers.billing import published
from handlers.billing.metering_tables import Meter, UsageRecord
from handlers.billing.tables import LedgerTransfer
from handlers.inventory.catalogue import ensure_catalogue, load_sim_fleet
from handlers.provisioning import configuration, saga, services, states
from handlers.provisioning import consumers as provisioning_consumers
from handlers.provisioning.tables import Instance
from hangar.bus import Bus
from hangar.context import Principal, RequestContext
from hangar.db import make_engine, utcnow
from hangar.drivers.sim import SimDriver, sim_fleet
from hangar.outbox import OutboxEvent
from hangar.problems import Problem

log = logging.getLogger(__name__)

pytestmark = pytest.mark.postgres

ORGANIZATIONS = 16
DOOMED = 3  # organizations left alone by the tenants' random actions, each running two GPU instances
ROUNDS = 50
STEP = timedelta(seconds=97)
MIX = [
    ("cpu-1", "fra1", "ubuntu-24.04", 4),
    ("cpu-2", "ams1", "debian-12", 4),
    ("cpu-4", "nyc1", "ubuntu-24.04", 2),
    ("gpu-a100x1", "ams1", "ubuntu-24.04-cuda12", 1.5),
]
METERED = ("instance.running", "instance.stopped", "instance.terminated", "instance.failed")


def _ctx(session: Session, organization_id: uuid.UUID, now: datetime) -> RequestContext:
    principal = Principal(organization_id, uuid.uuid4(), uuid.uuid4(), "owner", frozenset({"instances:write"}))
    return RequestContext(request_id="req_chaos", session=session, principal=principal, now=now)


def test_metering_charges_every_second_once_through_crashes_races_and_redelivery(
    database_url: str, make_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    settings = make_settings(
        sim_failure_rate=0.15,
        sim_delay_ms=0,
        saga_poll_seconds=0.0,
        quota_vcpus=10_000,
        quota_gpus=1_000,
        billing_signup_credit=150,  # a GPU hour is 149: GPU organizations run dry
        billing_hold_seconds=600,
        billing_tick_seconds=97,
        billing_low_balance_threshold=100,
    )
    monkeypatch.setattr(configuration._holder, "_current", settings)
    engine = make_engine(database_url)
    world = make_world(engine, settings)
    sessions = world.sessions
    provisioning_bus = Bus(sessions)
    provisioning_consumers.register(provisioning_bus)
    driver = SimDriver(seed=5, delay_ms=0, failure_rate=0.15)
    rng = random.Random(4242)
    # The simulated clock starts at 23:00 tomorrow (it crosses midnight: usage splits by day).
    # Ahead of the real one on purpose: the depletion consumer stamps its stops with the real
    # clock, so under a simulated clock in the past they would never come due.
    clock = (utcnow() + timedelta(days=1)).replace(hour=23, minute=0, second=0, microsecond=0)
    with sessions() as session, session.begin():
        ensure_catalogue(session, driver="sim", now=clock)
        load_sim_fleet(session, sim_fleet(30, ["fra1", "ams1", "nyc1"], seed=11), now=clock)
    orgs = [uuid.uuid4() for _ in range(ORGANIZATIONS)]
    # Whatever the interleaving does to the others, these run dry at about half an hour of
    # their two GPU instances (150 of credit at 2 × 149 an hour), with no tenant action in
    # the way: the depletion stop must reach them.
    doomed = [uuid.uuid4() for _ in range(DOOMED)]
    tally: Counter[str] = Counter()
    with sessions() as session, session.begin():
        for org in doomed:
            for n in range(2):
                services.create_instance(
                    _ctx(session, org, clock),
                    name=f"doomed-{n}",
                    region="ams1",
                    instance_type="gpu-a100x1",
                    image="ubuntu-24.04-cuda12",
                )
                tally["created"] += 1
    delivered_upto = 0
    backlog: list[dict[str, Any]] = []

    # The racing tick threads draw their crashes from their own generator (under a lock), so
    # the order in which threads run never shifts the main generator's sequence: which
    # instances are launched, stopped and redelivered stays the same run to run.
    crash_rng, crash_lock = random.Random(99), threading.Lock()

    def crash(point: str) -> None:
        with crash_lock:
            hit = crash_rng.random() < 0.05
        if hit:
            tally[f"crash@{point}"] += 1
            raise RuntimeError(f"worker killed at {point}")

    def deliver_some(final: bool = False) -> None:
        """Billing gets provisioning's events late (a random part of the backlog stays
        behind), shuffled, and some twice; provisioning gets billing's depletion events."""
        nonlocal delivered_upto
        with sessions() as session:
            rows = session.execute(
                select(OutboxEvent.seq, OutboxEvent.payload)
                .where(OutboxEvent.seq > delivered_upto)
                .order_by(OutboxEvent.seq)
            ).all()
        if rows:
            delivered_upto = rows[-1].seq
        backlog.extend(r.payload for r in rows if r.payload["type"] in METERED)
        for row in rows:
            if row.payload["type"] == "billing.balance_depleted":
                provisioning_bus.deliver_to(provisioning_consumers.DEPLETION, row.payload)
                tally["depleted"] += 1
        rng.shuffle(backlog)
        keep = 0 if final else rng.randrange(len(backlog) + 1) // 2
        now_, later = backlog[keep:], backlog[:keep]
        for envelope in now_:
            world.deliver(envelope)
            if rng.random() < 0.2:
                assert not world.deliver(envelope)  # a redelivery is the inbox's no-op
                tally["redelivered"] += 1
        backlog[:] = later

    for round_no in range(ROUNDS):
        clock += STEP
        with sessions() as session, session.begin():
            if round_no < 28 and round_no % 4 == 0:
                for _ in range(10):
                    kind, region, image, _w = rng.choices(MIX, weights=[m[3] for m in MIX])[0]
                    org = rng.choice(orgs)
                    try:
                        with session.begin_nested():
                            services.create_instance(
                                _ctx(session, org, clock),
                                name=f"vm-{tally['created']}",
                                region=region,
                                instance_type=kind,
                                image=image,
                            )
                        tally["created"] += 1
                    except Problem as refusal:
                        tally[f"refused:{refusal.slug}"] += 1
            due = list(
                session.scalars(
                    select(Instance.id).where(
                        Instance.next_run_at <= clock, Instance.state.in_(sorted(states.TRANSITIONAL))
                    )
                )
            )
            for instance_id in due:
                saga.advance(session, instance_id, clock, driver, settings)
            if round_no % 5 == 2 and round_no < 40:
                _tenants_act(session, rng, clock, tally, spare=doomed)
        deliver_some()
        if round_no % 3 == 1:
            # Two or three workers tick at once; each may crash part-way through an organization.
            threads = [
                threading.Thread(target=world.tick, args=(clock,), kwargs={"fault": crash})
                for _ in range(rng.choice((2, 3)))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            tally["ticks"] += len(threads)

    # Settle: every event delivered, and clean ticks until nothing is left to charge.
    deliver_some(final=True)
    end = clock + STEP
    for _ in range(3):
        world.tick(end)
        deliver_some(final=True)
    world.tick(end)
    elapsed = time.monotonic() - started

    with sessions() as session:
        instances = list(session.scalars(select(Instance)))
        state_changes = [
            r.payload
            for r in session.scalars(
                select(OutboxEvent).where(OutboxEvent.type == "instance.state_changed").order_by(OutboxEvent.seq)
            )
        ]
        usage = dict(
            session.execute(
                select(UsageRecord.resource_id, func.sum(UsageRecord.seconds)).group_by(UsageRecord.resource_id)
            ).all()
        )
        amounts = dict(
            session.execute(
                select(UsageRecord.resource_id, func.sum(UsageRecord.amount)).group_by(UsageRecord.resource_id)
            ).all()
        )
        meters = {m.resource_id: m for m in session.scalars(select(Meter))}
        invariants = published.check_invariants(session)
        days = session.scalar(select(func.count(func.distinct(UsageRecord.day))))
        revenue = published.account_id("platform:revenue")
        usage_moves = session.execute(
            select(LedgerTransfer.amount, LedgerTransfer.credit_account_id).where(
                LedgerTransfer.code.in_(("usage", "usage_uncollected")),
                LedgerTransfer.kind == "single",
                (LedgerTransfer.credit_account_id == revenue) | (LedgerTransfer.debit_account_id == revenue),
            )
        ).all()
        wallets = [published.wallet_balance(session, org) for org in orgs + doomed]
        stopped_for_credit = sum(1 for i in instances if i.state_reason == "balance_depleted")

    # Independently of billing: each instance's running seconds from provisioning's state changes.
    expected: dict[uuid.UUID, int] = defaultdict(int)
    opened: dict[uuid.UUID, datetime] = {}
    for change in state_changes:
        iid = uuid.UUID(change["data"]["instance_id"])
        at = datetime.fromisoformat(change["occurred_at"].replace("Z", "+00:00")).replace(microsecond=0)
        if change["data"]["to_state"] == "running" and iid not in opened:
            opened[iid] = at
        elif change["data"]["to_state"] in ("stopped", "failed", "terminated") and iid in opened:
            expected[iid] += int((at - opened.pop(iid)).total_seconds())
    for iid, since in opened.items():
        expected[iid] += int((end - since).total_seconds())

    log.warning(
        "billing chaos: %.1fs wall, %d instances (%s), %d stopped for credit, tally %s, %d usage days",
        elapsed,
        len(instances),
        dict(Counter(i.state for i in instances)),
        stopped_for_credit,
        dict(tally),
        days,
    )
    assert invariants == []
    price = {i.id: i.price_per_hour for i in instances}
    assert {k: v for k, v in expected.items() if v} == {k: int(v) for k, v in usage.items() if v}
    for iid, seconds in expected.items():
        assert amounts.get(iid, 0) == price[iid] * seconds // 3600, iid
        assert meters[iid].charged_amount == amounts.get(iid, 0)
    charged = sum(a if c == revenue else -a for a, c in usage_moves)
    assert charged == sum(int(v) for v in amounts.values())
    assert all(w.posted + w.credit_limit >= 0 and w.available >= 0 for w in wallets)
    # The chaos really happened: crashes, redeliveries, races, depletion-stops, a midnight.
    assert tally["redelivered"] > 0, dict(tally)
    assert sum(v for k, v in tally.items() if k.startswith("crash@")) > 0, dict(tally)
    assert tally["depleted"] > 0 and days >= 2, dict(tally)
    # Every instance of the doomed organizations that ever ran was stopped for credit (stops
    # never fail on sim; billing repeats the depletion while any of them still runs).
    doomed_ran = [i for i in instances if i.organization_id in doomed and expected.get(i.id)]
    assert doomed_ran, "no doomed instance ever ran"
    assert all((i.state, i.state_reason) == ("stopped", "balance_depleted") for i in doomed_ran), [
        (i.state, i.state_reason) for i in doomed_ran
    ]
    assert stopped_for_credit >= len(doomed_ran)
    assert sum(1 for v in expected.values() if v) > 50
    engine.dispose()


def _tenants_act(
    session: Session, rng: random.Random, now: datetime, tally: Counter[str], *, spare: list[uuid.UUID]
) -> None:
    at_rest = list(
        session.scalars(
            select(Instance).where(
                Instance.state.in_(["running", "stopped", "failed"]),
                Instance.action_id.is_(None),
                Instance.organization_id.not_in(spare),
            )
        )
    )
    for instance in rng.sample(at_rest, min(len(at_rest), 15)):
        ctx = _ctx(session, instance.organization_id, now)
        roll = rng.random()
        if instance.state == "running":
            kind = "stop" if roll < 0.4 else "reboot" if roll < 0.6 else "terminate" if roll < 0.75 else None
        elif instance.state == "stopped":
            kind = "start" if roll < 0.6 else "terminate"
        else:
            kind = "terminate" if roll < 0.5 else None
        if kind is None:
            continue
        try:
            with session.begin_nested():
                if kind == "terminate":
                    services.terminate_instance(ctx, instance.id)
                else:
                    services.start_action(ctx, instance.id, kind)
            tally[kind] += 1
        except Problem as refusal:
            tally[f"{kind}:{refusal.slug}"] += 1
