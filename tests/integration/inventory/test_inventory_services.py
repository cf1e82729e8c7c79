"""The services behind the HTTP operations: catalogue reads with availability, the
operator's hosts, inventories, traits, states and capacity report."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from inventory_support import NOW, add_host, add_type, check_invariants
from sqlalchemy.orm import Session

from handlers.inventory import services
from handlers.inventory.placement import InventoryFields
from handlers.inventory.published import Claim, NoCapacity, claim, resolve_launch
from hangar.problems import BadRequest, Conflict, NotFound, Unprocessable

pytestmark = pytest.mark.postgres


def _claim(session: Session, instance_type: str, exclude_hosts: frozenset[uuid.UUID] = frozenset()) -> Claim:
    launch = resolve_launch(session, region="fra1", instance_type=instance_type, image="ubuntu-24.04")
    result = claim(
        session,
        consumer_id=uuid.uuid4(),
        organization_id=uuid.uuid4(),
        launch=launch,
        exclude_hosts=exclude_hosts,
        now=NOW,
    )
    session.commit()
    return result


# --- catalogue ------------------------------------------------------------------------------


def test_catalogue_reads(session: Session) -> None:
    assert [r.slug for r in services.list_regions(session)] == ["ams1", "fra1", "nyc1"]
    assert services.get_region(session, "fra1").zones == ["fra1-a", "fra1-b", "fra1-c"]
    assert "pytorch-2.5-cuda12" in [i.slug for i in services.list_images(session, status="active")]
    assert services.list_images(session, status="deprecated") == []
    assert services.get_image(session, "debian-12").os_family == "debian"
    for missing in (
        lambda: services.get_region(session, "mars1"),
        lambda: services.get_image(session, "nope"),
        lambda: services.get_instance_type(session, "nope"),
    ):
        with pytest.raises(NotFound):
            missing()
    with pytest.raises(Unprocessable):
        services.list_images(session, status="weird")


def test_instance_types_say_where_one_could_be_placed_now(session: Session) -> None:
    views = {v.instance_type.slug: v for v in services.list_instance_types(session)}
    assert len(views) == 8
    # No hosts yet: offered everywhere it is offered, available nowhere.
    assert [(a.region, a.available) for a in views["gpu-a100x1"].regions] == [("ams1", False), ("nyc1", False)]
    add_host(session, "cpu", vcpu=1, vcpu_ratio=1.0, memory_mb=4096, disk_gb=100)
    session.commit()
    views = {v.instance_type.slug: v for v in services.list_instance_types(session, region="fra1")}
    assert "gpu-a100x1" not in views  # not offered in fra1
    fra1 = {slug: next(a.available for a in v.regions if a.region == "fra1") for slug, v in views.items()}
    assert fra1 == {
        "cpu-1": True,
        "cpu-2": False,
        "cpu-4": False,
        "cpu-8": False,
        "mem-4": False,
        "gpu-h100x1": False,
        "gpu-h100x8": False,
    }
    _claim(session, "cpu-1")  # the host is full now
    assert not next(a.available for a in services.get_instance_type(session, "cpu-1").regions if a.region == "fra1")


# --- hosts ----------------------------------------------------------------------------------


def test_create_host_validates_and_builds_the_summary(session: Session) -> None:
    view = services.create_host(
        session,
        name="h1",
        region="fra1",
        zone="fra1-b",
        inventories={
            "VCPU": InventoryFields(total=32, reserved=2),
            "MEMORY_MB": InventoryFields(total=131072, reserved=4096, allocation_ratio=1.5),
            "GPU": InventoryFields(total=8),
        },
        traits=["gpu:h100", "nvme", "nvme"],
        now=NOW,
    )
    assert view.traits == ["gpu:h100", "nvme"]
    assert [i.resource_class for i in view.inventories] == ["VCPU", "MEMORY_MB", "GPU"]
    vcpu, memory, gpu = view.inventories
    assert (vcpu.capacity, vcpu.max_unit, vcpu.allocation_ratio, vcpu.free) == (120, 32, 4.0, 120)
    assert memory.capacity == 190464  # (131072 − 4096) × 1.5
    assert (gpu.capacity, gpu.allocation_ratio) == (8, 1.0)
    host = view.host
    assert (host.state, host.generation, host.has_gpu, host.vcpu_free, host.disk_gb_free) == ("active", 0, True, 120, 0)
    assert view.consumers == 0

    with pytest.raises(Conflict) as taken:
        services.create_host(
            session, name="h1", region="fra1", zone="fra1-a", inventories={"VCPU": InventoryFields(total=1)}, now=NOW
        )
    assert taken.value.slug == "host-name-taken"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"region": "mars1"}, "unknown-region"),
        ({"zone": "ams1-a"}, "unknown-zone"),
        ({"inventories": {"VCPU": InventoryFields(total=4, reserved=5)}}, "invalid-inventory"),
        ({"inventories": {"VCPU": InventoryFields(total=-1)}}, "invalid-inventory"),
        ({"inventories": {"VCPU": InventoryFields(total=4, min_unit=0)}}, "invalid-inventory"),
        ({"inventories": {"VCPU": InventoryFields(total=4, min_unit=4, max_unit=2)}}, "invalid-inventory"),
        ({"inventories": {"VCPU": InventoryFields(total=4, step_size=0)}}, "invalid-inventory"),
        ({"inventories": {"VCPU": InventoryFields(total=4, allocation_ratio=0.0)}}, "invalid-inventory"),
        ({"inventories": {"FPGA": InventoryFields(total=4)}}, "invalid-inventory"),
        ({"state": "sleeping"}, "invalid-host-state"),
    ]
    for override, slug in cases:
        args: dict[str, Any] = {"name": "h2", "region": "fra1", "zone": "fra1-a", "inventories": {}, **override}
        with pytest.raises(Unprocessable) as invalid:
            services.create_host(session, now=NOW, **args)
        assert invalid.value.slug == slug, override
    with pytest.raises(Unprocessable) as located:
        services.create_host(
            session,
            name="h2",
            region="fra1",
            zone="fra1-a",
            inventories={"DISK_GB": InventoryFields(total=4, reserved=9)},
            now=NOW,
        )
    assert located.value.errors == [
        {"location": "body.inventories.DISK_GB.reserved", "message": "must not exceed total (4)"}
    ]


def test_list_hosts_pages_by_name_and_filters(session: Session) -> None:
    for name, region in [("c", "fra1"), ("a", "fra1"), ("b", "ams1"), ("d", "fra1"), ("e", "fra1")]:
        add_host(session, name, region=region)
    session.commit()
    services.drain(session, services.list_hosts(session, limit=10, cursor=None).items[3].host.id, now=NOW)  # d
    first = services.list_hosts(session, limit=2, cursor=None)
    assert [v.host.name for v in first.items] == ["a", "b"] and first.next_cursor
    second = services.list_hosts(session, limit=2, cursor=first.next_cursor)
    third = services.list_hosts(session, limit=2, cursor=second.next_cursor)
    assert [v.host.name for v in second.items + third.items] == ["c", "d", "e"] and third.next_cursor is None
    fra1 = services.list_hosts(session, region="fra1", limit=10, cursor=None)
    assert [v.host.name for v in fra1.items] == ["a", "c", "d", "e"]
    assert [v.host.name for v in services.list_hosts(session, state="draining", limit=10, cursor=None).items] == ["d"]
    assert all(len(v.inventories) == 3 for v in fra1.items)
    with pytest.raises(BadRequest):
        services.list_hosts(session, limit=2, cursor="garbage!")
    with pytest.raises(Unprocessable):
        services.list_hosts(session, state="gone", limit=2, cursor=None)


def test_get_host_shows_usage(session: Session) -> None:
    host_id = add_host(session, "h")
    add_type(session, "t-2", vcpus=2, memory_mb=2048)
    session.commit()
    _claim(session, "t-2")
    _claim(session, "t-2")
    view = services.get_host(session, host_id)
    assert view.consumers == 2
    vcpu, memory, _disk = view.inventories
    assert (vcpu.used, vcpu.free, memory.used) == (4, 60, 4096)
    assert view.host.generation == 2
    with pytest.raises(NotFound) as missing:
        services.get_host(session, uuid.uuid4())
    assert missing.value.slug == "host-not-found"


def test_update_inventory_compares_generations_and_refuses_to_strand_allocations(session: Session) -> None:
    host_id = add_host(session, "h", vcpu=8, vcpu_ratio=1.0)
    add_type(session, "t-4", vcpus=4)
    session.commit()
    _claim(session, "t-4")  # generation 1, 4 of 8 VCPU used

    with pytest.raises(Conflict) as stale:
        services.update_inventory(session, host_id, "VCPU", {"total": 16}, expected_generation=0, now=NOW)
    assert stale.value.slug == "concurrent-update"
    with pytest.raises(Conflict) as in_use:
        services.update_inventory(session, host_id, "VCPU", {"reserved": 5}, expected_generation=1, now=NOW)
    assert in_use.value.slug == "inventory-in-use"
    with pytest.raises(Unprocessable) as invalid:
        services.update_inventory(session, host_id, "VCPU", {"reserved": 9}, expected_generation=1, now=NOW)
    assert invalid.value.errors == [{"location": "body.reserved", "message": "must not exceed total (8)"}]
    with pytest.raises(Unprocessable):
        services.update_inventory(session, host_id, "VCPU", {"colour": "red"}, expected_generation=None, now=NOW)
    with pytest.raises(NotFound):
        services.update_inventory(session, host_id, "FPGA", {"total": 1}, expected_generation=None, now=NOW)
    session.rollback()

    view = services.update_inventory(
        session, host_id, "VCPU", {"reserved": 4, "allocation_ratio": 2.0}, expected_generation=1, now=NOW
    )
    session.commit()
    vcpu = view.inventories[0]
    assert (vcpu.capacity, vcpu.used, view.host.generation, view.host.vcpu_free) == (8, 4, 2, 4)
    assert view.host.vcpu_load == 0.5
    # A new class needs a total; then placement sees it at once.
    with pytest.raises(Unprocessable):
        services.update_inventory(session, host_id, "GPU", {"min_unit": 1}, expected_generation=None, now=NOW)
    view = services.update_inventory(session, host_id, "GPU", {"total": 2}, expected_generation=None, now=NOW)
    session.commit()
    assert view.host.has_gpu and view.host.gpu_free == 2 and view.host.generation == 3
    assert [i.resource_class for i in view.inventories] == ["VCPU", "MEMORY_MB", "DISK_GB", "GPU"]
    check_invariants(session)


def test_traits_and_states_bump_the_generation_and_steer_placement(session: Session) -> None:
    host_id = add_host(session, "h", gpu=2)
    add_type(session, "g-1", vcpus=1, gpus=1, gpu_model="h100")
    session.commit()
    launch = resolve_launch(session, region="fra1", instance_type="g-1", image="pytorch-2.5-cuda12")

    def place() -> None:
        claim(session, consumer_id=uuid.uuid4(), organization_id=uuid.uuid4(), launch=launch, now=NOW)
        session.commit()

    with pytest.raises(NoCapacity):  # no gpu:h100 trait
        place()
    session.rollback()
    with pytest.raises(Conflict):
        services.set_traits(session, host_id, ["gpu:h100"], expected_generation=7, now=NOW)
    view = services.set_traits(session, host_id, ["gpu:h100", "nvme"], expected_generation=0, now=NOW)
    session.commit()
    assert view.traits == ["gpu:h100", "nvme"] and view.host.generation == 1
    place()
    assert services.drain(session, host_id, now=NOW).host.state == "draining"
    assert services.drain(session, host_id, now=NOW).host.generation == 3  # the second drain changes nothing
    session.commit()
    with pytest.raises(NoCapacity):
        place()
    session.rollback()
    assert services.get_host(session, host_id).consumers == 1  # what runs there stays
    assert services.mark_down(session, host_id, now=NOW).host.state == "down"
    assert services.activate(session, host_id, now=NOW).host.state == "active"
    session.commit()
    place()
    with pytest.raises(NotFound):
        services.drain(session, uuid.uuid4(), now=NOW)


def test_capacity_report(session: Session) -> None:
    add_host(session, "a", vcpu=8, vcpu_ratio=1.0, memory_mb=8192, disk_gb=100)
    down = add_host(session, "b", vcpu=8, vcpu_ratio=2.0, memory_mb=8192, disk_gb=100, reserved=2, zone="fra1-b")
    add_host(session, "c", region="ams1", gpu=4)
    add_type(session, "t-2", vcpus=2, memory_mb=1024, disk_gb=10)
    session.commit()
    _claim(session, "t-2", exclude_hosts=frozenset({down}))
    services.mark_down(session, down, now=NOW)
    session.commit()

    report = {r.region: r for r in services.capacity_report(session)}
    assert list(report) == ["ams1", "fra1", "nyc1"]
    fra1 = report["fra1"]
    assert fra1.hosts == {"active": 1, "draining": 0, "down": 1}
    vcpu = fra1.resources["VCPU"]
    # Host b is down: out of the totals (active and draining hosts only), its count kept.
    assert (vcpu.total, vcpu.reserved, vcpu.capacity, vcpu.used, vcpu.free) == (8, 0, 8, 2, 6)
    assert vcpu.available == 6  # only host a is active
    assert vcpu.utilisation == pytest.approx(2 / 8)
    services.drain(session, down, now=NOW)  # draining hosts count again, but place nothing
    session.commit()
    vcpu = {r.region: r for r in services.capacity_report(session)}["fra1"].resources["VCPU"]
    assert (vcpu.total, vcpu.reserved, vcpu.capacity, vcpu.used, vcpu.available) == (16, 2, 20, 2, 6)
    assert fra1.resources["GPU"].capacity == 0 and fra1.resources["GPU"].utilisation == 0.0
    assert report["ams1"].resources["GPU"].available == 4
    assert report["nyc1"].hosts == {"active": 0, "draining": 0, "down": 0}
    only = services.capacity_report(session, "ams1")
    assert [r.region for r in only] == ["ams1"]
    with pytest.raises(NotFound):
        services.capacity_report(session, "mars1")


def test_quota_overrides_validate(session: Session) -> None:
    org = uuid.uuid4()
    with pytest.raises(Unprocessable):
        services.set_quota(session, org, max_vcpus=-1, max_gpus=None, default_vcpus=64, default_gpus=8, now=NOW)
    quota = services.set_quota(session, org, max_vcpus=None, max_gpus=2, default_vcpus=64, default_gpus=8, now=NOW)
    assert (quota.limits.vcpus, quota.limits.gpus, quota.overridden_vcpus, quota.overridden_gpus) == (
        64,
        2,
        False,
        True,
    )
    # Defaults move with the deployment's setting for limits that are not overridden.
    assert services.get_quota(session, org, default_vcpus=128, default_gpus=8).limits.vcpus == 128
