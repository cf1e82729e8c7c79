"""The inventory context's published interface: the only module other contexts import
(provisioning, per docs/compute.md; import-linter enforces the edge).

`ensure_catalogue` (start-up) and `load_sim_fleet` (hangar-admin) are re-exported from
catalogue.py for the runtime, which may import only this module too.

Everything takes the caller's Session and writes into the caller's transaction: the claim,
the quota usage and the `allocation.claimed` / `allocation.released` outbox events commit
together with the caller's own change, or not at all. Nothing here commits.

Quota defaults are arguments (`quota_vcpus`, `quota_gpus`; pass Settings.quota_vcpus /
quota_gpus): this module never reads the environment. They default to the Settings
defaults so tests and scripts need not pass them.

Launch rules (`resolve_launch`): an image must be `active`, its `min_disk_gb` must fit the
type's disk, and a GPU type needs a `gpu_ready` image — an image without the NVIDIA driver
would leave a customer paying for a GPU they cannot use, so it is refused up front.
CPU types take any active image whose disk fits, GPU-ready ones included (CUDA images run
CPU-only; they are just large).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, Uuid, bindparam, select
from sqlalchemy.orm import Session

from handlers.inventory import placement, quotas
from handlers.inventory.catalogue import ensure_catalogue, load_sim_fleet
from handlers.inventory.placement import ConcurrentClaims, NoCapacity
from handlers.inventory.tables import (
    RESOURCE_CLASSES,
    Allocation,
    Host,
    Image,
    InstanceType,
    InstanceTypeRegion,
    Region,
)
from hangar import outbox
from hangar.problems import Conflict, Unprocessable

__all__ = [
    "Claim",
    "ConcurrentClaims",
    "LaunchRefused",
    "LaunchSpec",
    "NoCapacity",
    "QuotaExceeded",
    "Resources",
    "allocation_of",
    "check_quota",
    "claim",
    "ensure_catalogue",
    "load_sim_fleet",
    "release",
    "resolve_launch",
]


@dataclass(frozen=True)
class Resources:
    """An amount of each resource class (e.g. what an organization's pending instances
    will claim)."""

    vcpus: int = 0
    memory_mb: int = 0
    disk_gb: int = 0
    gpus: int = 0

    def as_classes(self) -> dict[str, int]:
        return {"VCPU": self.vcpus, "MEMORY_MB": self.memory_mb, "DISK_GB": self.disk_gb, "GPU": self.gpus}


@dataclass(frozen=True)
class LaunchSpec:
    """What an instance of this type in this region needs (resolve_launch builds it)."""

    region: str
    instance_type: str
    image: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    gpus: int
    gpu_model: str | None
    price_per_hour: int  # integer minor units (cents) of `currency`
    currency: str

    @property
    def resources(self) -> Resources:
        return Resources(self.vcpus, self.memory_mb, self.disk_gb, self.gpus)


@dataclass(frozen=True)
class Claim:
    consumer_id: uuid.UUID  # the instance id
    host_id: uuid.UUID
    host_name: str
    region: str
    zone: str


class LaunchRefused(Unprocessable):
    """422: the launch names something unknown or unsuitable. `field` is the request field
    at fault ("region", "instance_type" or "image"); `errors` carries it as body.<field>."""

    def __init__(self, field: str, detail: str, *, slug: str) -> None:
        super().__init__(detail, slug=slug, errors=[{"location": f"body.{field}", "message": detail}])
        self.field = field


class QuotaExceeded(Conflict):
    """409 quota-exceeded; the detail names the limit and the usage."""

    slug = "quota-exceeded"
    title = "Quota Exceeded"


def resolve_launch(session: Session, *, region: str, instance_type: str, image: str) -> LaunchSpec:
    """The LaunchSpec for these slugs, or LaunchRefused (422) naming the first bad field:
    unknown-region, unknown-instance-type, unknown-image, instance-type-not-offered,
    image-not-suitable (deprecated, too small a disk for the image, or a GPU type with an
    image that is not GPU-ready)."""
    if session.get(Region, region) is None:
        raise LaunchRefused("region", f"There is no region {region!r}.", slug="unknown-region")
    kind = session.get(InstanceType, instance_type)
    if kind is None:
        raise LaunchRefused(
            "instance_type", f"There is no instance type {instance_type!r}.", slug="unknown-instance-type"
        )
    picture = session.get(Image, image)
    if picture is None:
        raise LaunchRefused("image", f"There is no image {image!r}.", slug="unknown-image")
    offered = session.scalar(
        select(InstanceTypeRegion.region).where(
            InstanceTypeRegion.instance_type == kind.slug, InstanceTypeRegion.region == region
        )
    )
    if offered is None:
        raise LaunchRefused(
            "instance_type",
            f"Instance type {kind.slug} is not offered in {region}.",
            slug="instance-type-not-offered",
        )
    unsuitable = image_unsuitable(picture, kind)
    if unsuitable:
        raise LaunchRefused("image", unsuitable, slug="image-not-suitable")
    return LaunchSpec(
        region=region,
        instance_type=kind.slug,
        image=picture.slug,
        vcpus=kind.vcpus,
        memory_mb=kind.memory_mb,
        disk_gb=kind.disk_gb,
        gpus=kind.gpus,
        gpu_model=kind.gpu_model,
        price_per_hour=kind.price_per_hour,
        currency=kind.currency,
    )


def image_unsuitable(image: Image, kind: InstanceType) -> str | None:
    """Why `image` cannot boot an instance of `kind`, or None (see the module doc)."""
    if image.status != "active":
        return f"Image {image.slug} is {image.status}; choose a current image."
    if image.min_disk_gb > kind.disk_gb:
        return f"Image {image.slug} needs a {image.min_disk_gb} GB disk; {kind.slug} has {kind.disk_gb} GB."
    if kind.gpus > 0 and not image.gpu_ready:
        return f"Instance type {kind.slug} has GPUs; image {image.slug} is not GPU-ready (no NVIDIA driver)."
    return None


def check_quota(
    session: Session,
    *,
    organization_id: uuid.UUID,
    launch: LaunchSpec,
    pending: Resources,
    quota_vcpus: int = quotas.DEFAULT_VCPUS,
    quota_gpus: int = quotas.DEFAULT_GPUS,
) -> None:
    """QuotaExceeded (409) if the organization's allocations plus `pending` (instances
    accepted but not yet claimed) plus this launch exceed its vCPU or GPU limit. A cheap,
    unlocked early answer for the API; `claim` enforces the quota again under a lock."""
    quota = quotas.get(session, organization_id, quotas.Limits(quota_vcpus, quota_gpus))
    short = quotas.shortfall(
        quota, vcpus=launch.vcpus, gpus=launch.gpus, pending_vcpus=pending.vcpus, pending_gpus=pending.gpus
    )
    if short:
        raise QuotaExceeded(short[0].upper() + short[1:])


_REQUIRED_TRAITS = select(InstanceType.required_traits).where(InstanceType.slug == bindparam("p_slug", type_=String))


def claim(
    session: Session,
    *,
    consumer_id: uuid.UUID,
    organization_id: uuid.UUID,
    launch: LaunchSpec,
    exclude_hosts: frozenset[uuid.UUID] = frozenset(),
    now: datetime,
    quota_vcpus: int = quotas.DEFAULT_VCPUS,
    quota_gpus: int = quotas.DEFAULT_GPUS,
    rng: random.Random | None = None,
) -> Claim:
    """Place the consumer on a host and allocate `launch`'s resources there; emits
    `allocation.claimed`. Idempotent per consumer: if it holds allocations already, that
    claim is returned (no second event, `exclude_hosts` ignored). Raises NoCapacity when no
    host fits or the organization's quota would be exceeded (`reason` "quota-exceeded"),
    and ConcurrentClaims (a NoCapacity) when every attempt lost a race."""
    quota_row = quotas.lock(session, organization_id, now)  # first: the lock, see quotas.py
    existing = allocation_of(session, consumer_id)
    if existing is not None:
        return existing
    quota = quotas.of_row(quota_row, quotas.Limits(quota_vcpus, quota_gpus))
    short = quotas.shortfall(quota, vcpus=launch.vcpus, gpus=launch.gpus)
    if short:
        raise NoCapacity(short[0].upper() + short[1:], reason="quota-exceeded")
    traits = session.scalar(_REQUIRED_TRAITS, {"p_slug": launch.instance_type})
    if traits is None:
        raise NoCapacity(f"There is no instance type {launch.instance_type!r}.", reason="unknown-instance-type")
    request = placement.Request.of(
        launch.region,
        vcpus=launch.vcpus,
        memory_mb=launch.memory_mb,
        disk_gb=launch.disk_gb,
        gpus=launch.gpus,
        required_traits=traits,
        exclude_hosts=exclude_hosts,
    )
    host = placement.place(session, request, consumer_id=consumer_id, organization_id=organization_id, now=now, rng=rng)
    quotas.add_usage(session, organization_id, vcpus=launch.vcpus, gpus=launch.gpus, now=now)
    outbox.record(
        session,
        "allocation.claimed",
        organization_id,
        {
            "consumer_id": str(consumer_id),
            "host_id": str(host.id),
            "host_name": host.name,
            "region": host.region,
            "zone": host.zone,
            "resources": request.resources(),
        },
        occurred_at=now,
    )
    return Claim(consumer_id=consumer_id, host_id=host.id, host_name=host.name, region=host.region, zone=host.zone)


def release(session: Session, *, consumer_id: uuid.UUID, now: datetime, reason: str = "released") -> bool:
    """Give back everything the consumer holds; emits `allocation.released` with `reason`.
    Idempotent: False (and no event) when it holds nothing — never claimed, or released
    already, also concurrently (the second release waits for the first and finds nothing)."""
    removed = placement.remove_allocations(session, consumer_id)
    if removed is None:
        return False
    quotas.lock(session, removed.organization_id, now)  # quota row before host row, as in claim
    quotas.add_usage(
        session,
        removed.organization_id,
        vcpus=-removed.amounts.get("VCPU", 0),
        gpus=-removed.amounts.get("GPU", 0),
        now=now,
    )
    host = placement.return_to_host(session, removed, now)
    outbox.record(
        session,
        "allocation.released",
        removed.organization_id,
        {
            "consumer_id": str(consumer_id),
            "host_id": str(host.id),
            "host_name": host.name,
            "region": host.region,
            "zone": host.zone,
            "resources": {rc: removed.amounts.get(rc, 0) for rc in RESOURCE_CLASSES},
            "reason": reason,
        },
        occurred_at=now,
    )
    return True


_ALLOCATION_OF = (
    select(Host.id, Host.name, Host.region, Host.zone)
    .join(Allocation, Allocation.host_id == Host.id)
    .where(Allocation.consumer_id == bindparam("p_consumer_id", type_=Uuid))
    .limit(1)
)


def allocation_of(session: Session, consumer_id: uuid.UUID) -> Claim | None:
    """Where the consumer's allocations are, or None."""
    row: Any = session.execute(_ALLOCATION_OF, {"p_consumer_id": consumer_id}).one_or_none()
    if row is None:
        return None
    return Claim(consumer_id=consumer_id, host_id=row.id, host_name=row.name, region=row.region, zone=row.zone)
