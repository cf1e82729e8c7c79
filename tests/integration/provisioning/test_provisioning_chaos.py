"""Chaos: 1,000 launches on a simulated fleet whose hosts fail one create, start or reboot in
five (sim_failure_rate=0.2), with stops, starts, reboots and terminations thrown in while
sagas are still running. Afterwards nothing may leak: every allocation belongs to a running
or stopped instance, failed and terminated instances hold nothing, every instance is at rest
and every host's usage is the sum of its allocations.

The sagas are driven directly (saga.advance over every due instance, round after round, one
transaction per round) rather than by runner threads, so the run takes seconds and never
depends on thread timing; the runner's own behaviour is test_provisioning_runner.py's. (Which
instances fail varies from run to run: the sim draws from the instance ids.)"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from provisioning_support import Backdoor, check_no_leaks
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from handlers.inventory.catalogue import load_sim_fleet
from handlers.inventory.tables import Allocation, Inventory
from handlers.provisioning import configuration, saga, services, states
from handlers.provisioning.tables import Action, Instance
from hangar.context import Principal, RequestContext
from hangar.db import utcnow
from hangar.drivers.sim import SimDriver, sim_fleet

log = logging.getLogger(__name__)

LAUNCHES = 1000
ORGANIZATIONS = 50  # 20 launches each, under a quota raised to let them all in
# (type, region, image, weight)
MIX = [
    ("cpu-1", "fra1", "ubuntu-24.04", 3),
    ("cpu-2", "ams1", "debian-12", 3),
    ("cpu-2", "nyc1", "ubuntu-22.04", 2),
    ("cpu-4", "fra1", "rocky-9", 1),
    ("gpu-a100x1", "ams1", "ubuntu-24.04-cuda12", 0.2),
    ("gpu-h100x1", "nyc1", "pytorch-2.5-cuda12", 0.1),
]


def _ctx(session: Session, organization_id: uuid.UUID, now: Any) -> RequestContext:
    principal = Principal(organization_id, uuid.uuid4(), uuid.uuid4(), "owner", frozenset({"instances:write"}))
    return RequestContext(request_id="req_chaos", session=session, principal=principal, now=now)


def test_a_thousand_launches_on_failing_hosts_leak_nothing(
    engine: Engine, make_settings: Callable[..., Any], backdoor: Backdoor, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    settings = make_settings(
        sim_failure_rate=0.2,
        sim_delay_ms=0,
        saga_poll_seconds=0.0,
        saga_max_attempts=3,
        quota_vcpus=1000,
        quota_gpus=100,
    )
    monkeypatch.setattr(configuration._holder, "_current", settings)  # what background.prepare records
    driver = SimDriver(seed=settings.sim_seed, delay_ms=0, failure_rate=0.2)
    rng = random.Random(2026)
    clock = utcnow()
    with Session(engine) as session, session.begin():
        load_sim_fleet(session, sim_fleet(60, ["fra1", "ams1", "nyc1"], seed=7), now=clock)

    orgs = [uuid.uuid4() for _ in range(ORGANIZATIONS)]
    with Session(engine) as session, session.begin():
        for n in range(LAUNCHES):
            kind, region, image, _ = rng.choices(MIX, weights=[m[3] for m in MIX])[0]
            services.create_instance(
                _ctx(session, orgs[n % ORGANIZATIONS], clock),
                name=f"vm-{n}",
                region=region,
                instance_type=kind,
                image=image,
            )

    steps: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    for round_no in range(1, 200):
        clock += timedelta(seconds=1)
        with Session(engine) as session, session.begin():
            due = list(
                session.scalars(
                    select(Instance.id).where(
                        Instance.next_run_at <= clock, Instance.state.in_(sorted(states.TRANSITIONAL))
                    )
                )
            )
            for instance_id in due:
                name = saga.advance(session, instance_id, clock, driver, settings)
                if name is not None:
                    steps[name] += 1
            # Tenants act while other sagas are mid-flight: each round, on a few instances at rest.
            if round_no in (4, 6, 9, 12):
                _tenants_act(session, rng, clock, actions)
        if not due and round_no > 12:
            break
    else:
        pytest.fail("the sagas did not settle within 200 rounds")

    elapsed = time.monotonic() - started
    rows = backdoor.instances()
    by_state = Counter(i.state for i in rows)
    attempts = Counter(i.attempt for i in rows)
    with Session(engine) as session:
        errors = Counter(
            session.scalars(select(Action.error_code).where(Action.status == "failed", Action.error_code.is_not(None)))
        )
    log.warning(
        "chaos: %d launches in %.1fs, %d rounds, %d steps; states %s; attempts %s; action errors %s; tenant actions %s",
        LAUNCHES,
        elapsed,
        round_no,
        sum(steps.values()),
        dict(by_state),
        dict(attempts),
        dict(errors),
        dict(actions),
    )

    assert len(rows) == LAUNCHES
    check_no_leaks(backdoor)
    # Failures happened and were retried; some ran out of hosts' patience.
    assert steps["provisioning/undo_build"] > 100 and attempts[2] > 100 and attempts[3] > 0
    assert by_state["failed"] > 0 and by_state["running"] > 600 and by_state["terminated"] > 0
    assert by_state["stopped"] > 0
    # Inventory agrees: every host's usage is exactly the sum of its allocations.
    with Session(engine) as session:
        held = {
            (host_id, rc): int(total)
            for host_id, rc, total in session.execute(
                select(Allocation.host_id, Allocation.resource_class, func.sum(Allocation.amount)).group_by(
                    Allocation.host_id, Allocation.resource_class
                )
            )
        }
        used = {(inv.host_id, inv.resource_class): inv.used for inv in session.scalars(select(Inventory)) if inv.used}
    assert used == held
    # Claims and releases pair up per instance: what was claimed and is not held was released.
    claimed = Counter(e["data"]["consumer_id"] for e in backdoor.events("allocation.claimed"))
    released = Counter(e["data"]["consumer_id"] for e in backdoor.events("allocation.released"))
    holders = {str(a.consumer_id) for a in backdoor.allocations()}
    assert all(claimed[c] - released[c] == (1 if c in holders else 0) for c in claimed)
    # The wall time is logged above, never asserted: speed is for benchmarks, not for tests.


def _tenants_act(session: Session, rng: random.Random, now: Any, tally: Counter[str]) -> None:
    at_rest = list(
        session.scalars(
            select(Instance).where(Instance.state.in_(["running", "stopped", "failed"]), Instance.action_id.is_(None))
        )
    )
    for instance in rng.sample(at_rest, min(len(at_rest), 120)):
        ctx = _ctx(session, instance.organization_id, now)
        choice = rng.random()
        if instance.state == "running":
            kind = "stop" if choice < 0.4 else "reboot" if choice < 0.7 else "terminate" if choice < 0.85 else None
        elif instance.state == "stopped":
            kind = "start" if choice < 0.6 else "terminate"
        else:
            kind = "terminate" if choice < 0.5 else None
        if kind is None:
            continue
        if kind == "terminate":
            services.terminate_instance(ctx, instance.id)
        else:
            services.start_action(ctx, instance.id, kind)
        tally[kind] += 1
