"""The multi-process proof: hundreds of concurrent launches through two API processes and two
`hangar-worker`s over RabbitMQ on one PostgreSQL database, on hosts that fail one create in
five, into far less capacity than is asked for — and a worker SIGKILLed mid-run.

What must hold afterwards (each is asserted, with what broke it in the message):
- capacity: no inventory over its capacity; every inventory's `used` (and the host's
  placement summary) is the sum of its allocations;
- placement: every running instance holds exactly one allocation, on one active host, of
  exactly its resources; a failed instance holds nothing; running × size ≤ capacity; and
  placement packed: whenever a launch failed with `placement_error`, replaying the claims
  and releases recorded before it shows no host that still had room for it;
- no event lost: every instance has its `instance.requested` and exactly one terminal event
  (`instance.running` or `instance.failed`, matching its state), its claims and releases
  balance; every outbox row is published (none failed); the `provisioning.saga`
  consumer's inbox holds every `instance.requested`; no queue holds anything, the
  dead-letter queue included;
- crash: the killed worker's in-flight work (locked outbox rows, unacknowledged
  deliveries, half-run saga steps) is finished by the surviving worker.

Everything goes through the public paths a tenant or an operator uses: sign-up and launches
over HTTP (each with an Idempotency-Key, spread over both API processes), hosts marked down
and created with an operator key from `hangar-admin create-operator`. The database is read
only to check.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from bench.cluster import Cluster, Launch, Tenant, instance_states, launch_many, sign_up, wait_until_settled
from handlers.inventory.tables import Allocation, Host, Inventory
from handlers.provisioning.consumers import CONSUMER as SAGA_CONSUMER
from handlers.provisioning.tables import Action, Instance
from hangar.db import utcnow
from hangar.inbox import ProcessedEvent
from hangar.outbox import OutboxEvent

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

LAUNCHES = 320
TENANTS = 4
THREADS = 32
# Six hosts of 20 vCPUs (allocation ratio 1, memory and disk plentiful): room for 60 cpu-2
# instances, so most launches must fail for lack of capacity — and the ones that fit must
# fill it. Six, so a create that failed on one host has others to retry on.
HOSTS = 6
HOST_VCPUS = 20
TYPE, TYPE_VCPUS, REGION, IMAGE = "cpu-2", 2, "fra1", "ubuntu-24.04"
ENV = {
    "HANGAR_DRIVER": "sim",
    "HANGAR_SIM_DELAY_MS": "200",
    # One create in five fails on its host: with ~60 builds, compensation and retries on
    # other hosts happen in every run (no failure at all has odds of about 1 in a million).
    "HANGAR_SIM_FAILURE_RATE": "0.2",
    "HANGAR_SAGA_POLL_SECONDS": "0.1",
    "HANGAR_SAGA_MAX_ATTEMPTS": "3",
    "HANGAR_QUOTA_VCPUS": "100000",
    "HANGAR_QUOTA_GPUS": "1000",
    "HANGAR_RATE_LIMIT_PER_MINUTE": "1000000",
    "HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE": "100000",
    "HANGAR_BILLING_SIGNUP_CREDIT": "100000000",  # launches need credit (a billing hold each)
}
KILL_AFTER = LAUNCHES // 3  # instances accepted before worker-0 is SIGKILLed
SETTLE_SECONDS = 60.0
QUIET_SECONDS = 30.0
# How long after its outbox row a release is certainly committed (it is the last write of
# its step's short transaction); the packing replay ignores releases younger than this, so
# it can only under-estimate the room a failing claim saw.
COMMIT_LAG_NS = 2_000_000_000


def _operator_key(cluster: Cluster) -> dict[str, str]:
    printed = cluster.admin("create-operator", "--email", f"ops-{uuid.uuid4().hex[:8]}@example.com")
    return {"Authorization": f"Bearer {printed.strip().splitlines()[-1]}"}


def _tight_fleet(url: str, operator: dict[str, str]) -> list[str]:
    """Every seeded host marked down, then HOSTS small hosts of our own; their ids."""
    listed = httpx.get(url + "/v1/admin/hosts", params={"limit": 200}, headers=operator, timeout=30)
    assert listed.status_code == 200, listed.text
    assert listed.json()["next_cursor"] is None, "more seeded hosts than one page"
    for host in listed.json()["data"]:
        down = httpx.post(f"{url}/v1/admin/hosts/{host['id']}/mark-down", headers=operator, timeout=30)
        assert down.status_code == 200 and down.json()["state"] == "down", down.text
    ids = []
    for n in range(HOSTS):
        created = httpx.post(
            url + "/v1/admin/hosts",
            headers={**operator, "Idempotency-Key": str(uuid.uuid4())},
            json={
                "name": f"scale-{n}",
                "region": REGION,
                "zone": f"{REGION}-{'abc'[n % 3]}",
                "traits": ["ssd"],
                "inventories": [
                    {"resource_class": "VCPU", "total": HOST_VCPUS, "allocation_ratio": 1.0},
                    {"resource_class": "MEMORY_MB", "total": 1024 * 1024},
                    {"resource_class": "DISK_GB", "total": 100_000},
                ],
            },
            timeout=30,
        )
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    return ids


def _launch_and_kill(cluster: Cluster, tenants: list[Tenant]) -> tuple[list[Launch], dict[str, int], datetime]:
    """Fire the launches; once KILL_AFTER instances exist, SIGKILL worker-0 mid-run. Returns
    the launches, the instance states seen at the moment of the kill and its time."""
    outcome: dict[str, list[Launch]] = {}

    def body(index: int) -> dict[str, Any]:
        return {"name": f"scale-{index}", "region": REGION, "instance_type": TYPE, "image": IMAGE}

    def fire() -> None:
        outcome["launches"] = launch_many(cluster.urls, tenants, LAUNCHES, body, threads=THREADS)

    firing = threading.Thread(target=fire, name="launches")
    firing.start()
    at_kill: dict[str, int] = {}
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline and firing.is_alive():
        at_kill = instance_states(cluster.database_url)
        if sum(at_kill.values()) >= KILL_AFTER:
            break
        time.sleep(0.05)
    cluster.kill_worker(0)
    killed_at = utcnow()
    firing.join(SETTLE_SECONDS)
    assert not firing.is_alive(), "the launches did not finish"
    return outcome["launches"], at_kill, killed_at


def _poll(what: str, check: Callable[[], list[str]], timeout: float) -> None:
    """Poll `check` (the problems it finds) until it finds none; fail with the last ones."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check()
        if not problems:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout:.0f} s: {problems[:10]}")
        time.sleep(0.2)


def test_hundreds_of_launches_across_processes_lose_nothing_and_overcommit_nothing(
    broker_url: str, cluster_database: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    cluster = Cluster(cluster_database, tmp_path / "logs", apis=2, workers=2, broker_url=broker_url, env=ENV)
    engine = create_engine(cluster_database)
    try:
        cluster.start()
        operator = _operator_key(cluster)
        our_hosts = _tight_fleet(cluster.urls[0], operator)
        tenants = [sign_up(cluster.urls[n % 2], f"Scale {n}") for n in range(TENANTS)]

        launches, at_kill, killed_at = _launch_and_kill(cluster, tenants)
        refused = [(launch.status, launch.detail) for launch in launches if launch.status != 202]
        assert refused == [], f"{len(refused)} launches not accepted: {refused[:5]}"
        ids = [launch.instance_id for launch in launches]
        assert len(set(ids)) == LAUNCHES, "two launches answered with one instance"
        in_flight = sum(n for state, n in at_kill.items() if state not in ("running", "failed"))
        assert in_flight > 0, f"worker-0 was killed after the work was done: {at_kill}"
        assert cluster.exited() == {"worker-0": -9}, cluster.exited()

        counts = wait_until_settled(cluster_database, LAUNCHES, SETTLE_SECONDS)
        assert set(counts) <= {"running", "failed"} and sum(counts.values()) == LAUNCHES, counts
        _poll(
            "quiescence (outbox published, queues drained, inbox complete)",
            lambda: _unfinished(cluster, engine),
            QUIET_SECONDS,
        )

        with Session(engine) as session:
            _check_capacity(session, our_hosts)
            _check_placement(session, counts)
            _check_events(session)
            _check_survivor_finished(session, killed_at)
        depths = cluster.queue_depths()
        assert depths and all(n == 0 for n in depths.values()), depths
        assert cluster.exited() == {"worker-0": -9}, "a process died: " + ", ".join(cluster.exited())
    except BaseException:
        for name in ("worker-0", "worker-1", "api-0", "api-1"):
            with contextlib.suppress(KeyError):
                print(f"----- {name} (last 3000 characters)\n{cluster.output(name)[-3000:]}")
        raise
    finally:
        cluster.stop()
        engine.dispose()
    print(f"worker-0 SIGKILLed at {at_kill}; {counts} in {time.monotonic() - started:.1f} s")


def _unfinished(cluster: Cluster, engine: Engine) -> list[str]:
    """What still moves: unpublished outbox rows, messages in this run's queues, and
    instance.requested events the saga consumer has not recorded in its inbox yet."""
    problems: list[str] = []
    with Session(engine) as session:
        unpublished = session.scalar(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        )
        if unpublished:
            problems.append(f"{unpublished} outbox rows not published")
        missing = _requested_not_in_inbox(session)
        if missing:
            problems.append(f"{len(missing)} instance.requested not in the {SAGA_CONSUMER} inbox, e.g. {missing[:3]}")
    problems += [f"{queue}: {n} message(s)" for queue, n in cluster.queue_depths().items() if n]
    return problems


def _requested_not_in_inbox(session: Session) -> list[str]:
    requested = set(session.scalars(select(OutboxEvent.id).where(OutboxEvent.type == "instance.requested")))
    processed = set(session.scalars(select(ProcessedEvent.event_id).where(ProcessedEvent.consumer == SAGA_CONSUMER)))
    return sorted(str(i) for i in requested - processed)


def _check_survivor_finished(session: Session, killed_at: datetime) -> None:
    """After the kill only worker-1 relays and runs sagas: the work done since is its."""
    published = session.scalar(
        select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at > killed_at)
    )
    settled = session.scalar(
        select(func.count())
        .select_from(Instance)
        .where(Instance.state.in_(["running", "failed"]), Instance.updated_at > killed_at)
    )
    assert published and settled, f"after the kill: {published} events published, {settled} instances settled"


def _check_capacity(session: Session, our_hosts: list[str]) -> None:
    allocated: Counter[tuple[uuid.UUID, str]] = Counter()
    for host_id, rc, amount in session.execute(
        select(Allocation.host_id, Allocation.resource_class, func.sum(Allocation.amount)).group_by(
            Allocation.host_id, Allocation.resource_class
        )
    ):
        allocated[(host_id, rc)] = int(amount)
    inventories = list(session.scalars(select(Inventory)))
    over = [(str(i.host_id), i.resource_class, i.used, i.capacity) for i in inventories if i.used > i.capacity]
    assert over == [], f"inventories over capacity: {over}"
    wrong = [
        (str(i.host_id), i.resource_class, i.used, allocated[(i.host_id, i.resource_class)])
        for i in inventories
        if i.used != allocated[(i.host_id, i.resource_class)]
    ]
    assert wrong == [], f"inventories whose used is not the sum of their allocations (host, class, used, Σ): {wrong}"
    orphans = set(allocated) - {(i.host_id, i.resource_class) for i in inventories}
    assert orphans == set(), f"allocations without an inventory: {orphans}"
    by_host = {(i.host_id, i.resource_class): i for i in inventories}
    for host in session.scalars(select(Host)):
        vcpu = by_host.get((host.id, "VCPU"))
        if vcpu is not None:
            assert host.vcpu_free == vcpu.capacity - vcpu.used, f"host {host.name}: summary disagrees with VCPU"
    active = {str(h) for h in session.scalars(select(Host.id).where(Host.state == "active"))}
    assert active == set(our_hosts), "only the hosts created for this run may be active"


def _check_placement(session: Session, counts: dict[str, int]) -> None:
    instances = {i.id: i for i in session.scalars(select(Instance))}
    rows: defaultdict[uuid.UUID, list[Allocation]] = defaultdict(list)
    for allocation in session.scalars(select(Allocation)):
        rows[allocation.consumer_id].append(allocation)
    hosts = {h.id: h for h in session.scalars(select(Host))}
    for instance in instances.values():
        held = rows.get(instance.id, [])
        if instance.state == "failed":
            assert held == [], (
                f"failed instance {instance.id} still holds {[(a.resource_class, a.amount) for a in held]}"
            )
            continue
        assert instance.state == "running", f"{instance.id} is {instance.state}"
        host = hosts.get(instance.host_id) if instance.host_id is not None else None
        assert host is not None, f"running {instance.id} has no host"
        assert {a.host_id for a in held} == {host.id}, f"running {instance.id}: allocations on {held}"
        amounts = {a.resource_class: a.amount for a in held}
        wanted = {"VCPU": instance.vcpus, "MEMORY_MB": instance.memory_mb, "DISK_GB": instance.disk_gb}
        assert amounts == wanted, f"running {instance.id} holds {amounts}, needs {wanted}"
        assert host.state == "active", f"running {instance.id} on a {host.state} host"
    assert set(rows) <= set(instances), f"allocations of unknown consumers: {set(rows) - set(instances)}"

    capacity = session.scalar(
        select(func.coalesce(func.sum(Inventory.capacity), 0))
        .join(Host, Host.id == Inventory.host_id)
        .where(Host.state == "active", Inventory.resource_class == "VCPU")
    )
    assert capacity is not None and counts.get("running", 0) * TYPE_VCPUS <= capacity, (counts, capacity)
    assert counts.get("running", 0) > 0 and counts.get("failed", 0) > 0, counts
    _check_packing(session)
    codes = Counter(
        session.scalars(select(Action.error_code).where(Action.type == "create", Action.status == "failed"))
    )
    print(f"capacity {capacity} vCPUs = {capacity // TYPE_VCPUS} instances; {counts}; failures {dict(codes)}")


def _check_packing(session: Session) -> None:
    """Replay the capacity timeline from the outbox (per host: claims and releases in `seq`
    order; a host's events are recorded under its row lock, so their order is the commit
    order) and, at each `placement_error`, ask whether some host still had room.

    The replay errs on the side of "no room": every claim recorded before the failure
    counts (even one not yet committed when the failing claim looked), a release counts
    only once COMMIT_LAG_NS old. So room found here was room the failing claim could see."""
    events = list(
        session.execute(
            select(OutboxEvent.seq, OutboxEvent.type, OutboxEvent.payload)
            .where(OutboxEvent.type.in_(["allocation.claimed", "allocation.released", "instance.failed"]))
            .order_by(OutboxEvent.seq)
        )
    )
    capacity = {
        str(host_id): cap
        for host_id, cap in session.execute(
            select(Inventory.host_id, Inventory.capacity)
            .join(Host, Host.id == Inventory.host_id)
            .where(Host.state == "active", Inventory.resource_class == "VCPU")
        )
    }
    claims = [
        (seq, p["data"]["host_id"], p["data"]["resources"]["VCPU"]) for seq, t, p in events if t == "allocation.claimed"
    ]
    releases = [
        (seq, p["data"]["host_id"], p["data"]["resources"]["VCPU"])
        for seq, t, p in events
        if t == "allocation.released"
    ]
    failures = [
        (seq, p["data"]["instance_id"])
        for seq, t, p in events
        if t == "instance.failed" and p["data"]["error_code"] == "placement_error"
    ]
    assert failures, "no launch failed for lack of capacity: the run did not test packing"
    assert releases, "no allocation was released: no create failed and was compensated"
    idle = []
    for failed_at, instance_id in failures:
        free = dict(capacity)
        for seq, host, vcpus in claims:
            if seq < failed_at:
                free[host] -= vcpus
        for seq, host, vcpus in releases:
            if seq < failed_at - COMMIT_LAG_NS:
                free[host] += vcpus
        room = {host: n for host, n in free.items() if n >= TYPE_VCPUS}
        if room:
            idle.append((instance_id, room))
    assert idle == [], f"launches failed with placement_error while hosts had room (instance, free vCPUs): {idle[:5]}"


def _check_events(session: Session) -> None:
    rows = list(
        session.execute(select(OutboxEvent.type, OutboxEvent.payload, OutboxEvent.published_at, OutboxEvent.failed_at))
    )
    unpublished = [(t, p["id"]) for t, p, published, failed in rows if published is None or failed is not None]
    assert unpublished == [], f"outbox rows not published (or failed): {unpublished[:5]}"
    instances = {str(i.id): i.state for i in session.scalars(select(Instance))}
    seen: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for event_type, payload, _, _ in rows:
        data = payload["data"]
        subject = data.get("instance_id") or data.get("consumer_id")
        if subject is not None:
            seen[str(subject)][event_type] += 1
    lost = []
    for instance_id, state in instances.items():
        got = seen[instance_id]
        terminal = {"instance.running": got["instance.running"], "instance.failed": got["instance.failed"]}
        expected_terminal = {"instance.running": int(state == "running"), "instance.failed": int(state == "failed")}
        balance = got["allocation.claimed"] - got["allocation.released"]
        if got["instance.requested"] != 1 or terminal != expected_terminal or balance != int(state == "running"):
            lost.append((instance_id, state, dict(got)))
    assert lost == [], f"instances whose events do not add up (id, state, events): {lost[:5]}"
    strangers = set(seen) - set(instances)
    assert strangers == set(), f"events about unknown instances: {sorted(strangers)[:5]}"
    missing = _requested_not_in_inbox(session)
    assert missing == [], f"instance.requested never handled by {SAGA_CONSUMER}: {missing[:5]}"
