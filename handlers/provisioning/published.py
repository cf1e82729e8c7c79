"""The provisioning context's published interface: what other contexts may know about an
instance without importing this context's tables (import-linter allows
`handlers.<ctx>.** -> handlers.provisioning.published` for terminal and storage only).

Terminal Gateway asks whether an instance can be opened (running, in the caller's
organization, on which host); Storage asks whether a volume can be attached to it (same
region, not being terminated). Both read through `instance_view`, in the caller's
transaction. Anything that must follow an instance over time (a session closed when it
stops, a volume detached when it is terminated) listens to provisioning's events instead.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers.provisioning.tables import Instance

__all__ = ["InstanceView", "instance_view", "instance_views"]


@dataclass(frozen=True)
class InstanceView:
    """A read-only snapshot of one instance, as other contexts may see it."""

    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    region: str
    zone: str | None
    state: str  # one of handlers.provisioning.states.STATES
    busy: bool  # an action (create, stop, …) is in flight
    host_id: uuid.UUID | None
    host_name: str | None
    image: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    gpus: int


def _view(row: Instance) -> InstanceView:
    return InstanceView(
        id=row.id,
        organization_id=row.organization_id,
        name=row.name,
        region=row.region,
        zone=row.zone,
        state=row.state,
        busy=row.action_id is not None,
        host_id=row.host_id,
        host_name=row.host_name,
        image=row.image,
        vcpus=row.vcpus,
        memory_mb=row.memory_mb,
        disk_gb=row.disk_gb,
        gpus=row.gpus,
    )


def instance_view(session: Session, organization_id: uuid.UUID, instance_id: uuid.UUID) -> InstanceView | None:
    """The instance if it exists in `organization_id` (another tenant's id is None, like a
    missing one: the caller answers 404 either way)."""
    row = session.scalar(
        select(Instance).where(Instance.id == instance_id, Instance.organization_id == organization_id)
    )
    return None if row is None else _view(row)


def instance_views(
    session: Session, organization_id: uuid.UUID, instance_ids: list[uuid.UUID]
) -> dict[uuid.UUID, InstanceView]:
    """Several instances of one organization at once (absent ids are left out)."""
    if not instance_ids:
        return {}
    rows = session.scalars(
        select(Instance).where(Instance.organization_id == organization_id, Instance.id.in_(instance_ids))
    )
    return {row.id: _view(row) for row in rows}
