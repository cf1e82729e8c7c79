"""The provisioning saga: every long-running action on an instance, one step at a time.

`advance(session, instance_id, now, driver, settings)` performs ONE step of the instance's
current action in the caller's transaction and records where it got to on the instance row
(`step`, `step_started_at`, `next_run_at`). The caller commits; whoever calls next — the
same runner, another worker after a crash, the `instance.requested` consumer — carries on
from exactly that row. Why orchestration lives in the database rather than in a workflow
engine is ADR 0008.

Every step is safe to run twice, because a step is replayed whenever its transaction did
not commit (a crash, a lost lock, a database error):
- its own writes and outbox events commit together with the new `step`, or not at all;
- what it asks of others is idempotent: `published.claim` per consumer, `published.release`,
  the billing hooks per action, `HostDriver.begin`; `HostDriver.poll` has no effect at all.

The steps, per state (the instance's state says which action runs; `step` where it is):

    pending        claim ─► provisioning/hold          (NoCapacity → failed: placement_error)
    provisioning   hold ─► create ─► building ─► running
                   compensation, on a host failure or a refused hold, in reverse order:
                   undo_build (destroy) ─► undo_build_wait ─► undo_claim (release)
                   ─► undo_hold (void) ─► retry: pending/claim on another host (attempt + 1),
                   or failed: host_error once settings.saga_max_attempts hosts failed
    stopping, starting, rebooting
                   begin ─► waiting ─► stopped / running
                   on failure: undo_build ─► undo_build_wait ─► undo_claim ─► failed
    terminating    destroy ─► destroying ─► release ─► terminated

A step that is waiting on the host sets `next_run_at` one poll interval ahead; every other
step makes the next one due at once. An action's status goes `queued` → `running` when its
first step runs, and `succeeded`/`failed` in the step that ends it, which also releases the
instance's lock (`action_id`) and clears the saga's fields.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from handlers.inventory import published
from handlers.provisioning import events, hooks, states
from handlers.provisioning.locks import lock_instance
from handlers.provisioning.tables import Action, Instance
from hangar.config import Settings
from hangar.drivers import DriverError, HostDriver, InstanceSpec, Operation, Progress

log = logging.getLogger(__name__)

# Step names (stored in instances.step).
CLAIM = "claim"
HOLD = "hold"
CREATE = "create"
BUILDING = "building"
BEGIN = "begin"
WAITING = "waiting"
DESTROY = "destroy"
DESTROYING = "destroying"
RELEASE = "release"
UNDO_BUILD = "undo_build"
UNDO_BUILD_WAIT = "undo_build_wait"
UNDO_CLAIM = "undo_claim"
UNDO_HOLD = "undo_hold"

# Where an action's saga starts, by the transitional state the action put the instance in.
FIRST_STEP: dict[str, str] = {
    states.PENDING: CLAIM,
    states.STOPPING: BEGIN,
    states.STARTING: BEGIN,
    states.REBOOTING: BEGIN,
    states.TERMINATING: DESTROY,
}
# The host operation each power action runs.
_POWER: dict[str, Operation] = {states.STOPPING: "stop", states.STARTING: "start", states.REBOOTING: "reboot"}

# A host that neither finishes nor fails an operation within this long is treated as failed
# (the sim driver and the local driver finish in seconds; a real host in minutes).
OPERATION_TIMEOUT = timedelta(minutes=10)
# Backoff for a host that refused to destroy (compensation and terminate must get there
# eventually, so they are retried, never abandoned), doubling per consecutive refusal.
MAX_BACKOFF_SECONDS = 60.0


class SagaError(RuntimeError):
    """The instance's saga fields contradict each other (a bug, or a hand-edited row). The
    runner logs it and backs off; nothing is changed."""


@dataclass
class _Run:
    session: Session
    instance: Instance
    action: Action
    now: datetime
    driver: HostDriver
    settings: Settings
    erred: bool = False  # the step scheduled itself again after a refusal (keep step_errors)


def due(instance: Instance, now: datetime) -> bool:
    """Whether the saga has a step to run for `instance` at `now`."""
    return (
        instance.state in states.TRANSITIONAL
        and instance.next_run_at is not None
        and instance.next_run_at <= now
        and instance.step is not None
    )


def schedule(instance: Instance, now: datetime) -> None:
    """Point the saga at the first step of the action that just moved `instance` to its
    transitional state (services.py calls it with the new action's lock in place)."""
    instance.step = FIRST_STEP[instance.state]
    instance.step_started_at = now
    instance.next_run_at = now
    instance.step_errors = 0
    instance.last_error = None
    instance.fault_code = None
    instance.fault_message = None
    instance.fault_retryable = False


def advance(
    session: Session, instance_id: uuid.UUID, now: datetime, driver: HostDriver, settings: Settings
) -> str | None:
    """Run the instance's next saga step if one is due; "<state>/<step>" of the step run,
    or None when there was nothing to do (not due, not transitional, or no such instance)."""
    instance = lock_instance(session, instance_id)
    if instance is None or not due(instance, now):
        return None
    name = f"{instance.state}/{instance.step}"
    step = _STEPS.get((instance.state, instance.step or ""))
    if step is None:
        raise SagaError(f"instance {instance.id}: no saga step {name}")
    if instance.action_id is None:
        raise SagaError(f"instance {instance.id} is {instance.state} (step {instance.step}) but no action holds it")
    action = session.get(Action, instance.action_id)
    if action is None or action.instance_id != instance.id:
        raise SagaError(f"instance {instance.id}: its action {instance.action_id} does not exist")
    if action.status == "queued":
        action.status = "running"
        action.started_at = now
    run = _Run(session, instance, action, now, driver, settings)
    step(run)
    if not run.erred:
        instance.step_errors = 0
        instance.last_error = None
    return name


# --- helpers ---------------------------------------------------------------------------


def _clip(text: str | None, default: str) -> str:
    text = (text or "").strip()
    return (text or default)[:500]


def _spec(instance: Instance) -> InstanceSpec:
    if instance.host_id is None or instance.host_name is None:
        raise SagaError(f"instance {instance.id} has no host to ask")
    return InstanceSpec(
        instance_id=instance.id,
        organization_id=instance.organization_id,
        name=instance.name,
        host_id=instance.host_id,
        host_name=instance.host_name,
        attempt=instance.attempt,
        image=instance.image,
        vcpus=instance.vcpus,
        memory_mb=instance.memory_mb,
        disk_gb=instance.disk_gb,
        gpus=instance.gpus,
    )


def launch_of(instance: Instance) -> published.LaunchSpec:
    """The launch as it was resolved at create time (the row keeps a copy of it)."""
    return published.LaunchSpec(
        region=instance.region,
        instance_type=instance.instance_type,
        image=instance.image,
        vcpus=instance.vcpus,
        memory_mb=instance.memory_mb,
        disk_gb=instance.disk_gb,
        gpus=instance.gpus,
        gpu_model=instance.gpu_model,
        price_per_hour=instance.price_per_hour,
        currency=instance.currency,
    )


def _hold_request(run: _Run) -> hooks.HoldRequest:
    i = run.instance
    return hooks.HoldRequest(
        organization_id=i.organization_id,
        instance_id=i.id,
        action_id=run.action.id,
        instance_type=i.instance_type,
        price_per_hour=i.price_per_hour,
        currency=i.currency,
    )


def _next(run: _Run, step: str) -> None:
    """Go on to `step`, due at once."""
    run.instance.step = step
    run.instance.step_started_at = run.now
    run.instance.next_run_at = run.now


def _wait(run: _Run) -> None:
    """Stay on this step and look again one poll interval from now."""
    run.instance.next_run_at = run.now + timedelta(seconds=run.settings.saga_poll_seconds)


def backoff_seconds(settings: Settings, errors: int) -> float:
    """Delay after the `errors`-th consecutive failure of a step: a poll interval, doubling."""
    base = max(settings.saga_poll_seconds, 0.05)
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, errors - 1)))


def _again_later(run: _Run, step: str, why: str) -> None:
    """The host refused something that must eventually happen (a destroy): go back to
    `step` after a backoff instead of giving up."""
    i = run.instance
    i.step_errors += 1
    i.last_error = why[:4000]
    i.step = step
    i.step_started_at = run.now
    i.next_run_at = run.now + timedelta(seconds=backoff_seconds(run.settings, i.step_errors))
    run.erred = True
    log.warning("instance %s: %s; retrying %s in %.1fs", i.id, why, step, backoff_seconds(run.settings, i.step_errors))


def _poll(run: _Run, operation: Operation) -> Progress | None:
    """The host's answer once `operation` has finished, else None (progress recorded, the
    step rescheduled one poll interval ahead). Overdue counts as failed."""
    i = run.instance
    since = i.step_started_at or run.now
    progress = run.driver.poll(_spec(i), operation, since, run.now)
    if progress.done:
        return progress
    if run.now - since > OPERATION_TIMEOUT:
        code = "boot_timeout" if operation in ("create", "start", "reboot") else "host_timeout"
        return Progress(
            done=True,
            ok=False,
            percent=progress.percent,
            error_code=code,
            error_message=f"host {i.host_name} did not finish {operation} within {OPERATION_TIMEOUT}",
        )
    run.action.progress = max(run.action.progress, min(99, max(0, progress.percent)))
    _wait(run)
    return None


def error_code(code: str | None) -> str:
    """A driver's or hook's code in the contract's shape (`^[a-z_]+$`, ≤ 64): an event that
    broke its schema would never be published, so a stray character must not get that far."""
    cleaned = re.sub(r"[^a-z_]+", "_", (code or "").lower()).strip("_")[:64]
    return cleaned or "host_error"


def _fault(run: _Run, code: str | None, message: str | None, *, retryable: bool, default: str) -> None:
    """Remember why this action is being compensated (read by `_settle` at the end)."""
    run.instance.fault_code = error_code(code)
    run.instance.fault_message = _clip(message, default)
    run.instance.fault_retryable = retryable


def _complete(run: _Run, status: str, code: str | None = None, message: str | None = None) -> None:
    """End the action, announce it and unlock the instance."""
    a, i = run.action, run.instance
    a.status = status
    a.completed_at = run.now
    if status == "succeeded":
        a.progress = 100
    a.error_code = code
    a.error_message = message
    events.action_completed(run.session, a, run.now)
    i.action_id = None
    i.step = None
    i.step_started_at = None
    i.next_run_at = None
    i.fault_code = None
    i.fault_message = None
    i.fault_retryable = False


def _fail(run: _Run, code: str, message: str) -> None:
    """Everything the instance held is already given back: say so and end the action."""
    message = _clip(message, code)
    states.transition(run.session, run.instance, states.FAILED, now=run.now, reason=message, action_id=run.action.id)
    events.instance_failed(run.session, run.instance, run.now, code=code, message=message)
    _complete(run, "failed", code, message)


def _became_running(run: _Run) -> None:
    i = run.instance
    states.transition(run.session, i, states.RUNNING, now=run.now, action_id=run.action.id)
    if i.launched_at is None:
        i.launched_at = run.now
    events.instance_running(run.session, i, run.now)
    _complete(run, "succeeded")


# --- create -------------------------------------------------------------------------------


def _claim(run: _Run) -> None:
    i = run.instance
    try:
        placed = published.claim(
            run.session,
            consumer_id=i.id,
            organization_id=i.organization_id,
            launch=launch_of(i),
            exclude_hosts=frozenset(uuid.UUID(h) for h in i.tried_hosts),
            now=run.now,
            quota_vcpus=run.settings.quota_vcpus,
            quota_gpus=run.settings.quota_gpus,
        )
    except published.ConcurrentClaims as exc:
        # Capacity may remain; only the race was lost. Not the tenant's failure: try again.
        _again_later(run, CLAIM, exc.message)
        return
    except published.NoCapacity as exc:
        # Nothing to compensate: this attempt holds nothing yet, earlier ones were undone.
        code, message = _placement_failure(i, exc)
        _fail(run, code, message)
        return
    i.host_id, i.host_name, i.zone = placed.host_id, placed.host_name, placed.zone
    states.transition(run.session, i, states.PROVISIONING, now=run.now, action_id=run.action.id)
    _next(run, HOLD)


def _placement_failure(instance: Instance, exc: published.NoCapacity) -> tuple[str, str]:
    if exc.reason == "quota-exceeded":
        return "quota_exceeded", exc.message
    if instance.attempt > 1:
        # A retry found no other host: the create failed because hosts failed it.
        return "host_error", f"{instance.fault_message or 'the host failed'}; no other host can take it: {exc.message}"
    return "placement_error", exc.message


def _hold(run: _Run) -> None:
    try:
        hooks.billing_hold(run.session, _hold_request(run), now=run.now)
    except hooks.HoldRefused as refusal:
        _fault(run, refusal.code, refusal.message, retryable=False, default="billing refused the launch")
        _next(run, UNDO_CLAIM)  # nothing was built or held: undo the claim only
        return
    _next(run, CREATE)


def _create(run: _Run) -> None:
    try:
        run.driver.begin(_spec(run.instance), "create")
    except DriverError as exc:
        _fault(run, exc.code, exc.message, retryable=True, default="the host could not begin the create")
        _next(run, UNDO_BUILD)  # it may have started something: destroy is harmless if not
        return
    _next(run, BUILDING)  # step_started_at = now: what the build is polled `since`


def _building(run: _Run) -> None:
    progress = _poll(run, "create")
    if progress is None:
        return
    if progress.ok:
        _became_running(run)
        return
    _fault(run, progress.error_code, progress.error_message, retryable=True, default="the host failed the create")
    _next(run, UNDO_BUILD)


# --- compensation (create and power actions) ----------------------------------------------


def _begin_destroy(run: _Run, *, step: str, waiting: str, then: str) -> None:
    """Ask the host to destroy the instance (step `step`), then wait in `waiting`; an
    instance never placed has nothing to destroy and goes straight to `then`. A destroy the
    host refuses is retried from `step` with backoff, never abandoned."""
    if run.instance.host_id is None:
        _next(run, then)
        return
    try:
        run.driver.begin(_spec(run.instance), "destroy")
    except DriverError as exc:
        _again_later(run, step, f"destroy could not begin: {exc.message}")
        return
    _next(run, waiting)


def _await_destroy(run: _Run, *, retry: str, then: str) -> None:
    progress = _poll(run, "destroy")
    if progress is None:
        return
    if not progress.ok:
        _again_later(run, retry, f"destroy failed: {progress.error_message or progress.error_code}")
        return
    _next(run, then)


def _undo_build(run: _Run) -> None:
    _begin_destroy(run, step=UNDO_BUILD, waiting=UNDO_BUILD_WAIT, then=UNDO_CLAIM)


def _undo_build_wait(run: _Run) -> None:
    _await_destroy(run, retry=UNDO_BUILD, then=UNDO_CLAIM)


def _undo_claim(run: _Run) -> None:
    i = run.instance
    published.release(
        run.session, consumer_id=i.id, now=run.now, reason=f"{run.action.type} failed ({i.fault_code})"[:200]
    )
    if i.state == states.PROVISIONING:
        _next(run, UNDO_HOLD)
    else:
        _settle(run)


def _undo_hold(run: _Run) -> None:
    hooks.billing_void(run.session, _hold_request(run), reason=run.instance.fault_code or "failed", now=run.now)
    _settle(run)


def _settle(run: _Run) -> None:
    """Compensation is done: retry the create on another host, or fail the instance."""
    i = run.instance
    if i.state == states.PROVISIONING and i.fault_retryable and i.attempt < run.settings.saga_max_attempts:
        failed_on = i.host_name
        i.tried_hosts = [*i.tried_hosts, str(i.host_id)]  # a new list: JSON columns track assignment
        i.attempt += 1
        i.host_id = i.host_name = i.zone = None
        states.transition(
            run.session,
            i,
            states.PENDING,
            now=run.now,
            reason=f"attempt {i.attempt - 1} failed on {failed_on} ({i.fault_code}); retrying on another host",
            action_id=run.action.id,
        )
        _next(run, CLAIM)
        return
    code = i.fault_code or "host_error"
    message = i.fault_message or "the host failed"
    if i.state == states.PROVISIONING and i.fault_retryable and i.attempt > 1:
        message = f"{message} (after {i.attempt} attempts on different hosts)"
    _fail(run, code, message)


# --- stop, start, reboot ------------------------------------------------------------------


def _begin_power(run: _Run) -> None:
    operation = _POWER[run.instance.state]
    try:
        run.driver.begin(_spec(run.instance), operation)
    except DriverError as exc:
        _fault(run, exc.code, exc.message, retryable=False, default=f"the host could not begin the {operation}")
        _next(run, UNDO_BUILD)
        return
    _next(run, WAITING)


def _wait_power(run: _Run) -> None:
    i = run.instance
    operation = _POWER[i.state]
    progress = _poll(run, operation)
    if progress is None:
        return
    if not progress.ok:
        # Never leave it half-stopped or half-booted on the host while its capacity is
        # released: destroy, release, fail (like a failed create with no retry).
        _fault(run, progress.error_code, progress.error_message, retryable=False, default=f"the {operation} failed")
        _next(run, UNDO_BUILD)
        return
    if i.state == states.STOPPING:
        why = i.state_reason  # the platform's reason for a stop it started (None for a tenant's)
        states.transition(run.session, i, states.STOPPED, now=run.now, action_id=run.action.id, reason=why)
        events.instance_stopped(run.session, i, run.now, reason=why)
        _complete(run, "succeeded")
    else:
        _became_running(run)


# --- terminate ----------------------------------------------------------------------------


def _destroy(run: _Run) -> None:
    _begin_destroy(run, step=DESTROY, waiting=DESTROYING, then=RELEASE)


def _destroying(run: _Run) -> None:
    _await_destroy(run, retry=DESTROY, then=RELEASE)


def _release(run: _Run) -> None:
    i = run.instance
    published.release(run.session, consumer_id=i.id, now=run.now, reason="terminated")
    states.transition(run.session, i, states.TERMINATED, now=run.now, action_id=run.action.id)
    i.terminated_at = run.now
    events.instance_terminated(run.session, i, run.now)
    _complete(run, "succeeded")


_Step = Callable[[_Run], None]
_FAILABLE = (states.PROVISIONING, states.STOPPING, states.STARTING, states.REBOOTING)

_STEPS: dict[tuple[str, str], _Step] = {
    (states.PENDING, CLAIM): _claim,
    (states.PROVISIONING, HOLD): _hold,
    (states.PROVISIONING, CREATE): _create,
    (states.PROVISIONING, BUILDING): _building,
    (states.PROVISIONING, UNDO_HOLD): _undo_hold,
    **{(state, UNDO_BUILD): _undo_build for state in _FAILABLE},
    **{(state, UNDO_BUILD_WAIT): _undo_build_wait for state in _FAILABLE},
    **{(state, UNDO_CLAIM): _undo_claim for state in _FAILABLE},
    **{(state, BEGIN): _begin_power for state in _POWER},
    **{(state, WAITING): _wait_power for state in _POWER},
    (states.TERMINATING, DESTROY): _destroy,
    (states.TERMINATING, DESTROYING): _destroying,
    (states.TERMINATING, RELEASE): _release,
}

STEPS: frozenset[tuple[str, str]] = frozenset(_STEPS)
