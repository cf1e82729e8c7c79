"""Races that must not break placement: many claimants at once, each thread with its own
engine (its own connections), every claim its own committed transaction. On PostgreSQL
(--db=postgresql) the threads really run concurrently and the compare-and-swap and the
quota row lock are what keep the counts right; on SQLite the same code runs with the
database lock serialising writers. The outcomes asserted hold whatever the interleaving."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from inventory_support import NOW, add_host, add_type, check_invariants
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from handlers.inventory.published import Claim, LaunchSpec, NoCapacity, claim, release, resolve_launch
from handlers.inventory.tables import Allocation, Host, OrgQuota
from hangar.db import make_engine
from hangar.outbox import OutboxEvent

pytestmark = pytest.mark.postgres

WORKERS = 8


Job = Callable[[Session], Any]


def _race(url: str, jobs: list[Job], workers: int = WORKERS) -> list[Any]:
    """The jobs dealt round-robin to `workers` threads (see _race_lanes); results in job order."""
    lanes = [list(range(w, len(jobs), workers)) for w in range(workers)]
    by_lane = _race_lanes(url, [[jobs[i] for i in lane] for lane in lanes])
    results: list[Any] = [None] * len(jobs)
    for lane, lane_results in zip(lanes, by_lane, strict=True):
        for i, result in zip(lane, lane_results, strict=True):
            results[i] = result
    return results


def _race_lanes(url: str, lanes: list[list[Job]]) -> list[list[Any]]:
    """One thread per lane, each with its own engine, all starting together; a lane runs its
    jobs in order, each in its own transaction, committed if the job returns. Returns each
    job's result or the exception it raised. A monitor thread checks, while they run, that
    no inventory or host summary is ever seen over capacity."""
    results: list[list[Any]] = [[None] * len(lane) for lane in lanes]
    barrier = threading.Barrier(len(lanes) + 1)
    done = threading.Event()
    over: list[int] = []

    def work(n: int) -> None:
        engine = make_engine(url)
        try:
            barrier.wait()
            for i, job in enumerate(lanes[n]):
                with Session(engine, expire_on_commit=False) as session:
                    try:
                        results[n][i] = job(session)
                        session.commit()
                    except Exception as exc:
                        session.rollback()
                        results[n][i] = exc
        finally:
            engine.dispose()

    def monitor() -> None:
        engine = make_engine(url)
        barrier.wait()
        while True:  # at least once, and once more after the workers are done
            finished = done.is_set()
            with engine.connect() as conn:
                over.append(
                    conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM inventories WHERE used > capacity OR used < 0)"
                            " + (SELECT count(*) FROM hosts WHERE vcpu_free < 0 OR memory_mb_free < 0"
                            " OR disk_gb_free < 0 OR gpu_free < 0)"
                        )
                    ).scalar_one()
                )
            if finished:
                break
        engine.dispose()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(lanes))]
    watcher = threading.Thread(target=monitor)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert over and not any(over), "an inventory was seen over capacity"
    return results


def _claimer(launch: LaunchSpec, org: uuid.UUID, **kwargs: Any) -> Callable[[Session], Claim]:
    consumer = uuid.uuid4()
    return lambda s: claim(s, consumer_id=consumer, organization_id=org, launch=launch, now=NOW, **kwargs)


def _unexpected(results: list[Any]) -> list[Any]:
    return [r for r in results if isinstance(r, Exception) and not isinstance(r, NoCapacity)]


def test_forty_claimants_on_room_for_ten_get_exactly_ten(inventory_url: str, engine: Engine, session: Session) -> None:
    # Room for 10 two-vCPU instances: 4 by VCPU, 3 by VCPU, 3 by memory.
    a = add_host(session, "a", vcpu=8, vcpu_ratio=1.0)
    b = add_host(session, "b", vcpu=6, vcpu_ratio=1.0, zone="fra1-b")
    c = add_host(session, "c", vcpu=100, vcpu_ratio=1.0, memory_mb=3 * 1024, zone="fra1-c")
    add_type(session, "t-2", vcpus=2, memory_mb=1024)
    session.commit()
    launch = resolve_launch(session, region="fra1", instance_type="t-2", image="ubuntu-24.04")

    results = _race(inventory_url, [_claimer(launch, uuid.uuid4()) for _ in range(40)])

    assert not _unexpected(results), _unexpected(results)
    claims = [r for r in results if isinstance(r, Claim)]
    refusals = [r for r in results if isinstance(r, NoCapacity)]
    assert len(claims) == 10 and len(refusals) == 30
    assert {r.reason for r in refusals} == {"no-valid-host"}
    assert Counter(c_.host_id for c_ in claims) == {a: 4, b: 3, c: 3}
    check_invariants(session)
    hosts = {h.id: h for h in session.scalars(select(Host).execution_options(populate_existing=True))}
    # One generation bump per claim, none lost, none for a lost swap.
    assert {h: hosts[h].generation for h in (a, b, c)} == {a: 4, b: 3, c: 3}
    # Every consumer holds its three classes on one host.
    per_consumer = session.execute(
        select(Allocation.consumer_id, func.count(), func.count(func.distinct(Allocation.host_id))).group_by(
            Allocation.consumer_id
        )
    ).all()
    assert sorted((n, h) for _, n, h in per_consumer) == [(3, 1)] * 10
    claimed = session.scalars(select(OutboxEvent).where(OutboxEvent.type == "allocation.claimed")).all()
    assert sorted(e.payload["data"]["consumer_id"] for e in claimed) == sorted(str(c_.consumer_id) for c_ in claims)


def test_one_organizations_concurrent_claims_respect_its_quota(inventory_url: str, session: Session) -> None:
    add_host(session, "big", vcpu=64)
    add_type(session, "t-2", vcpus=2)
    session.commit()
    launch = resolve_launch(session, region="fra1", instance_type="t-2", image="ubuntu-24.04")
    org = uuid.uuid4()

    results = _race(inventory_url, [_claimer(launch, org, quota_vcpus=8) for _ in range(20)])

    assert not _unexpected(results), _unexpected(results)
    assert sum(isinstance(r, Claim) for r in results) == 4
    assert {r.reason for r in results if isinstance(r, NoCapacity)} == {"quota-exceeded"}
    check_invariants(session)
    assert session.get_one(OrgQuota, org, populate_existing=True).vcpus_used == 8


def test_concurrent_releases_of_one_consumer_release_once(inventory_url: str, session: Session) -> None:
    add_host(session, "h")
    add_type(session, "t-2", vcpus=2)
    session.commit()
    launch = resolve_launch(session, region="fra1", instance_type="t-2", image="ubuntu-24.04")
    consumer = uuid.uuid4()
    claim(session, consumer_id=consumer, organization_id=uuid.uuid4(), launch=launch, now=NOW)
    session.commit()

    results = _race(inventory_url, [lambda s: release(s, consumer_id=consumer, now=NOW) for _ in range(WORKERS)])

    assert sorted(results, key=str) == [False] * (WORKERS - 1) + [True]
    released = session.scalars(select(OutboxEvent).where(OutboxEvent.type == "allocation.released")).all()
    assert len(released) == 1
    check_invariants(session)


def test_claims_and_releases_churning_keep_every_count_consistent(inventory_url: str, session: Session) -> None:
    hosts = [add_host(session, f"h{i}", vcpu=4, vcpu_ratio=1.0, zone=f"fra1-{'abc'[i]}") for i in range(3)]
    add_type(session, "t-1", vcpus=1)
    session.commit()
    launch = resolve_launch(session, region="fra1", instance_type="t-1", image="ubuntu-24.04")
    orgs = [uuid.uuid4() for _ in range(3)]
    rng = random.Random(7)

    def claimer(consumer: uuid.UUID, org: uuid.UUID) -> Job:
        return lambda s: claim(s, consumer_id=consumer, organization_id=org, launch=launch, now=NOW)

    def releaser(consumer: uuid.UUID) -> Job:
        return lambda s: release(s, consumer_id=consumer, now=NOW)

    # 12 one-vCPU slots; 8 lanes each claim 6 consumers and release most of them again.
    lanes: list[list[Job]] = []
    for _ in range(WORKERS):
        lane: list[Job] = []
        for _ in range(6):
            consumer = uuid.uuid4()
            lane.append(claimer(consumer, rng.choice(orgs)))
            if rng.random() < 0.7:
                lane.append(releaser(consumer))
        lanes.append(lane)

    results = [r for lane in _race_lanes(inventory_url, lanes) for r in lane]

    assert not _unexpected(results), _unexpected(results)
    assert any(isinstance(r, Claim) for r in results) and True in results
    check_invariants(session)
    events = session.scalars(
        select(OutboxEvent).where(OutboxEvent.type.in_(["allocation.claimed", "allocation.released"]))
    ).all()
    writes = Counter(e.payload["data"]["host_id"] for e in events)
    # Every claim and every release bumped its host's generation exactly once.
    for host in session.scalars(select(Host).execution_options(populate_existing=True)):
        assert host.id in hosts
        assert host.generation == writes[str(host.id)]
