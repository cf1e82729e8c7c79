"""The storage work, one step at a time: `advance_volume` and `advance_snapshot` each run ONE
step of a row's current work in the caller's transaction and record where it got to on the
row (`step`, `step_started_at`, `next_run_at`); the caller commits. Any process may run the
next step, and a step whose transaction did not commit is simply run again: the driver's
`begin` is idempotent and `poll` has no effect (docs/storage.md, ADR 0014).

Every piece of work has two steps — `begin` (ask the driver) and `wait` (poll it until done):

    volume action   create   creating → available (volume.created)   | error
                    attach   attaching → in_use (volume.attached)     | available (action failed)
                    detach   detaching → available (volume.detached)  | retried with backoff
                    resize   no state change (volume.resized)         | action failed, size kept
                    delete   deleting → deleted (volume.deleted)      | retried with backoff
    snapshot        pending → available (snapshot.completed)          | error
                    deleting → deleted (snapshot.deleted)             | retried with backoff

Detach and delete are never abandoned: a volume must always be able to leave an instance and
a tenant must always be able to stop paying for it. After every volume action the volume's
instance is looked at again: a volume left in_use on an instance that is terminating,
terminated or failed (it went away while the action ran) is detached at once.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from handlers.provisioning import published as instances
from handlers.storage import events, services, states
from handlers.storage.locks import lock
from handlers.storage.tables import Snapshot, Volume, VolumeAction
from hangar.config import Settings
from hangar.drivers import DriverError, Progress
from hangar.drivers.volumes import VolumeDriver, VolumeOperation, VolumeTask

log = logging.getLogger(__name__)

BEGIN = "begin"
WAIT = "wait"
# A host that neither finishes nor fails within this long is treated as failed.
OPERATION_TIMEOUT = timedelta(minutes=10)
MAX_BACKOFF_SECONDS = 60.0
# Work that must eventually happen: retried on failure instead of failing the action.
_PERSISTENT: frozenset[str] = frozenset({"detach", "delete"})


class StepError(RuntimeError):
    """A row's fields contradict each other (a bug, or a hand-edited row)."""


@dataclass
class _Outcome:
    done: bool
    ok: bool = False
    code: str | None = None
    message: str | None = None


def backoff_seconds(settings: Settings, errors: int) -> float:
    base = max(settings.storage_poll_seconds, 0.05)
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, errors - 1)))


def error_code(code: str | None) -> str:
    cleaned = re.sub(r"[^a-z_]+", "_", (code or "").lower()).strip("_")[:64]
    return cleaned or "host_error"


def _clip(text: str | None, default: str) -> str:
    text = (text or "").strip()
    return (text or default)[:500]


def _drive(
    row: Volume | Snapshot, task: VolumeTask, now: datetime, driver: VolumeDriver, settings: Settings
) -> tuple[_Outcome, int]:
    """Run the row's current step against the driver: (what came of it, percent)."""
    if row.step == BEGIN:
        try:
            driver.begin(task)
        except DriverError as exc:
            return _Outcome(True, False, exc.code, exc.message), 100
        row.step, row.step_started_at, row.next_run_at = WAIT, now, now
        return _Outcome(False), 0
    if row.step != WAIT:
        raise StepError(f"{type(row).__name__} {row.id}: no step {row.step!r}")
    since = row.step_started_at or now
    progress: Progress = driver.poll(task, since, now)
    if progress.done:
        return _Outcome(True, progress.ok, progress.error_code, progress.error_message), progress.percent
    if now - since > OPERATION_TIMEOUT:
        return _Outcome(
            True, False, "host_timeout", f"the host did not finish {task.operation} within {OPERATION_TIMEOUT}"
        ), 100
    row.next_run_at = now + timedelta(seconds=settings.storage_poll_seconds)
    return _Outcome(False), progress.percent


def _again_later(row: Volume | Snapshot, now: datetime, settings: Settings, why: str) -> None:
    row.step_errors += 1
    row.last_error = why[:4000]
    row.step, row.step_started_at = BEGIN, now
    row.next_run_at = now + timedelta(seconds=backoff_seconds(settings, row.step_errors))
    log.warning(
        "%s %s: %s; retrying in %.1fs", type(row).__name__, row.id, why, backoff_seconds(settings, row.step_errors)
    )


def _settle(row: Volume | Snapshot) -> None:
    row.step = row.step_started_at = row.next_run_at = None
    row.step_errors = 0
    row.last_error = None


# --- volumes ------------------------------------------------------------------------------


def due_volume(volume: Volume, now: datetime) -> bool:
    return volume.action_id is not None and volume.next_run_at is not None and volume.next_run_at <= now


def advance_volume(
    session: Session, volume_id: uuid.UUID, now: datetime, driver: VolumeDriver, settings: Settings
) -> str | None:
    """Run the volume's next step if one is due: "<action type>/<step>", or None."""
    volume = lock(session, Volume, volume_id)
    if volume is None or not due_volume(volume, now):
        return None
    action = session.get(VolumeAction, volume.action_id)
    if action is None or action.volume_id != volume.id:
        raise StepError(f"volume {volume.id}: its action {volume.action_id} does not exist")
    name = f"{action.type}/{volume.step}"
    if action.status == "queued":
        action.status, action.started_at = "running", now
    task = VolumeTask(
        operation=_operation(action.type),
        key=action.id,
        volume_id=volume.id,
        volume_name=volume.name,
        size_gib=action.size_gib or volume.size_gib,
        instance_id=action.instance_id,
        snapshot_id=volume.snapshot_id if action.type == "create" else None,
    )
    outcome, percent = _drive(volume, task, now, driver, settings)
    if not outcome.done:
        action.progress = max(action.progress, min(99, max(0, percent)))
        return name
    if outcome.ok:
        _succeed(session, volume, action, now)
    elif action.type in _PERSISTENT:
        _again_later(volume, now, settings, f"{action.type} failed: {outcome.message or outcome.code}")
        return name
    else:
        _fail(
            session, volume, action, now, error_code(outcome.code), _clip(outcome.message, f"the {action.type} failed")
        )
    _follow_instance(session, volume, now)
    return name


def _operation(action_type: str) -> VolumeOperation:
    operations: dict[str, VolumeOperation] = {
        "create": "create",
        "attach": "attach",
        "detach": "detach",
        "resize": "resize",
        "delete": "delete",
    }
    return operations[action_type]


def _complete(
    volume: Volume,
    action: VolumeAction,
    now: datetime,
    status: str,
    code: str | None = None,
    message: str | None = None,
) -> None:
    action.status = status
    action.completed_at = now
    if status == "succeeded":
        action.progress = 100
    action.error_code, action.error_message = code, message
    volume.action_id = None
    _settle(volume)


def _succeed(session: Session, volume: Volume, action: VolumeAction, now: datetime) -> None:
    if action.type == "create":
        states.transition(volume, states.AVAILABLE, now=now)
        events.volume_created(session, volume, now)
    elif action.type == "attach":
        if action.instance_id is None:
            raise StepError(f"volume action {action.id}: an attach without an instance")
        states.transition(volume, states.IN_USE, now=now)
        volume.attached_at = now
        events.volume_attached(session, volume, action.instance_id, now)
    elif action.type == "detach":
        instance_id = volume.instance_id or action.instance_id
        states.transition(volume, states.AVAILABLE, now=now)
        volume.instance_id, volume.attached_at = None, None
        if instance_id is not None:
            events.volume_detached(session, volume, instance_id, now, reason=action.reason)
    elif action.type == "resize":
        if action.size_gib is None:
            raise StepError(f"volume action {action.id}: a resize without a size")
        previous = volume.size_gib
        volume.size_gib = action.size_gib
        volume.updated_at = now
        events.volume_resized(session, volume, previous, now)
    elif action.type == "delete":
        states.transition(volume, states.DELETED, now=now)
        volume.deleted_at = now
        events.volume_deleted(session, volume, now)
    _complete(volume, action, now, "succeeded")


def _fail(session: Session, volume: Volume, action: VolumeAction, now: datetime, code: str, message: str) -> None:
    if action.type == "create":
        states.transition(volume, states.ERROR, now=now, reason=message)
    elif action.type == "attach":
        states.transition(volume, states.AVAILABLE, now=now)
        volume.instance_id, volume.attached_at = None, None
    else:  # resize: the volume keeps its size and state
        volume.updated_at = now
    _complete(volume, action, now, "failed", code, message)


def _follow_instance(session: Session, volume: Volume, now: datetime) -> None:
    """Detach a volume whose instance went away while an action held it (the
    instance.terminated consumer skips locked volumes and relies on this)."""
    if volume.state != states.IN_USE or volume.instance_id is None:
        return
    view = instances.instance_view(session, volume.organization_id, volume.instance_id)
    if view is None or view.state in services.UNATTACHABLE_INSTANCE_STATES:
        state = view.state if view is not None else "gone"
        services.detach_for_instance(session, volume, now, reason=f"instance {state}")


# --- snapshots ----------------------------------------------------------------------------


def due_snapshot(snapshot: Snapshot, now: datetime) -> bool:
    return (
        snapshot.state in states.SNAPSHOT_BUSY
        and snapshot.step is not None
        and snapshot.next_run_at is not None
        and snapshot.next_run_at <= now
    )


def advance_snapshot(
    session: Session, snapshot_id: uuid.UUID, now: datetime, driver: VolumeDriver, settings: Settings
) -> str | None:
    snapshot = lock(session, Snapshot, snapshot_id)
    if snapshot is None or not due_snapshot(snapshot, now):
        return None
    volume = session.get(Volume, snapshot.volume_id)
    if volume is None:
        raise StepError(f"snapshot {snapshot.id}: its volume {snapshot.volume_id} does not exist")
    taking = snapshot.state == states.SNAP_PENDING
    name = f"{'snapshot' if taking else 'delete_snapshot'}/{snapshot.step}"
    task = VolumeTask(
        operation="snapshot" if taking else "delete_snapshot",
        key=snapshot.id,
        volume_id=volume.id,
        volume_name=volume.name,
        size_gib=snapshot.size_gib,
        snapshot_id=snapshot.id,
    )
    outcome, _percent = _drive(snapshot, task, now, driver, settings)
    if not outcome.done:
        return name
    if outcome.ok and taking:
        states.snapshot_transition(snapshot, states.SNAP_AVAILABLE, now=now)
        snapshot.completed_at = now
        events.snapshot_completed(session, snapshot, now)
    elif outcome.ok:
        states.snapshot_transition(snapshot, states.SNAP_DELETED, now=now)
        snapshot.deleted_at = now
        events.snapshot_deleted(session, snapshot, now)
    elif taking:
        states.snapshot_transition(
            snapshot, states.SNAP_ERROR, now=now, reason=_clip(outcome.message, "the snapshot failed")
        )
        snapshot.completed_at = now
    else:
        _again_later(snapshot, now, settings, f"snapshot delete failed: {outcome.message or outcome.code}")
        return name
    _settle(snapshot)
    return name
