"""Storage use cases behind the API: the rules, on the tables, inside the caller's unit of work.
operations.py turns the rows returned here into the generated API models.

Long-running work is never done here: an accepted request records an action (or a pending
snapshot), moves the volume through the state machine, takes the volume's lock and points the
runner at the first step (`schedule`); the runner (runner.py) does the rest. Nothing here
commits: the runtime commits on success, so the state change, its events and the idempotency
record land together.

Tenant isolation has one shape: rows are loaded by (id, caller's organization) and anything
else is NotFound. Every volume about to change is loaded through locks.lock.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from handlers.provisioning import published as instances
from handlers.storage import states
from handlers.storage.locks import lock
from handlers.storage.tables import Snapshot, Volume, VolumeAction
from handlers.storage.wake import kick_after_commit
from hangar.context import RequestContext
from hangar.pagination import Page, paginate
from hangar.problems import Conflict, NotFound, Unprocessable

MAX_VOLUMES_PER_INSTANCE = 8
# Instances in these states cannot take a volume (the issue: not terminated/failed/terminating).
UNATTACHABLE_INSTANCE_STATES: frozenset[str] = frozenset({"terminating", "terminated", "failed"})


class ResourceLocked(Conflict):
    slug, title = "resource-locked", "Resource Locked"


class InvalidState(Conflict):
    slug, title = "invalid-state", "Invalid State"


class NameTaken(Conflict):
    slug, title = "volume-name-taken", "Volume Name Taken"


class RegionMismatch(Conflict):
    slug, title = "region-mismatch", "Region Mismatch"


class InstanceNotAttachable(Conflict):
    slug, title = "instance-not-attachable", "Instance Not Attachable"


class AttachmentLimit(Conflict):
    slug, title = "attachment-limit", "Attachment Limit Reached"


class CannotShrink(Conflict):
    slug, title = "cannot-shrink", "Volumes Only Grow"


class SnapshotInProgress(Conflict):
    slug, title = "snapshot-in-progress", "Snapshot In Progress"


# --- volumes -----------------------------------------------------------------------------


def list_volumes(
    ctx: RequestContext,
    *,
    limit: int,
    cursor: str | None,
    region: str | None,
    state: str | None,
    instance_id: uuid.UUID | None,
) -> Page[Volume]:
    query = select(Volume).where(Volume.organization_id == ctx.caller.organization_id)
    if region is not None:
        query = query.where(Volume.region == region)
    if state is not None:
        query = query.where(Volume.state == state)
    if instance_id is not None:
        query = query.where(Volume.instance_id == instance_id)
    return paginate(ctx.session, query, (Volume.created_at, Volume.id), limit=limit, cursor=cursor, descending=True)


def get_volume(ctx: RequestContext, volume_id: uuid.UUID) -> Volume:
    volume = ctx.session.scalar(
        select(Volume).where(Volume.id == volume_id, Volume.organization_id == ctx.caller.organization_id)
    )
    if volume is None:
        raise _volume_not_found(volume_id)
    return volume


def create_volume(
    ctx: RequestContext, *, name: str, region: str, size_gib: int, snapshot_id: uuid.UUID | None
) -> tuple[Volume, VolumeAction]:
    session, now, org = ctx.session, ctx.now, ctx.caller.organization_id
    if snapshot_id is not None:
        snapshot = session.scalar(select(Snapshot).where(Snapshot.id == snapshot_id, Snapshot.organization_id == org))
        if snapshot is None:
            raise Unprocessable(
                f"There is no snapshot {snapshot_id}.",
                slug="unknown-snapshot",
                errors=[{"location": "body.snapshot_id", "message": "no such snapshot"}],
            )
        if snapshot.state != states.SNAP_AVAILABLE:
            raise InvalidState(
                f"Snapshot {snapshot.id} is {snapshot.state}; only an available snapshot can be restored."
            )
        if snapshot.region != region:
            raise RegionMismatch(
                f"Snapshot {snapshot.id} is in {snapshot.region}; a volume restored from it must be in {snapshot.region}, "
                f"not {region}."
            )
        if size_gib < snapshot.size_gib:
            raise Unprocessable(
                f"Snapshot {snapshot.id} holds {snapshot.size_gib} GiB; the volume must be at least that large.",
                slug="volume-too-small",
                errors=[{"location": "body.size_gib", "message": f"must be >= {snapshot.size_gib}"}],
            )
    _refuse_taken_name(session, org, region, name)
    volume = Volume(
        id=uuid.uuid4(),
        organization_id=org,
        name=name,
        region=region,
        size_gib=size_gib,
        snapshot_id=snapshot_id,
        state=states.INITIAL,
        state_reason=None,
        instance_id=None,
        step_errors=0,
        revision=0,
        created_at=now,
        updated_at=now,
    )
    action = _new_action(volume, "create", now, size_gib=size_gib)
    volume.action_id = action.id
    schedule(volume, now)
    session.add(volume)
    try:
        session.flush()  # the unique live-name index: a concurrent create of the same name loses here
    except IntegrityError as exc:
        raise NameTaken(_name_taken_detail(name, region)) from exc
    session.add(action)
    kick_after_commit(session)
    return volume, action


def delete_volume(ctx: RequestContext, volume_id: uuid.UUID) -> VolumeAction:
    """Idempotent: a volume already deleting or deleted answers with its delete action."""
    volume = _lock(ctx, volume_id)
    if volume.state in (states.DELETING, states.DELETED):
        existing = ctx.session.scalar(
            select(VolumeAction)
            .where(VolumeAction.volume_id == volume.id, VolumeAction.type == "delete")
            .order_by(VolumeAction.created_at.desc(), VolumeAction.id.desc())
            .limit(1)
        )
        if existing is not None:
            return existing
    _refuse_if_locked(ctx.session, volume, "delete")
    _refuse_state(volume, "delete")
    pending = ctx.session.scalar(
        select(func.count())
        .select_from(Snapshot)
        .where(Snapshot.volume_id == volume.id, Snapshot.state == states.SNAP_PENDING)
    )
    if pending:
        raise SnapshotInProgress(
            f"Volume {volume.id} has a snapshot being taken; delete it once the snapshot is available or in error."
        )
    return _start(ctx.session, volume, "delete", ctx.now)


def start_action(
    ctx: RequestContext,
    volume_id: uuid.UUID,
    action_type: str,
    *,
    instance_id: uuid.UUID | None,
    size_gib: int | None,
) -> VolumeAction:
    volume = _lock(ctx, volume_id)
    _refuse_if_locked(ctx.session, volume, action_type)
    if action_type == "attach":
        return _attach(ctx, volume, instance_id)
    if action_type == "detach":
        _refuse_state(volume, "detach")
        if instance_id is not None and instance_id != volume.instance_id:
            raise InvalidState(
                f"Volume {volume.id} is attached to instance {volume.instance_id}, not {instance_id}; nothing detached."
            )
        return _start(ctx.session, volume, "detach", ctx.now, instance_id=volume.instance_id)
    if action_type == "resize":
        if size_gib is None:
            raise Unprocessable(
                "A resize needs `size_gib`, the new size in GiB.",
                slug="missing-size",
                errors=[{"location": "body.size_gib", "message": "required for resize"}],
            )
        _refuse_state(volume, "resize")
        if size_gib <= volume.size_gib:
            raise CannotShrink(
                f"Volume {volume.id} is {volume.size_gib} GiB; a resize must make it larger (asked for {size_gib} GiB). "
                "Volumes never shrink."
            )
        return _start(ctx.session, volume, "resize", ctx.now, size_gib=size_gib, previous_size_gib=volume.size_gib)
    raise ValueError(f"unknown volume action {action_type!r}")  # the contract's enum stops it first


def _attach(ctx: RequestContext, volume: Volume, instance_id: uuid.UUID | None) -> VolumeAction:
    session, org = ctx.session, ctx.caller.organization_id
    if instance_id is None:
        raise Unprocessable(
            "An attach needs `instance_id`, the instance to attach the volume to.",
            slug="missing-instance",
            errors=[{"location": "body.instance_id", "message": "required for attach"}],
        )
    if volume.state in states.ATTACHED:
        raise InvalidState(
            f"Volume {volume.id} is {volume.state} (instance {volume.instance_id}); a volume has one attachment at most. "
            "Detach it first."
        )
    _refuse_state(volume, "attach")
    instance = instances.instance_view(session, org, instance_id)
    if instance is None:
        raise NotFound(f"There is no instance {instance_id}.")
    if instance.region != volume.region:
        raise RegionMismatch(
            f"Volume {volume.id} is in {volume.region} and instance {instance.id} in {instance.region}; "
            "a volume attaches only to an instance in its own region."
        )
    if instance.state in UNATTACHABLE_INSTANCE_STATES:
        raise InstanceNotAttachable(f"Instance {instance.id} is {instance.state}; a volume cannot be attached to it.")
    _serialise_instance(session, instance_id)
    attached = session.scalar(select(func.count()).select_from(Volume).where(Volume.instance_id == instance_id)) or 0
    if attached >= MAX_VOLUMES_PER_INSTANCE:
        raise AttachmentLimit(
            f"Instance {instance.id} already has {attached} volumes attached (or attaching); "
            f"the limit is {MAX_VOLUMES_PER_INSTANCE}. Detach one first."
        )
    return _start(session, volume, "attach", ctx.now, instance_id=instance_id)


def _serialise_instance(session: Session, instance_id: uuid.UUID) -> None:
    """Two attaches to the same instance must not both pass the 8-volume count. On PostgreSQL
    a transaction-scoped advisory lock on the instance id serialises them; on SQLite the
    volume's lock (the transaction's first write) already holds the database's write lock."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(instance_id.bytes[:8], "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


# --- actions -----------------------------------------------------------------------------


def list_volume_actions(
    ctx: RequestContext, volume_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[VolumeAction]:
    volume = get_volume(ctx, volume_id)
    query = select(VolumeAction).where(VolumeAction.volume_id == volume.id)
    return paginate(
        ctx.session, query, (VolumeAction.created_at, VolumeAction.id), limit=limit, cursor=cursor, descending=True
    )


def get_volume_action(ctx: RequestContext, action_id: uuid.UUID) -> VolumeAction:
    action = ctx.session.scalar(
        select(VolumeAction).where(
            VolumeAction.id == action_id, VolumeAction.organization_id == ctx.caller.organization_id
        )
    )
    if action is None:
        raise NotFound(f"There is no volume action {action_id}.")
    return action


# --- snapshots ---------------------------------------------------------------------------


def create_snapshot(ctx: RequestContext, volume_id: uuid.UUID, *, name: str) -> Snapshot:
    volume = _lock(ctx, volume_id)
    if volume.state not in states.SNAPSHOTTABLE:
        raise InvalidState(
            f"Volume {volume.id} is {volume.state}; a snapshot can be taken of a volume that is "
            f"{', '.join(sorted(states.SNAPSHOTTABLE))}."
        )
    now = ctx.now
    snapshot = Snapshot(
        id=uuid.uuid4(),
        organization_id=volume.organization_id,
        volume_id=volume.id,
        name=name,
        region=volume.region,
        size_gib=volume.size_gib,
        state=states.SNAP_PENDING,
        state_reason=None,
        step="begin",
        step_started_at=now,
        next_run_at=now,
        step_errors=0,
        revision=0,
        created_at=now,
        updated_at=now,
    )
    ctx.session.add(snapshot)
    kick_after_commit(ctx.session)
    return snapshot


def list_snapshots(
    ctx: RequestContext,
    *,
    limit: int,
    cursor: str | None,
    volume_id: uuid.UUID | None,
    region: str | None,
    state: str | None,
) -> Page[Snapshot]:
    query = select(Snapshot).where(Snapshot.organization_id == ctx.caller.organization_id)
    if volume_id is not None:
        query = query.where(Snapshot.volume_id == volume_id)
    if region is not None:
        query = query.where(Snapshot.region == region)
    if state is not None:
        query = query.where(Snapshot.state == state)
    return paginate(ctx.session, query, (Snapshot.created_at, Snapshot.id), limit=limit, cursor=cursor, descending=True)


def get_snapshot(ctx: RequestContext, snapshot_id: uuid.UUID) -> Snapshot:
    snapshot = ctx.session.scalar(
        select(Snapshot).where(Snapshot.id == snapshot_id, Snapshot.organization_id == ctx.caller.organization_id)
    )
    if snapshot is None:
        raise NotFound(f"There is no snapshot {snapshot_id}.")
    return snapshot


def delete_snapshot(ctx: RequestContext, snapshot_id: uuid.UUID) -> Snapshot:
    snapshot = lock(ctx.session, Snapshot, snapshot_id, organization_id=ctx.caller.organization_id)
    if snapshot is None:
        raise NotFound(f"There is no snapshot {snapshot_id}.")
    if snapshot.state in (states.SNAP_DELETING, states.SNAP_DELETED):
        return snapshot
    if snapshot.state == states.SNAP_PENDING:
        raise InvalidState(f"Snapshot {snapshot.id} is still being taken; delete it once it is available or in error.")
    states.snapshot_transition(snapshot, states.SNAP_DELETING, now=ctx.now)
    snapshot.step, snapshot.step_started_at, snapshot.next_run_at = "begin", ctx.now, ctx.now
    snapshot.step_errors, snapshot.last_error = 0, None
    kick_after_commit(ctx.session)
    return snapshot


# --- used by the consumer and the runner (no request context) ------------------------------


def detach_for_instance(session: Session, volume: Volume, now: datetime, *, reason: str) -> VolumeAction | None:
    """The platform detaches `volume` (locked by the caller) from an instance that went away;
    None when it is not in_use or another action holds it (that action's end checks again)."""
    if volume.state != states.IN_USE or volume.action_id is not None:
        return None
    return _start(session, volume, "detach", now, instance_id=volume.instance_id, reason=reason)


def schedule(volume: Volume, now: datetime) -> None:
    """Point the runner at the first step of the action that just took `volume`'s lock."""
    volume.step = "begin"
    volume.step_started_at = now
    volume.next_run_at = now
    volume.step_errors = 0
    volume.last_error = None


# --- helpers -----------------------------------------------------------------------------


def _start(
    session: Session,
    volume: Volume,
    action_type: str,
    now: datetime,
    *,
    instance_id: uuid.UUID | None = None,
    size_gib: int | None = None,
    previous_size_gib: int | None = None,
    reason: str | None = None,
) -> VolumeAction:
    """Record the action, take the lock, move the volume to the action's state, schedule it."""
    action = _new_action(
        volume, action_type, now, instance_id=instance_id, size_gib=size_gib, previous=previous_size_gib, reason=reason
    )
    session.add(action)
    target = states.ACTIONS[action_type][volume.state]
    if target != volume.state:
        states.transition(volume, target, now=now)
    else:
        volume.updated_at = now
    if action_type == "attach":
        volume.instance_id = instance_id
    volume.action_id = action.id
    schedule(volume, now)
    session.flush()
    kick_after_commit(session)
    return action


def _new_action(
    volume: Volume,
    action_type: str,
    now: datetime,
    *,
    instance_id: uuid.UUID | None = None,
    size_gib: int | None = None,
    previous: int | None = None,
    reason: str | None = None,
) -> VolumeAction:
    return VolumeAction(
        id=uuid.uuid4(),
        organization_id=volume.organization_id,
        volume_id=volume.id,
        type=action_type,
        status="queued",
        progress=0,
        instance_id=instance_id,
        size_gib=size_gib,
        previous_size_gib=previous,
        reason=reason,
        created_at=now,
    )


def _volume_not_found(volume_id: uuid.UUID) -> NotFound:
    return NotFound(f"There is no volume {volume_id}.")


def _lock(ctx: RequestContext, volume_id: uuid.UUID) -> Volume:
    volume = lock(ctx.session, Volume, volume_id, organization_id=ctx.caller.organization_id)
    if volume is None:
        raise _volume_not_found(volume_id)
    return volume


def _refuse_if_locked(session: Session, volume: Volume, action_type: str) -> None:
    if volume.action_id is None:
        return
    running = session.get(VolumeAction, volume.action_id)
    what = f"its {running.type} action {running.id} is {running.status}" if running else "an action runs"
    raise ResourceLocked(f"Volume {volume.id} is locked: {what}. Wait for it to finish before `{action_type}`.")


def _refuse_state(volume: Volume, action_type: str) -> None:
    if volume.state in states.ACTIONS[action_type]:
        return
    accepted = states.actions_allowed(volume.state)
    needs = " or ".join(states.ACTIONS[action_type])
    raise InvalidState(
        f"Volume {volume.id} is {volume.state}; `{action_type}` needs it {needs}. "
        + (f"In state {volume.state} it accepts: {', '.join(accepted)}." if accepted else "It accepts no action now.")
    )


def _refuse_taken_name(session: Session, organization_id: uuid.UUID, region: str, name: str) -> None:
    taken = session.scalar(
        select(Volume.id).where(
            Volume.organization_id == organization_id,
            Volume.region == region,
            Volume.name == name,
            Volume.state != states.DELETED,
        )
    )
    if taken is not None:
        raise NameTaken(_name_taken_detail(name, region))


def _name_taken_detail(name: str, region: str) -> str:
    return f"A volume named {name!r} already exists in {region}; names are unique per region until a volume is deleted."
