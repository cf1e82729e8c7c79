"""Metering against the database (SQLite, and PostgreSQL with -m postgres): edges from
events through the real consumer and inbox, ticks, the ledger transfers they write.

Prices are chosen so the arithmetic is easy: 36 cents/hour is 1 cent per 100 seconds."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from metering_support import T0, World, make_world, minutes, running, stopped
from sqlalchemy import select

from handlers.billing import holds, metering, published
from handlers.billing.metering_tables import Meter
from hangar.db import make_engine, utcnow

pytestmark = pytest.mark.postgres


@pytest.fixture
def world(database_url: str, make_settings: Callable[..., Any]) -> Iterator[World]:
    engine = make_engine(database_url)
    settings = make_settings(
        billing_signup_credit=0,
        billing_hold_seconds=600,
        billing_tick_seconds=60,
        billing_low_balance_threshold=500,
        billing_volume_price_per_gib_month=10,
    )
    yield make_world(engine, settings)
    metering.configure(settings)
    engine.dispose()


def test_an_instance_accrues_per_second_from_running_to_stopped(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 10_000)
    world.deliver(running(org, vm, T0))
    first = world.tick(T0 + minutes(10))
    assert first.charged == 6 and first.meters == 1  # 600 s at 36/h
    world.deliver(stopped(org, vm, T0 + minutes(25)))
    world.tick(T0 + minutes(30))
    assert world.charged(org) == 15  # 1,500 s, not 1,800: it stopped at 25 minutes
    [day] = world.usage(org)
    assert (day.seconds, day.amount, day.description) == (1500, 15, "cpu-2")
    assert world.balance(org).posted == 10_000 - 15
    assert world.invariants() == []
    # Nothing runs any more: the next tick has nothing to do for it and charges nothing.
    assert world.tick(T0 + minutes(90)).charged == 0
    assert world.charged(org) == 15


def test_rounding_is_cumulative_so_nothing_is_lost_across_ticks(world: World) -> None:
    """1 cent an hour charged every minute: each tick alone would round to 0."""
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 10_000)
    world.deliver(running(org, vm, T0, price=1))
    for minute in range(1, 121):
        world.tick(T0 + minutes(minute))
    assert world.charged(org) == 2
    [day] = world.usage(org)
    assert (day.seconds, day.amount) == (7200, 2)
    assert world.invariants() == []


def test_duplicate_and_out_of_order_delivery_charge_the_same(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 10_000)
    start, stop = running(org, vm, T0), stopped(org, vm, T0 + minutes(50))
    restart, end = running(org, vm, T0 + minutes(60)), stopped(org, vm, T0 + minutes(70), "instance.terminated")
    # Backwards, each twice (the second delivery of an id is the inbox's no-op), plus a
    # re-published running with a fresh id while it already runs (a reboot's running).
    for env in (end, restart, stop, start, end, start):
        world.deliver(env)
    world.deliver(running(org, vm, T0 + minutes(5)))
    world.tick(T0 + minutes(80))
    assert world.charged(org) == 36  # 50 + 10 minutes = 3,600 s
    assert world.usage(org)[0].seconds == 3600
    # Terminated is final: a late, stray running after it changes nothing.
    world.deliver(running(org, vm, T0 + minutes(75)))
    world.tick(T0 + minutes(90))
    assert world.charged(org) == 36
    assert world.invariants() == []


def test_a_stop_that_arrives_after_the_tick_charged_past_it_is_given_back(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 10_000)
    world.deliver(running(org, vm, T0))
    world.tick(T0 + minutes(60))
    assert world.charged(org) == 36
    world.deliver(stopped(org, vm, T0 + minutes(30)))  # late: it really stopped at 30 minutes
    report = world.tick(T0 + minutes(61))
    assert report.charged == -18
    assert world.charged(org) == 18
    assert world.balance(org).posted == 10_000 - 18
    assert world.usage(org)[0].seconds == 1800
    assert world.invariants() == []


def test_usage_is_split_at_utc_midnight(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 10_000)
    evening = datetime(2026, 12, 1, 23, 30, tzinfo=UTC)
    world.deliver(running(org, vm, evening))
    world.tick(evening + minutes(20))
    world.tick(evening + minutes(60))
    rows = world.usage(org)
    assert [(r.day, r.seconds, r.amount) for r in rows] == [
        (date(2026, 12, 1), 1800, 18),
        (date(2026, 12, 2), 1800, 18),
    ]
    with world.sessions() as session:
        lines = metering.usage_lines(session, org, start=date(2026, 12, 2), end=date(2026, 12, 3))
        assert [(line.resource_id, line.day, line.seconds, line.amount) for line in lines] == [
            (vm, date(2026, 12, 2), 1800, 18)
        ]
        assert (
            metering.usage_lines(session, org, start=date(2026, 12, 1), end=date(2026, 12, 3), resource_type="volume")
            == []
        )
        assert metering.usage_lines(session, uuid.uuid4(), start=date(2026, 12, 1), end=date(2026, 12, 3)) == []


def _hold(world: World, org: uuid.UUID, vm: uuid.UUID, amount: int) -> uuid.UUID:
    hold_id = uuid.uuid4()
    with world.sessions() as session, session.begin():
        published.transfer(
            session,
            id=hold_id,
            debit=published.wallet(session, org, now=T0),
            credit=published.platform_account(session, "holds", now=T0),
            amount=amount,
            code="hold",
            reference=holds.instance_reference(vm),
            organization_id=org,
            pending=True,
            # A day past the real clock: the consumers release holds on the real clock, and a
            # hold that expired by it (T0 is a fixed date) is the expiry sweep's, not theirs.
            timeout_seconds=int((utcnow() - T0).total_seconds()) + 86_400,
            now=T0,
        )
    return hold_id


def test_funding_draws_on_holds_then_the_balance_then_uncollected(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 20)
    hold_id = _hold(world, org, vm, 6)
    world.deliver(running(org, vm, T0))
    report = world.tick(T0 + minutes(60))  # 36 due: 6 from the hold, 14 free, 16 uncollected
    assert (report.charged, report.uncollected) == (36, 16)
    with world.sessions() as session:
        assert published.get_transfer(session, hold_id).status == "posted_pending"
        uncollected = published.balance(session, published.account_id("platform:uncollected"))
        assert uncollected.debits_posted - uncollected.credits_posted == 16
    assert world.balance(org).posted == 0 and world.balance(org).available == 0
    assert world.charged(org) == 36
    assert world.invariants() == []
    # Out of money while it runs: depleted — and again at the next tick, as it still runs.
    assert len(world.events("billing.balance_depleted")) == 1
    world.tick(T0 + minutes(61))
    assert len(world.events("billing.balance_depleted")) == 2


def test_a_rolling_hold_reserves_the_running_resources_minimum_run_time(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 10_000)
    world.deliver(running(org, vm, T0))
    for minute in (1, 2, 3):
        world.tick(T0 + minutes(minute))
        with world.sessions() as session:
            open_ = holds.open_holds(session, org, now=T0)
        assert [(h.reference, h.amount) for h in open_] == [(holds.ROLLING, 6)]  # 600 s at 36/h
    world.deliver(stopped(org, vm, T0 + minutes(3)))
    world.tick(T0 + minutes(4))
    with world.sessions() as session:
        assert holds.open_holds(session, org, now=T0) == []  # nothing runs: nothing held
    assert world.balance(org).available == 10_000 - 1  # 180 s at 36/h = 1.8 cents, floor 1
    assert world.invariants() == []


def test_low_is_emitted_once_per_crossing_and_depleted_until_the_instances_stop(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 620)
    world.deliver(running(org, vm, T0, price=3600))  # 1 cent a second, 60 a tick
    world.tick(T0 + minutes(1))  # 560 left
    assert world.events("billing.balance_low") == []
    world.tick(T0 + minutes(2))  # 500: not below
    world.tick(T0 + minutes(3))  # 440: below → low
    world.tick(T0 + minutes(4))  # 380: still below, no second event
    low = world.events("billing.balance_low")
    assert [e["data"] for e in low] == [{"balance": 440, "currency": "USD", "threshold": 500}]
    world.fund(org, 1000)  # a top-up: 1,380
    world.tick(T0 + minutes(5))  # 1,320 ≥ 500: re-armed, nothing emitted
    assert len(world.events("billing.balance_low")) == 1
    for minute in range(6, 20):
        world.tick(T0 + minutes(minute))
    assert len(world.events("billing.balance_low")) == 2  # crossed again (480 at 19 minutes)
    assert world.events("billing.balance_depleted") == []
    for minute in range(20, 30):
        world.tick(T0 + minutes(minute))
    # 60 left at 26 minutes funds one more tick; at 27 nothing is left: depleted. The event
    # comes again on every tick that still finds the instance running (provisioning leaves an
    # instance that is mid-action alone), and no more once it has stopped.
    depleted = world.events("billing.balance_depleted")
    assert [e["occurred_at"][11:16] for e in depleted] == ["12:27", "12:28", "12:29"]
    assert depleted[0]["data"]["currency"] == "USD"
    world.deliver(stopped(org, vm, T0 + minutes(29.5)))
    world.tick(T0 + minutes(30))
    world.tick(T0 + minutes(31))
    assert len(world.events("billing.balance_depleted")) == 3
    assert world.invariants() == []
    assert world.balance(org).posted >= 0  # never below the (zero) credit limit


def test_two_workers_ticking_at_once_charge_every_second_once(world: World) -> None:
    orgs = [uuid.uuid4() for _ in range(12)]
    for org in orgs:
        world.fund(org, 100_000)
        for _ in range(3):
            world.deliver(running(org, uuid.uuid4(), T0))
    for minute in range(1, 8):
        at = T0 + minutes(minute)
        threads = [threading.Thread(target=world.tick, args=(at,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for org in orgs:
        assert world.charged(org) == 3 * 4  # 420 s × 3 instances at 36/h = 3 × 4.2 → 3 × 4
    assert world.invariants() == []


def test_a_tick_that_crashes_mid_organization_leaves_nothing_and_the_next_charges_it(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 10_000)
    world.deliver(running(org, vm, T0))

    def crash(point: str) -> None:
        if point == "funded":
            raise RuntimeError("worker died")

    report = world.tick(T0 + minutes(10), fault=crash)
    assert report.failed == 1
    assert world.charged(org) == 0 and world.usage(org) == []
    world.tick(T0 + minutes(20))
    assert world.charged(org) == 12
    assert world.usage(org)[0].seconds == 1200
    assert world.invariants() == []


def test_a_failed_instance_releases_its_launch_hold(world: World) -> None:
    org, vm = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 100)
    _hold(world, org, vm, 6)
    assert world.balance(org).available == 94
    world.deliver(stopped(org, vm, T0 + minutes(1), "instance.failed"))
    assert world.balance(org).available == 100
    world.tick(T0 + minutes(2))
    assert world.charged(org) == 0
    assert world.invariants() == []


def test_volumes_are_metered_per_gib_month_and_resizes_change_the_rate(world: World) -> None:
    from metering_support import envelope

    org, vol = uuid.uuid4(), uuid.uuid4()
    world.fund(org, 100_000)
    world.deliver(envelope("volume.created", org, T0, volume_id=vol, name="data-1", region="fra1", size_gib=100))
    world.deliver(
        envelope("volume.resized", org, T0 + timedelta(hours=73), volume_id=vol, size_gib=200, previous_size_gib=100)
    )
    world.deliver(envelope("volume.deleted", org, T0 + timedelta(hours=146), volume_id=vol))
    world.tick(T0 + timedelta(hours=200))
    # 100 GiB × 10 cents for 73 h of a 730 h month = 100; 200 GiB for the next 73 h = 200.
    assert world.charged(org) == 300
    with world.sessions() as session:
        meter = session.scalars(select(Meter).where(Meter.resource_id == vol)).one()
        assert (meter.resource_type, meter.description, meter.active) == ("volume", "volume data-1 (200 GiB)", False)
        lines = metering.usage_lines(
            session, org, start=date(2026, 12, 1), end=date(2027, 1, 1), resource_type="volume"
        )
    assert sum(line.seconds for line in lines) == 146 * 3600
    assert sum(line.amount for line in lines) == 300
    assert world.invariants() == []
