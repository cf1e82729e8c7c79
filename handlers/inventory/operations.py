"""Inventory & Placement operation handlers, one per operationId (see docs/architecture.md).

The catalogue (regions, instance types, images) is public; the operator operations need the
admin:* scopes (the security gate checks them before a handler runs). Logic lives in
services.py; these functions translate between rows/views and the generated models.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

from generated import models
from handlers.inventory import services
from handlers.inventory.placement import InventoryFields
from handlers.inventory.tables import Image, Region
from hangar.context import RequestContext
from hangar.pagination import Page, decode_cursor, encode_cursor

T = TypeVar("T")


# --- catalogue (public) ---------------------------------------------------------------------------


def list_regions(ctx: RequestContext, limit: int, cursor: str | None) -> models.RegionList:
    page = _page(services.list_regions(ctx.session), lambda r: r.slug, limit, cursor)
    return models.RegionList(data=[_region(r) for r in page.items], next_cursor=page.next_cursor)


def list_instance_types(
    ctx: RequestContext, limit: int, cursor: str | None, region: str | None
) -> models.InstanceTypeList:
    views = services.list_instance_types(ctx.session, region=region)
    page = _page(views, lambda v: v.instance_type.slug, limit, cursor)
    return models.InstanceTypeList(data=[_instance_type(v) for v in page.items], next_cursor=page.next_cursor)


def list_images(ctx: RequestContext, limit: int, cursor: str | None) -> models.ImageList:
    page = _page(services.list_images(ctx.session), lambda i: i.slug, limit, cursor)
    return models.ImageList(data=[_image(i) for i in page.items], next_cursor=page.next_cursor)


# --- operator -------------------------------------------------------------------------------------


def list_hosts(
    ctx: RequestContext, limit: int, cursor: str | None, region: str | None, state: models.HostState | None
) -> models.HostList:
    page = services.list_hosts(
        ctx.session, region=region, state=state.value if state else None, limit=limit, cursor=cursor
    )
    return models.HostList(data=[_host(v) for v in page.items], next_cursor=page.next_cursor)


def create_host(ctx: RequestContext, body: models.HostCreate) -> models.Host:
    inventories: dict[str, InventoryFields] = {}
    for given in body.inventories:
        rc = given.resource_class.value
        if rc in inventories:
            raise services._invalid(
                f"body.inventories.{rc}", "each resource class at most once", slug="invalid-inventory"
            )
        inventories[rc] = InventoryFields(
            total=given.total,
            reserved=given.reserved if given.reserved is not None else 0,
            min_unit=given.min_unit if given.min_unit is not None else 1,
            max_unit=given.max_unit,
            step_size=given.step_size if given.step_size is not None else 1,
            allocation_ratio=given.allocation_ratio,
        )
    view = services.create_host(
        ctx.session,
        name=body.name,
        region=body.region,
        zone=body.zone,
        inventories=inventories,
        traits=list(body.traits or []),
        now=ctx.now,
    )
    return _host(view)


def get_host(ctx: RequestContext, host_id: uuid.UUID) -> models.Host:
    return _host(services.get_host(ctx.session, host_id))


def update_host_inventory(
    ctx: RequestContext, host_id: uuid.UUID, resource_class: models.ResourceClass, body: models.InventoryUpdate
) -> models.Host:
    fields = body.model_dump(exclude_none=True, exclude={"generation"})
    view = services.update_inventory(
        ctx.session, host_id, resource_class.value, fields, expected_generation=body.generation, now=ctx.now
    )
    return _host(view)


def drain_host(ctx: RequestContext, host_id: uuid.UUID) -> models.Host:
    return _host(services.drain(ctx.session, host_id, now=ctx.now))


def mark_host_down(ctx: RequestContext, host_id: uuid.UUID) -> models.Host:
    return _host(services.mark_down(ctx.session, host_id, now=ctx.now))


def activate_host(ctx: RequestContext, host_id: uuid.UUID) -> models.Host:
    return _host(services.activate(ctx.session, host_id, now=ctx.now))


def get_capacity_report(ctx: RequestContext, region: str | None) -> models.CapacityReport:
    report = services.capacity_report(ctx.session, region)
    return models.CapacityReport(
        regions=[
            models.RegionCapacity(
                region=r.region,
                hosts_active=r.hosts.get("active", 0),
                hosts_draining=r.hosts.get("draining", 0),
                hosts_down=r.hosts.get("down", 0),
                resources=[
                    models.ResourceCapacity(
                        resource_class=models.ResourceClass(rc),
                        total=c.total,
                        reserved=c.reserved,
                        capacity=c.capacity,
                        used=c.used,
                        free=c.available,
                        utilisation=c.utilisation,
                    )
                    for rc, c in r.resources.items()
                ],
            )
            for r in report
        ],
        generated_at=ctx.now,
    )


# --- translation ----------------------------------------------------------------------------------


def _page(items: Sequence[T], key: Callable[[T], str], limit: int, cursor: str | None) -> Page[T]:
    """Keyset paging over a small, fully loaded, key-sorted list (the catalogue has tens of
    rows): the cursor is the last key seen, so a page boundary survives inserts."""
    ordered = sorted(items, key=key)
    if cursor is not None:
        (after,) = decode_cursor(cursor, 1)
        ordered = [item for item in ordered if key(item) > str(after)]
    chunk = ordered[:limit]
    more = len(ordered) > limit
    return Page(chunk, encode_cursor([key(chunk[-1])]) if more and chunk else None)


def _region(r: Region) -> models.Region:
    return models.Region(slug=r.slug, name=r.name, country=r.country, zones=list(r.zones))


def _instance_type(view: services.InstanceTypeView) -> models.InstanceType:
    t = view.instance_type
    return models.InstanceType(
        slug=t.slug,
        description=t.description,
        vcpus=t.vcpus,
        memory_mb=t.memory_mb,
        disk_gb=t.disk_gb,
        gpus=t.gpus,
        gpu_model=t.gpu_model,
        price_per_hour=t.price_per_hour,
        currency=t.currency,
        availability=[models.RegionAvailability(region=a.region, available=a.available) for a in view.regions],
    )


def _image(i: Image) -> models.Image:
    return models.Image(
        slug=i.slug,
        name=i.name,
        os_family=i.os_family,
        version=i.version,
        min_disk_gb=i.min_disk_gb,
        gpu_ready=i.gpu_ready,
        status=models.Status(i.status),
    )


def _host(view: services.HostView) -> models.Host:
    h = view.host
    return models.Host(
        id=h.id,
        name=h.name,
        region=h.region,
        zone=h.zone,
        state=models.HostState(h.state),
        traits=list(view.traits),
        generation=h.generation,
        inventories=[
            models.Inventory(
                resource_class=models.ResourceClass(inv.resource_class),
                total=inv.total,
                reserved=inv.reserved,
                min_unit=inv.min_unit,
                max_unit=inv.max_unit,
                step_size=inv.step_size,
                allocation_ratio=inv.allocation_ratio,
                capacity=inv.capacity,
                used=inv.used,
            )
            for inv in view.inventories
        ],
        allocations=view.consumers,
        created_at=h.created_at,
        updated_at=h.updated_at,
    )
