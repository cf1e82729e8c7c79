"""Storage operation handlers, one per operationId (see docs/architecture.md and
docs/storage.md). Each calls a service and returns the generated response model; the rows →
models translation is in the `_`-prefixed helpers. Long-running work is never done here: the
answer is the action (or the pending snapshot) to poll."""

from __future__ import annotations

import uuid

from generated import models
from handlers.storage import services
from handlers.storage.tables import Snapshot, Volume, VolumeAction
from hangar.context import RequestContext


def list_volumes(
    ctx: RequestContext,
    limit: int,
    cursor: str | None,
    region: str | None,
    state: models.VolumeState | None,
    instance_id: uuid.UUID | None,
) -> models.VolumeList:
    page = services.list_volumes(
        ctx,
        limit=limit,
        cursor=cursor,
        region=region,
        state=state.value if state is not None else None,
        instance_id=instance_id,
    )
    return models.VolumeList(data=[_volume(v) for v in page.items], next_cursor=page.next_cursor)


def create_volume(ctx: RequestContext, body: models.VolumeCreate) -> models.VolumeLaunch:
    volume, action = services.create_volume(
        ctx, name=body.name, region=body.region, size_gib=body.size_gib, snapshot_id=body.snapshot_id
    )
    return models.VolumeLaunch(volume=_volume(volume), action=_action(action))


def get_volume(ctx: RequestContext, volume_id: uuid.UUID) -> models.Volume:
    return _volume(services.get_volume(ctx, volume_id))


def delete_volume(ctx: RequestContext, volume_id: uuid.UUID) -> models.VolumeAction:
    return _action(services.delete_volume(ctx, volume_id))


def list_volume_actions(
    ctx: RequestContext, volume_id: uuid.UUID, limit: int, cursor: str | None
) -> models.VolumeActionList:
    page = services.list_volume_actions(ctx, volume_id, limit=limit, cursor=cursor)
    return models.VolumeActionList(data=[_action(a) for a in page.items], next_cursor=page.next_cursor)


def create_volume_action(
    ctx: RequestContext, volume_id: uuid.UUID, body: models.VolumeActionRequest
) -> models.VolumeAction:
    action = services.start_action(
        ctx, volume_id, body.type.value, instance_id=body.instance_id, size_gib=body.size_gib
    )
    return _action(action)


def get_volume_action(ctx: RequestContext, volume_action_id: uuid.UUID) -> models.VolumeAction:
    return _action(services.get_volume_action(ctx, volume_action_id))


def create_snapshot(ctx: RequestContext, volume_id: uuid.UUID, body: models.SnapshotCreate) -> models.Snapshot:
    return _snapshot(services.create_snapshot(ctx, volume_id, name=body.name))


def list_snapshots(
    ctx: RequestContext,
    limit: int,
    cursor: str | None,
    volume_id: uuid.UUID | None,
    region: str | None,
    state: models.SnapshotState | None,
) -> models.SnapshotList:
    page = services.list_snapshots(
        ctx,
        limit=limit,
        cursor=cursor,
        volume_id=volume_id,
        region=region,
        state=state.value if state is not None else None,
    )
    return models.SnapshotList(data=[_snapshot(s) for s in page.items], next_cursor=page.next_cursor)


def get_snapshot(ctx: RequestContext, snapshot_id: uuid.UUID) -> models.Snapshot:
    return _snapshot(services.get_snapshot(ctx, snapshot_id))


def delete_snapshot(ctx: RequestContext, snapshot_id: uuid.UUID) -> models.Snapshot:
    return _snapshot(services.delete_snapshot(ctx, snapshot_id))


# --- rows → API models (explicit fields: the runner's bookkeeping never leaks) -------------


def _volume(volume: Volume) -> models.Volume:
    return models.Volume(
        id=volume.id,
        name=volume.name,
        state=models.VolumeState(volume.state),
        state_reason=volume.state_reason,
        region=volume.region,
        size_gib=volume.size_gib,
        instance_id=volume.instance_id,
        snapshot_id=volume.snapshot_id,
        locked=volume.action_id is not None,
        created_at=volume.created_at,
        updated_at=volume.updated_at,
        attached_at=volume.attached_at,
        deleted_at=volume.deleted_at,
    )


def _action(action: VolumeAction) -> models.VolumeAction:
    error = (
        models.VolumeActionError(code=action.error_code, message=action.error_message or action.error_code)
        if action.error_code
        else None
    )
    return models.VolumeAction(
        id=action.id,
        volume_id=action.volume_id,
        type=models.VolumeActionType(action.type),
        status=models.VolumeActionStatus(action.status),
        progress=action.progress,
        instance_id=action.instance_id,
        size_gib=action.size_gib,
        error=error,
        created_at=action.created_at,
        started_at=action.started_at,
        completed_at=action.completed_at,
    )


def _snapshot(snapshot: Snapshot) -> models.Snapshot:
    return models.Snapshot(
        id=snapshot.id,
        name=snapshot.name,
        state=models.SnapshotState(snapshot.state),
        state_reason=snapshot.state_reason,
        volume_id=snapshot.volume_id,
        region=snapshot.region,
        size_gib=snapshot.size_gib,
        created_at=snapshot.created_at,
        completed_at=snapshot.completed_at,
        deleted_at=snapshot.deleted_at,
    )
