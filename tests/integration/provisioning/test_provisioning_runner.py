"""The saga runner: it finishes what a crashed worker left, survives a step that raises, and
shares work with other runners so that every step happens exactly once — on PostgreSQL
through row locks and SKIP LOCKED, on SQLite through the compare-and-set in locks.py."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from provisioning_support import Backdoor, check_no_leaks, wait_for
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from handlers.provisioning import runner as runner_module
from handlers.provisioning import saga, services
from handlers.provisioning.runner import SagaRunner
from handlers.provisioning.tables import Instance
from hangar.config import Settings
from hangar.context import Principal, RequestContext
from hangar.db import make_engine, make_session_factory, utcnow
from hangar.drivers import InstanceSpec, Operation, Progress
from hangar.drivers.sim import SimDriver

pytestmark = pytest.mark.postgres


class CountingDriver:
    """The sim driver, counting `begin` calls per (instance, attempt, operation) across every
    runner that shares it, and optionally raising from `poll` while `broken` is set."""

    name = "counting-sim"

    def __init__(self, settings: Settings) -> None:
        self.sim = SimDriver(
            seed=settings.sim_seed, delay_ms=settings.sim_delay_ms, failure_rate=settings.sim_failure_rate
        )
        self.begins: Counter[tuple[uuid.UUID, int, str]] = Counter()
        self.broken = threading.Event()
        self._lock = threading.Lock()

    def begin(self, spec: InstanceSpec, operation: Operation) -> None:
        with self._lock:
            self.begins[(spec.instance_id, spec.attempt, operation)] += 1
        self.sim.begin(spec, operation)

    def poll(self, spec: InstanceSpec, operation: Operation, since: datetime, now: datetime) -> Progress:
        if self.broken.is_set():
            raise ConnectionError("the host agent is unreachable")
        return self.sim.poll(spec, operation, since, now)

    def close(self) -> None:
        pass


def _ctx(session: Session, organization_id: uuid.UUID) -> RequestContext:
    principal = Principal(organization_id, uuid.uuid4(), uuid.uuid4(), "owner", frozenset({"instances:write"}))
    return RequestContext(request_id="req_test", session=session, principal=principal)


def _create(sessions: sessionmaker[Session], n: int, organization_id: uuid.UUID | None = None) -> list[uuid.UUID]:
    org = organization_id or uuid.uuid4()
    with sessions() as session, session.begin():
        return [
            services.create_instance(
                _ctx(session, org), name=f"web-{i}", region="fra1", instance_type="cpu-1", image="ubuntu-24.04"
            )[0].id
            for i in range(n)
        ]


def _states(sessions: sessionmaker[Session], ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    with sessions() as session:
        return dict(session.execute(select(Instance.id, Instance.state).where(Instance.id.in_(ids))).all())


def _all_in(sessions: sessionmaker[Session], ids: list[uuid.UUID], *wanted: str) -> bool:
    return all(state in wanted for state in _states(sessions, ids).values())


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def test_a_new_runner_finishes_what_a_crashed_worker_left(
    sessions: sessionmaker[Session], make_settings: Callable[..., Any], backdoor: Backdoor
) -> None:
    settings = make_settings(sim_delay_ms=30)
    driver = CountingDriver(settings)
    ids = _create(sessions, 3)
    # The "crashed" worker got each saga part of the way: claimed, held, began the build …
    for steps, instance_id in zip((1, 2, 3), ids, strict=True):
        for _ in range(steps):
            with sessions() as session, session.begin():
                assert saga.advance(session, instance_id, utcnow(), driver, settings) is not None
    with sessions() as session:
        assert [session.get_one(Instance, i).step for i in ids] == ["hold", "create", "building"]
    # … and died. A new runner picks every one up where it stopped.
    fresh = SagaRunner(settings, sessions, driver, close_driver=False)
    fresh.start()
    try:
        wait_for(lambda: _all_in(sessions, ids, "running"))
    finally:
        fresh.stop()
    assert all(count == 1 for count in driver.begins.values()), driver.begins
    for instance_id in ids:
        kinds = backdoor.kinds(str(instance_id))
        assert kinds == [
            "instance.requested",
            "allocation.claimed",
            "pending→provisioning",
            "provisioning→running",
            "instance.running",
            "action.completed",
        ]
    check_no_leaks(backdoor)


def test_a_step_that_raises_backs_off_and_the_loop_goes_on(
    sessions: sessionmaker[Session], make_settings: Callable[..., Any], backdoor: Backdoor
) -> None:
    settings = make_settings(sim_delay_ms=30, saga_poll_seconds=0.02)
    driver = CountingDriver(settings)
    driver.broken.set()
    runner = SagaRunner(settings, sessions, driver, close_driver=False)
    runner.start()
    try:
        [stuck] = _create(sessions, 1)
        runner.kick()

        def erring() -> Instance | None:
            with sessions() as session:
                row = session.get_one(Instance, stuck)
                return row if row.step_errors >= 2 else None

        row = wait_for(erring)
        assert row.state == "provisioning" and row.step == "building"
        assert row.last_error == "ConnectionError: the host agent is unreachable"
        # Other instances are not held up by the broken one: the loop is alive.
        driver.broken.clear()
        [other] = _create(sessions, 1)
        runner.kick()
        wait_for(lambda: _all_in(sessions, [stuck, other], "running"), timeout=20)
    finally:
        runner.stop()
    with sessions() as session:
        assert session.get_one(Instance, stuck).step_errors == 0
    check_no_leaks(backdoor)


def test_the_consumer_advances_at_once_and_kicks_the_local_runner(
    sessions: sessionmaker[Session], make_settings: Callable[..., Any]
) -> None:
    from handlers.provisioning import consumers

    # Host operations finish at once, and the runner polls once an hour: after its first
    # pass only a kick can make it look again.
    settings = make_settings(sim_delay_ms=0, saga_poll_seconds=3600)
    driver = CountingDriver(settings)

    def requested(instance_id: uuid.UUID) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "type": "instance.requested", "data": {"instance_id": str(instance_id)}}

    [early] = _create(sessions, 1)
    with sessions() as session, session.begin():  # no runner in this process: the consumer does nothing …
        consumers.on_instance_requested(session, requested(early))
    assert _states(sessions, [early]) == {early: "pending"}
    local = SagaRunner(settings, sessions, driver, close_driver=False)
    local.start()
    try:
        wait_for(lambda: _all_in(sessions, [early], "running"))  # … and the runner's first pass loses nothing
        assert runner_module.local() is local

        [late] = _create(sessions, 1)  # creating wakes no runner; the event's consumer does
        with sessions() as session, session.begin():
            consumers.on_instance_requested(session, requested(late))
            assert session.get_one(Instance, late).state == "provisioning"  # the claim ran here, in the delivery
        wait_for(lambda: _all_in(sessions, [late], "running"), timeout=10)
    finally:
        local.stop()
    assert runner_module.local() is None


def test_racing_runners_run_every_step_once(
    database_url: str, sessions: sessionmaker[Session], make_settings: Callable[..., Any], backdoor: Backdoor
) -> None:
    """Four runners, each with its own connection pool (as separate processes would have),
    on the same 24 instances through create, stop and terminate."""
    settings = make_settings(sim_delay_ms=20, saga_poll_seconds=0.01)
    driver = CountingDriver(settings)
    engines = [make_engine(database_url) for _ in range(4)]
    runners = [SagaRunner(settings, make_session_factory(e), driver, batch_size=5, close_driver=False) for e in engines]
    ids = _create(sessions, 24)
    for r in runners:
        r.start()
    try:
        wait_for(lambda: _all_in(sessions, ids, "running"), timeout=30)
        for instance_id in ids[:12]:
            with sessions() as session, session.begin():
                services.start_action(_ctx(session, _org(session, instance_id)), instance_id, "stop")
        for instance_id in ids[12:]:
            with sessions() as session, session.begin():
                services.terminate_instance(_ctx(session, _org(session, instance_id)), instance_id)
        for r in runners:
            r.kick()
        wait_for(lambda: _all_in(sessions, ids, "stopped", "terminated"), timeout=30)
    finally:
        for r in runners:
            r.stop()
        for e in engines:
            e.dispose()
    assert set(driver.begins.values()) == {1}, "a host operation was begun twice"
    assert len(driver.begins) == 24 + 24  # a create each, then a stop or a destroy each
    for n, instance_id in enumerate(ids):
        ending = (
            ["running→stopping", "stopping→stopped", "instance.stopped", "action.completed"]
            if n < 12
            else [
                "running→terminating",
                "allocation.released",
                "terminating→terminated",
                "instance.terminated",
                "action.completed",
            ]
        )
        assert backdoor.kinds(str(instance_id)) == [
            "instance.requested",
            "allocation.claimed",
            "pending→provisioning",
            "provisioning→running",
            "instance.running",
            "action.completed",
            *ending,
        ]
    check_no_leaks(backdoor)


def _org(session: Session, instance_id: uuid.UUID) -> uuid.UUID:
    return session.get_one(Instance, instance_id).organization_id
