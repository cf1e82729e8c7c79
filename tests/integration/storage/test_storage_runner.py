"""The storage runner on its own (the app runs none here: run_relay off), stepped by hand: a
new runner finishes what a dead one left, racing runners run each step once, and a step that
raises is rolled back, recorded and retried after a backoff."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from storage_support import Backdoor, Tenant

from handlers.storage.runner import StorageRunner
from handlers.storage.tables import Volume
from hangar.db import make_session_factory
from hangar.drivers import Progress
from hangar.drivers.volumes import SimVolumeDriver, VolumeTask

pytestmark = pytest.mark.postgres


@pytest.fixture
def quiet(make_client: Callable[..., Any], make_tenant: Callable[[Any], Tenant]) -> Tenant:
    """A tenant on an app without background services: only the test's runners step."""
    return make_tenant(make_client(run_relay=False))


def _runner(engine: Engine, make_settings: Callable[..., Any], driver: Any = None) -> StorageRunner:
    driver = driver or SimVolumeDriver(seed=3, delay_ms=0, failure_rate=0.0)
    return StorageRunner(make_settings(storage_poll_seconds=0.0), make_session_factory(engine), driver)


def _settle(runner: StorageRunner, engine: Engine) -> None:
    """Step until no volume or snapshot has work due or scheduled (a backoff waits it out)."""
    deadline = time.monotonic() + 30
    while True:
        if runner.run_once():
            continue
        with Session(engine) as session:
            pending = session.scalar(select(func.count()).select_from(Volume).where(Volume.next_run_at.is_not(None)))
        if not pending:
            return
        assert time.monotonic() < deadline, "the runner never ran out of work"
        time.sleep(0.01)


def test_a_new_runner_finishes_what_a_dead_one_left(
    quiet: Tenant, engine: Engine, make_settings: Callable[..., Any], backdoor: Backdoor
) -> None:
    vid = quiet.create("data-1").json()["volume"]["id"]
    first = _runner(engine, make_settings)
    assert first.run_once() == 1  # begin: the driver was asked, then the process "dies"
    with Session(engine) as session:
        row = session.get(Volume, uuid.UUID(vid))
        assert row is not None and row.state == "creating" and row.step == "wait"
    _settle(_runner(engine, make_settings), engine)
    assert quiet.volume(vid)["state"] == "available"
    assert backdoor.kinds(vid) == ["volume.created"]


def test_racing_runners_run_every_step_once(
    quiet: Tenant, engine: Engine, make_settings: Callable[..., Any], backdoor: Backdoor
) -> None:
    volumes = [quiet.create(f"data-{i}").json()["volume"]["id"] for i in range(8)]
    runners = [_runner(engine, make_settings) for _ in range(3)]
    threads = [threading.Thread(target=_settle, args=(r, engine)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for vid in volumes:
        assert quiet.volume(vid)["state"] == "available"
        assert backdoor.kinds(vid) == ["volume.created"], "each volume created (and announced) once"
        [action] = quiet.get(f"/v1/volumes/{vid}/actions").json()["data"]
        assert action["status"] == "succeeded"


class _Flaky(SimVolumeDriver):
    """Raises (as a broken host call would) on the first begin, then behaves."""

    def __init__(self) -> None:
        super().__init__(seed=3, delay_ms=0, failure_rate=0.0)
        self.calls = 0

    def begin(self, task: VolumeTask) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the storage host dropped the connection")
        super().begin(task)

    def poll(self, task: VolumeTask, since: datetime, now: datetime) -> Progress:
        return super().poll(task, since, now)


def test_a_step_that_raises_is_retried_after_a_backoff(
    quiet: Tenant, engine: Engine, make_settings: Callable[..., Any]
) -> None:
    vid = quiet.create("data-1").json()["volume"]["id"]
    runner = _runner(engine, make_settings, _Flaky())
    assert runner.run_once() == 0  # the step raised: rolled back, recorded
    with Session(engine) as session:
        row = session.get(Volume, uuid.UUID(vid))
        assert row is not None and row.step == "begin" and row.step_errors == 1
        assert "dropped the connection" in (row.last_error or "")
    _settle(runner, engine)
    assert quiet.volume(vid)["state"] == "available"
    with Session(engine) as session:
        row = session.get(Volume, uuid.UUID(vid))
        assert row is not None and row.step_errors == 0 and row.last_error is None and row.next_run_at is None
