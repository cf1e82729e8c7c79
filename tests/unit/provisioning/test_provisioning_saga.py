"""The saga, step by step, against a scriptable host driver and the real inventory context:
the happy paths, compensation in reverse, retries on other hosts, refusals, timeouts, and
replays (every step is safe to run twice)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import Any

import pytest
from provisioning_fakes import FakeDriver, World, host_error
from sqlalchemy import event, select, update

from handlers.inventory import published
from handlers.inventory.tables import Host
from handlers.provisioning import hooks, saga, services
from handlers.provisioning.locks import lock_instance
from handlers.provisioning.tables import Instance
from hangar.drivers import DriverError, InstanceSpec, Operation, Progress

pytestmark = pytest.mark.postgres

CREATE_STEPS = [
    "pending/claim",
    "provisioning/hold",
    "provisioning/create",
    "provisioning/building",
    "provisioning/building",
]


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["type"]
        + (f":{e['data']['from_state']}→{e['data']['to_state']}" if e["type"] == "instance.state_changed" else "")
        for e in events
    ]


def _fail_on(*hosts: str, operation: Operation = "create") -> Any:
    def outcome(spec: InstanceSpec, op: Operation) -> Progress | None:
        return host_error(f"{spec.host_name} broke") if op == operation and spec.host_name in hosts else None

    return outcome


# --- create ---------------------------------------------------------------------------------


def test_create_runs_claim_hold_build_then_running(world: World, driver: FakeDriver) -> None:
    instance_id = world.create()
    created = world.instance(instance_id)
    assert created.state == "pending" and created.action_id is not None and created.step == "claim"
    [action] = world.actions(instance_id)
    assert (action.type, action.status, action.started_at) == ("create", "queued", None)

    assert world.drive(instance_id) == CREATE_STEPS
    instance = world.instance(instance_id)
    assert instance.state == "running" and instance.state_reason is None
    assert instance.action_id is None and instance.step is None and instance.next_run_at is None
    assert instance.launched_at is not None and instance.zone is not None and instance.attempt == 1
    [action] = world.actions(instance_id)
    assert action.status == "succeeded" and action.progress == 100 and action.error_code is None
    assert action.started_at is not None and action.completed_at is not None
    assert action.started_at < action.completed_at
    claim = world.allocation(instance_id)
    assert claim is not None and claim.host_id == instance.host_id
    assert driver.begun() == [("create", instance.host_name, 1)]
    assert _types(world.events()) == [
        "instance.requested",
        "allocation.claimed",
        "instance.state_changed:pending→provisioning",
        "instance.state_changed:provisioning→running",
        "instance.running",
        "action.completed",
    ]
    running = world.events("instance.running")[0]["data"]
    assert running["host_id"] == str(instance.host_id) and running["zone"] == instance.zone
    completed = world.events("action.completed")[0]["data"]
    assert completed == {
        "action_id": str(action.id),
        "instance_id": str(instance_id),
        "type": "create",
        "status": "succeeded",
        "error_code": None,
        "error_message": None,
    }
    assert world.step(instance_id) is None  # nothing left to do


def test_action_progress_follows_the_host_and_never_goes_back(world: World, driver: FakeDriver) -> None:
    driver.polls = 4
    instance_id = world.create()
    seen = []
    while world.step(instance_id):
        seen.append(world.actions(instance_id)[0].progress)
    assert seen == sorted(seen) and seen[-1] == 100 and 0 < seen[-2] < 100


def test_a_failed_build_is_compensated_in_reverse_and_retried_elsewhere(
    world: World, driver: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    voided: list[tuple[uuid.UUID, str]] = []
    monkeypatch.setattr(hooks, "billing_void", lambda s, r, *, reason, now: voided.append((r.action_id, reason)))
    instance_id = world.create()
    world.step(instance_id)  # claim
    first = world.instance(instance_id).host_name
    assert first is not None
    driver.outcome = _fail_on(first)

    steps = world.drive(instance_id)
    assert steps == [
        "provisioning/hold",
        "provisioning/create",
        "provisioning/building",
        "provisioning/building",  # the host reports the failure
        "provisioning/undo_build",  # destroy …
        "provisioning/undo_build_wait",
        "provisioning/undo_build_wait",
        "provisioning/undo_claim",  # … release …
        "provisioning/undo_hold",  # … void, then back to pending on attempt 2
        *CREATE_STEPS,
    ]
    instance = world.instance(instance_id)
    assert instance.state == "running" and instance.attempt == 2 and instance.host_name != first
    assert instance.tried_hosts == [str(world.events("allocation.claimed")[0]["data"]["host_id"])]
    assert [(op, host) for op, host, _ in driver.begun()] == [
        ("create", first),
        ("destroy", first),
        ("create", instance.host_name),
    ]
    assert voided == [(world.actions(instance_id)[0].id, "host_error")]
    assert _types(world.events()) == [
        "instance.requested",
        "allocation.claimed",
        "instance.state_changed:pending→provisioning",
        "allocation.released",
        "instance.state_changed:provisioning→pending",
        "allocation.claimed",
        "instance.state_changed:pending→provisioning",
        "instance.state_changed:provisioning→running",
        "instance.running",
        "action.completed",
    ]
    released = world.events("allocation.released")[0]["data"]
    assert released["host_name"] == first and released["reason"] == "create failed (host_error)"
    retry = world.events("instance.state_changed")[1]["data"]
    assert "attempt 1 failed on " + first in retry["reason"]
    assert world.actions(instance_id)[0].status == "succeeded"


def test_every_attempt_failing_fails_the_instance_with_nothing_held(world: World, driver: FakeDriver) -> None:
    driver.outcome = lambda spec, op: host_error(f"{spec.host_name} broke") if op == "create" else None
    instance_id = world.create()
    world.drive(instance_id)
    instance = world.instance(instance_id)
    assert instance.state == "failed" and instance.attempt == 3 and len(set(instance.tried_hosts)) == 2
    assert instance.action_id is None and instance.next_run_at is None
    assert "after 3 attempts" in (instance.state_reason or "")
    [action] = world.actions(instance_id)
    assert action.status == "failed" and action.error_code == "host_error"
    assert world.allocation(instance_id) is None
    hosts = [host for op, host, _ in driver.begun() if op == "create"]
    assert len(hosts) == 3 == len(set(hosts)), "each attempt ran on a host not tried before"
    assert len(world.events("allocation.claimed")) == 3 == len(world.events("allocation.released"))
    [failed] = world.events("instance.failed")
    assert failed["data"]["error_code"] == "host_error" and failed["data"]["message"] == instance.state_reason
    assert world.events("action.completed")[0]["data"]["status"] == "failed"
    assert world.events()[-3:][0]["data"]["to_state"] == "failed"


def test_no_host_with_room_fails_at_once_with_placement_error(world: World, driver: FakeDriver) -> None:
    instance_id = world.create(instance_type="cpu-2", region="ams1")  # the fleet is all in fra1
    assert world.drive(instance_id) == ["pending/claim"]
    instance = world.instance(instance_id)
    assert instance.state == "failed" and instance.zone is None
    [action] = world.actions(instance_id)
    assert action.error_code == "placement_error" and "ams1" in (action.error_message or "")
    assert driver.calls == [] and world.events("allocation.claimed") == []
    assert _types(world.events()) == [
        "instance.requested",
        "instance.state_changed:pending→failed",
        "instance.failed",
        "action.completed",
    ]


def test_a_retry_that_finds_no_other_host_is_a_host_error(world: World, driver: FakeDriver) -> None:
    driver.outcome = lambda spec, op: host_error("broke") if op == "create" else None
    instance_id = world.create(instance_type="cpu-2")
    others = _host_ids(world)[1:]  # as if two hosts had been tried already: one is left
    with world.sessions() as session, session.begin():
        session.execute(update(Instance).where(Instance.id == instance_id).values(tried_hosts=[str(h) for h in others]))
    world.drive(instance_id)
    [action] = world.actions(instance_id)
    assert action.error_code == "host_error"
    assert (action.error_message or "").startswith("broke; no other host can take it: No active host in fra1")
    assert [op for op, _, _ in driver.begun()] == ["create", "destroy"]


def _host_ids(world: World) -> list[uuid.UUID]:
    with world.sessions() as session:
        return list(session.scalars(select(Host.id).order_by(Host.name)))


def test_a_claim_over_quota_fails_with_quota_exceeded(world: World, driver: FakeDriver) -> None:
    world.settings = dataclasses.replace(world.settings, quota_vcpus=4)
    first, second = world.create(), world.create()
    with world.sessions() as session, session.begin():  # a third would be refused by the API…
        third = services.create_instance(
            world.ctx(session), name="web-3", region="fra1", instance_type="cpu-1", image="ubuntu-24.04"
        )[0].id
    for instance_id in (first, second, third):
        world.drive(instance_id)
    assert [world.instance(i).state for i in (first, second)] == ["running", "running"]
    [action] = world.actions(third)  # … the claim enforces it under the quota lock
    assert action.error_code == "quota_exceeded"


def test_a_refused_billing_hold_releases_the_claim_and_fails_without_retry(
    world: World, driver: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(session: Any, request: hooks.HoldRequest, *, now: Any) -> None:
        raise hooks.HoldRefused("insufficient_funds", "the balance does not cover an hour")

    # The request's own hold was granted (services.create_instance places it); the saga's
    # hold step asks again — e.g. a retry's hold after a compensation voided the first — and
    # is refused.
    instance_id = world.create()
    monkeypatch.setattr(hooks, "billing_hold", refuse)
    assert world.drive(instance_id) == [
        "pending/claim",
        "provisioning/hold",
        "provisioning/undo_claim",
        "provisioning/undo_hold",
    ]
    instance = world.instance(instance_id)
    assert instance.state == "failed" and instance.attempt == 1
    assert world.actions(instance_id)[0].error_code == "insufficient_funds"
    assert driver.calls == [] and world.allocation(instance_id) is None


def test_a_driver_that_cannot_begin_is_a_failed_attempt(world: World, driver: FakeDriver) -> None:
    driver.begin_error = lambda spec, op: (
        DriverError("spawn_failed", "no") if (op, spec.attempt) == ("create", 1) else None
    )
    instance_id = world.create()
    world.drive(instance_id)
    instance = world.instance(instance_id)
    assert instance.state == "running" and instance.attempt == 2
    assert [op for op, _, _ in driver.begun()] == ["create", "destroy", "create"]


def test_a_host_that_never_answers_times_out(world: World, driver: FakeDriver) -> None:
    driver.polls = 10**9
    driver.outcome = None
    instance_id = world.create()
    for _ in range(4):
        world.step(instance_id)  # claim, hold, create, a first poll
    assert world.instance(instance_id).step == "building"
    world.now += saga.OPERATION_TIMEOUT
    world.step(instance_id)
    instance = world.instance(instance_id)
    assert instance.step == "undo_build" and instance.fault_code == "boot_timeout"


def test_lost_claim_races_are_retried_not_failed(
    world: World, driver: FakeDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = published.claim
    losses = iter([True, True])

    def flaky(session: Any, **kwargs: Any) -> published.Claim:
        if next(losses, False):
            raise published.ConcurrentClaims("lost")
        return real(session, **kwargs)

    monkeypatch.setattr(published, "claim", flaky)
    instance_id = world.create()
    stepped_at = world.now
    world.step(instance_id)
    after_one = world.instance(instance_id)
    assert (after_one.state, after_one.step, after_one.step_errors) == ("pending", "claim", 1)
    assert after_one.next_run_at == stepped_at + timedelta(seconds=saga.backoff_seconds(world.settings, 1))
    world.now = after_one.next_run_at
    world.step(instance_id)
    assert world.instance(instance_id).step_errors == 2
    world.now += timedelta(minutes=5)
    world.drive(instance_id)
    instance = world.instance(instance_id)
    assert instance.state == "running" and instance.step_errors == 0 and instance.last_error is None


# --- power actions and terminate -------------------------------------------------------------


def _running(world: World) -> uuid.UUID:
    instance_id = world.create()
    world.drive(instance_id)
    assert world.instance(instance_id).state == "running"
    return instance_id


def test_stop_start_reboot(world: World, driver: FakeDriver) -> None:
    instance_id = _running(world)
    mark = len(world.events())

    stop = world.act(instance_id, "stop")
    assert world.instance(instance_id).state == "stopping" and world.instance(instance_id).action_id == stop
    assert world.drive(instance_id) == ["stopping/begin", "stopping/waiting", "stopping/waiting"]
    assert world.instance(instance_id).state == "stopped"
    world.act(instance_id, "start")
    world.drive(instance_id)
    assert world.instance(instance_id).state == "running"
    world.act(instance_id, "reboot")
    world.drive(instance_id)
    assert world.instance(instance_id).state == "running"

    assert _types(world.events()[mark:]) == [
        "instance.state_changed:running→stopping",
        "instance.state_changed:stopping→stopped",
        "instance.stopped",
        "action.completed",
        "instance.state_changed:stopped→starting",
        "instance.state_changed:starting→running",
        "instance.running",
        "action.completed",
        "instance.state_changed:running→rebooting",
        "instance.state_changed:rebooting→running",
        "instance.running",
        "action.completed",
    ]
    host = world.instance(instance_id).host_name
    assert [(op, h) for op, h, _ in driver.begun()][1:] == [("stop", host), ("start", host), ("reboot", host)]
    assert [a.status for a in world.actions(instance_id)] == ["succeeded"] * 4
    assert world.allocation(instance_id) is not None  # a stopped instance keeps its capacity


@pytest.mark.parametrize("operation", ["start", "reboot", "stop"])
def test_a_failed_power_action_destroys_releases_and_fails(
    world: World, driver: FakeDriver, operation: Operation
) -> None:
    instance_id = _running(world)
    if operation == "start":
        world.act(instance_id, "stop")
        world.drive(instance_id)
    driver.outcome = lambda spec, op: host_error("nope") if op == operation else None
    world.act(instance_id, operation)
    world.drive(instance_id)
    instance = world.instance(instance_id)
    assert instance.state == "failed" and instance.state_reason == "nope" and instance.action_id is None
    assert world.allocation(instance_id) is None
    assert driver.begun()[-2:] == [(operation, instance.host_name, 1), ("destroy", instance.host_name, 1)]
    assert world.actions(instance_id)[-1].error_code == "host_error"
    assert world.events("instance.failed")[-1]["data"]["error_code"] == "host_error"
    assert world.events("allocation.released")[-1]["data"]["reason"] == f"{operation} failed (host_error)"


def test_terminate_destroys_releases_and_ends(world: World, driver: FakeDriver) -> None:
    instance_id = _running(world)
    mark = len(world.events())
    action_id = world.act(instance_id, "terminate")
    assert world.drive(instance_id) == [
        "terminating/destroy",
        "terminating/destroying",
        "terminating/destroying",
        "terminating/release",
    ]
    instance = world.instance(instance_id)
    assert instance.state == "terminated" and instance.terminated_at is not None and instance.action_id is None
    assert world.allocation(instance_id) is None
    assert _types(world.events()[mark:]) == [
        "instance.state_changed:running→terminating",
        "allocation.released",
        "instance.state_changed:terminating→terminated",
        "instance.terminated",
        "action.completed",
    ]
    assert world.events("allocation.released")[-1]["data"]["reason"] == "terminated"
    assert [a.id for a in world.actions(instance_id) if a.type == "terminate"] == [action_id]


def test_terminating_a_never_placed_instance_asks_no_host(world: World, driver: FakeDriver) -> None:
    instance_id = world.create(region="ams1")
    world.drive(instance_id)
    world.act(instance_id, "terminate")
    assert world.drive(instance_id) == ["terminating/destroy", "terminating/release"]
    assert world.instance(instance_id).state == "terminated" and driver.calls == []


def test_a_refused_destroy_is_retried_with_backoff_until_it_succeeds(world: World, driver: FakeDriver) -> None:
    instance_id = _running(world)
    refusals = iter([True, True])
    driver.outcome = lambda spec, op: (
        Progress(done=True, ok=False, percent=100, error_code="busy", error_message="disk busy")
        if op == "destroy" and next(refusals, False)
        else None
    )
    world.act(instance_id, "terminate")
    world.step(instance_id)  # destroy
    world.step(instance_id)  # destroying: not yet
    refused_at = world.now
    world.step(instance_id)  # destroying: refused
    refused = world.instance(instance_id)
    assert (refused.step, refused.step_errors, refused.last_error) == ("destroy", 1, "destroy failed: disk busy")
    assert refused.next_run_at == refused_at + timedelta(seconds=saga.backoff_seconds(world.settings, 1))
    world.drive(instance_id)
    assert world.instance(instance_id).state == "terminated"
    assert world.instance(instance_id).step_errors == 0 and world.instance(instance_id).last_error is None
    assert [op for op, _, _ in driver.begun()].count("destroy") == 3


def test_backoff_doubles_from_the_poll_interval_and_is_capped(world: World) -> None:
    slow = dataclasses.replace(world.settings, saga_poll_seconds=0.5)
    assert [saga.backoff_seconds(slow, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert saga.backoff_seconds(slow, 50) == saga.MAX_BACKOFF_SECONDS


# --- replays, locks, bad rows ----------------------------------------------------------------


def _lost_commit(world: World, instance_id: uuid.UUID) -> str | None:
    """Run the next step and roll it back, as if the worker died before its commit."""
    with world.sessions() as session:
        session.begin()
        name = saga.advance(session, instance_id, world.now, world.driver, world.settings)
        session.rollback()
    return name


def test_a_step_rolled_back_and_run_again_has_its_effects_once(world: World, driver: FakeDriver) -> None:
    instance_id = world.create()
    assert _lost_commit(world, instance_id) == "pending/claim"
    assert world.allocation(instance_id) is None and world.instance(instance_id).step == "claim"
    world.step(instance_id)  # claim, for real
    world.step(instance_id)  # hold
    assert _lost_commit(world, instance_id) == "provisioning/create"
    assert world.instance(instance_id).step == "create"
    world.drive(instance_id)
    assert world.instance(instance_id).state == "running"
    assert len(world.events("allocation.claimed")) == 1
    assert len(world.events("instance.state_changed")) == 2
    assert [op for op, _, _ in driver.begun()] == ["create", "create"]  # begin is idempotent: asked twice


def test_nothing_is_due_for_stable_missing_or_future_instances(world: World, driver: FakeDriver) -> None:
    instance_id = _running(world)
    with world.sessions() as session, session.begin():
        assert saga.advance(session, instance_id, world.now, driver, world.settings) is None
        assert saga.advance(session, uuid.uuid4(), world.now, driver, world.settings) is None
    other = world.create()
    with world.sessions() as session, session.begin():
        assert saga.advance(session, other, world.now - timedelta(seconds=5), driver, world.settings) is None


def test_a_contradictory_row_is_a_saga_error(world: World, driver: FakeDriver) -> None:
    instance_id = world.create()
    with world.sessions() as session, session.begin():
        session.execute(update(Instance).where(Instance.id == instance_id).values(step="teleport"))
    with world.sessions() as session, session.begin(), pytest.raises(saga.SagaError, match="pending/teleport"):
        saga.advance(session, instance_id, world.now, driver, world.settings)
    with world.sessions() as session, session.begin():
        session.execute(update(Instance).where(Instance.id == instance_id).values(step="claim", action_id=None))
    with world.sessions() as session, session.begin(), pytest.raises(saga.SagaError, match="no action holds it"):
        saga.advance(session, instance_id, world.now, driver, world.settings)


def test_the_lock_rereads_a_row_changed_between_read_and_write(world: World) -> None:
    """SQLite only: on PostgreSQL the row lock makes the interleaving impossible (the other
    writer would wait for us; the two-runner race test covers that backend)."""
    with world.sessions() as probe:
        if probe.get_bind().dialect.name != "sqlite":
            pytest.skip("the interleaving cannot happen under a row lock")
    instance_id = world.create()
    sneaked: list[int] = []
    with world.sessions() as session:

        @event.listens_for(session, "do_orm_execute")
        def interleave(state: Any) -> None:
            # Right before the first compare-and-set, another writer commits a change.
            if state.is_update and not sneaked:
                sneaked.append(1)
                with world.sessions() as other, other.begin():
                    other.execute(
                        update(Instance)
                        .where(Instance.id == instance_id)
                        .values(revision=Instance.revision + 1, name="renamed")
                    )

        with session.begin():
            locked = lock_instance(session, instance_id)
            assert locked is not None and locked.name == "renamed" and locked.revision == 2
    assert sneaked == [1]


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("host_error", "host_error"),
        ("Boot-Failed", "boot_failed"),
        ("e404", "e"),
        (None, "host_error"),
        ("--", "host_error"),
    ],
)
def test_error_codes_are_shaped_for_the_contract(given: str | None, code: str) -> None:
    assert saga.error_code(given) == code
