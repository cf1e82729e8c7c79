"""Storage operation handlers (temporary bodies while the context is being written)."""

from __future__ import annotations

import uuid

from generated import models
from hangar.context import RequestContext


def list_volumes(
    ctx: RequestContext,
    limit: int,
    cursor: str | None,
    region: str | None,
    state: models.VolumeState | None,
    instance_id: uuid.UUID | None,
) -> models.VolumeList:
    raise NotImplementedError


def create_volume(ctx: RequestContext, body: models.VolumeCreate) -> models.VolumeLaunch:
    raise NotImplementedError


def get_volume(ctx: RequestContext, volume_id: uuid.UUID) -> models.Volume:
    raise NotImplementedError


def delete_volume(ctx: RequestContext, volume_id: uuid.UUID) -> models.VolumeAction:
    raise NotImplementedError


def list_volume_actions(
    ctx: RequestContext, volume_id: uuid.UUID, limit: int, cursor: str | None
) -> models.VolumeActionList:
    raise NotImplementedError


def create_volume_action(
    ctx: RequestContext, volume_id: uuid.UUID, body: models.VolumeActionRequest
) -> models.VolumeAction:
    raise NotImplementedError


def get_volume_action(ctx: RequestContext, volume_action_id: uuid.UUID) -> models.VolumeAction:
    raise NotImplementedError


def create_snapshot(ctx: RequestContext, volume_id: uuid.UUID, body: models.SnapshotCreate) -> models.Snapshot:
    raise NotImplementedError


def list_snapshots(
    ctx: RequestContext,
    limit: int,
    cursor: str | None,
    volume_id: uuid.UUID | None,
    region: str | None,
    state: models.SnapshotState | None,
) -> models.SnapshotList:
    raise NotImplementedError


def get_snapshot(ctx: RequestContext, snapshot_id: uuid.UUID) -> models.Snapshot:
    raise NotImplementedError


def delete_snapshot(ctx: RequestContext, snapshot_id: uuid.UUID) -> models.Snapshot:
    raise NotImplementedError
