"""The pure parts of placement: capacity maths, unit rules, inventory validation, the host
summary, the weigher's order and the random pick, quota arithmetic, launch suitability."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from handlers.inventory import catalogue, quotas
from handlers.inventory.placement import (
    Candidate,
    InventoryFields,
    Request,
    candidates_query,
    capacity,
    inventory_errors,
    refusal,
    summary,
    try_order,
    weigh_key,
)
from handlers.inventory.published import image_unsuitable
from handlers.inventory.tables import Image, InstanceType

NOW = datetime(2026, 12, 1, tzinfo=UTC)


# --- capacity ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "reserved", "ratio", "expected"),
    [
        (16, 0, 4.0, 64),
        (16, 2, 4.0, 56),
        (131072, 4096, 1.0, 126976),
        (10, 0, 1.5, 15),
        (100, 0, 0.29, 29),  # 0.29 × 100 is 28.999… in binary floating point
        (3, 0, 0.5, 1),  # floor
        (8, 8, 4.0, 0),
        (0, 0, 1.0, 0),
    ],
)
def test_capacity_is_total_minus_reserved_times_ratio_floored(
    total: int, reserved: int, ratio: float, expected: int
) -> None:
    assert capacity(total, reserved, ratio) == expected


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        (1, "below min_unit 2"),
        (12, "above max_unit 10"),
        (3, "not a multiple of step_size 2"),
        (10, "more than the 8 free"),
        (2, None),
        (8, None),
    ],
)
def test_refusal_checks_min_max_step_and_free(amount: int, reason: str | None) -> None:
    result = refusal(amount, min_unit=2, max_unit=10, step_size=2, free=8)
    assert result is None if reason is None else reason in (result or "")


def test_inventory_fields_default_per_class() -> None:
    vcpu = InventoryFields(total=32).resolved("VCPU")
    assert (vcpu.max_unit, vcpu.allocation_ratio, vcpu.capacity) == (32, 4.0, 128)
    memory = InventoryFields(total=1024, reserved=24).resolved("MEMORY_MB")
    assert (memory.allocation_ratio, memory.capacity) == (1.0, 1000)
    assert InventoryFields(total=0).resolved("GPU").max_unit == 1  # max_unit ≥ min_unit even when empty
    assert InventoryFields(total=8, max_unit=2, allocation_ratio=1.5).resolved("GPU").max_unit == 2


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (InventoryFields(total=-1), "total"),
        (InventoryFields(total=4, reserved=-1), "reserved"),
        (InventoryFields(total=4, reserved=5), "reserved"),
        (InventoryFields(total=4, min_unit=0), "min_unit"),
        (InventoryFields(total=4, min_unit=3, max_unit=2), "max_unit"),
        (InventoryFields(total=4, step_size=0), "step_size"),
        (InventoryFields(total=4, allocation_ratio=0.0), "allocation_ratio"),
        (InventoryFields(total=4, allocation_ratio=float("inf")), "allocation_ratio"),
        (InventoryFields(total=4, allocation_ratio=float("nan")), "allocation_ratio"),
        (InventoryFields(total=2**31), "total"),  # the columns are 32-bit
        (InventoryFields(total=2**30, allocation_ratio=4.0), "allocation_ratio"),  # capacity 2^32
    ],
)
def test_inventory_errors_name_the_field(fields: InventoryFields, field: str) -> None:
    assert [f for f, _ in inventory_errors(fields)] == [field]


def test_a_valid_inventory_has_no_errors() -> None:
    assert inventory_errors(InventoryFields(total=4, reserved=4, min_unit=1, max_unit=1, step_size=1)) == []


def test_summary_of_a_host() -> None:
    cpu = summary({"VCPU": (64, 16), "MEMORY_MB": (1000, 100), "DISK_GB": (50, 0)})
    assert cpu == {
        "vcpu_free": 48,
        "memory_mb_free": 900,
        "disk_gb_free": 50,
        "gpu_free": 0,
        "vcpu_capacity": 64,
        "vcpu_load": 0.25,
        "has_gpu": False,
    }
    assert summary({"GPU": (8, 3)})["gpu_free"] == 5 and summary({"GPU": (8, 3)})["has_gpu"] is True
    assert summary({"GPU": (0, 0)})["has_gpu"] is False
    assert summary({})["vcpu_load"] == 1.0  # no VCPU: as good as full for spreading


def test_request_keeps_only_what_is_asked_for() -> None:
    request = Request.of("fra1", vcpus=2, memory_mb=1024, disk_gb=0, gpus=0, required_traits=["nvme", "nvme"])
    assert dict(request.amounts) == {"VCPU": 2, "MEMORY_MB": 1024}
    assert request.required_traits == frozenset({"nvme"})
    assert request.resources() == {"VCPU": 2, "MEMORY_MB": 1024, "DISK_GB": 0, "GPU": 0}
    assert not request.packs
    assert Request.of("fra1", vcpus=1, memory_mb=1, disk_gb=1, gpus=1).packs
    with pytest.raises(ValueError):
        Request.of("fra1", vcpus=-1, memory_mb=1, disk_gb=1, gpus=0)


# --- weighing ---------------------------------------------------------------------------------


def _candidate(name: str, *, gpu_free: int = 0, has_gpu: bool | None = None, load: float = 0.0) -> Candidate:
    return Candidate(
        id=uuid.uuid5(uuid.NAMESPACE_DNS, name),
        name=name,
        region="fra1",
        zone="fra1-a",
        generation=0,
        has_gpu=gpu_free > 0 if has_gpu is None else has_gpu,
        gpu_free=gpu_free,
        vcpu_load=load,
    )


CPU = Request.of("fra1", vcpus=2, memory_mb=1024, disk_gb=10, gpus=0)
GPU = Request.of("fra1", vcpus=8, memory_mb=1024, disk_gb=10, gpus=1)


def test_gpu_requests_prefer_the_fewest_free_gpus_and_shuffle_only_ties() -> None:
    hosts = [
        _candidate("whole", gpu_free=8),
        _candidate("two-a", gpu_free=2, load=0.5),
        _candidate("one", gpu_free=1, load=0.9),
        _candidate("two-b", gpu_free=2, load=0.1),
    ]
    assert [h.name for h in sorted(hosts, key=lambda h: weigh_key(GPU, h))] == ["one", "two-b", "two-a", "whole"]
    for seed in range(10):
        assert try_order(hosts, GPU, random.Random(seed))[0].name == "one"
    tied = [h for h in hosts if h.name != "one"]
    firsts = {try_order(tied, GPU, random.Random(seed))[0].name for seed in range(30)}
    assert firsts == {"two-a", "two-b"}  # never the whole host while a partial one fits
    assert all(try_order(tied, GPU, random.Random(s))[-1].name == "whole" for s in range(10))


def test_cpu_requests_spread_and_leave_gpu_hosts_alone() -> None:
    hosts = [
        _candidate("gpu-idle", gpu_free=8, load=0.0),
        _candidate("cpu-busy", load=0.9),
        _candidate("cpu-half", load=0.5),
        _candidate("cpu-idle", load=0.0),
        _candidate("cpu-light", load=0.2),
    ]
    ranked = sorted(hosts, key=lambda h: weigh_key(CPU, h))
    assert [h.name for h in ranked] == ["cpu-idle", "cpu-light", "cpu-half", "cpu-busy", "gpu-idle"]
    orders = [try_order(hosts, CPU, random.Random(seed)) for seed in range(40)]
    assert {o[0].name for o in orders} == {"cpu-idle", "cpu-light", "cpu-half"}  # random among the best 3
    assert all(o[3].name == "cpu-busy" and "gpu-idle" not in {h.name for h in o} for o in orders)
    # Only GPU hosts left: use them.
    assert [h.name for h in try_order(hosts[:1], CPU, random.Random(1))] == ["gpu-idle"]
    assert try_order([], CPU, random.Random(1)) == []


candidate_lists = st.lists(
    st.builds(
        _candidate,
        st.uuids().map(str),
        gpu_free=st.integers(0, 8),
        load=st.floats(0, 1),
    ),
    max_size=8,
    unique_by=lambda c: c.id,
)


@settings(deadline=None)  # pure and fast; a loaded CI machine must not make it flaky
@given(candidate_lists, st.booleans(), st.integers(0, 2**32))
def test_try_order_only_reorders_and_keeps_its_promises(hosts: list[Candidate], gpu: bool, seed: int) -> None:
    request = GPU if gpu else CPU
    order = try_order(hosts, request, random.Random(seed))
    ids = [h.id for h in order]
    assert len(ids) == len(set(ids)) and set(ids) <= {h.id for h in hosts}
    if gpu:
        assert ids == [] or order[0].gpu_free == min(h.gpu_free for h in hosts)
        assert len(order) == len(hosts)
    elif any(not h.has_gpu for h in hosts):
        assert all(not h.has_gpu for h in order)
        assert len(order) == sum(not h.has_gpu for h in hosts)
        best = min(h.vcpu_load for h in hosts if not h.has_gpu)
        assert any(h.vcpu_load == best for h in order[:3])


def test_the_query_orders_by_the_weighers_key_on_both_backends() -> None:
    traits = Request.of("fra1", vcpus=1, memory_mb=1, disk_gb=1, gpus=1, required_traits=["gpu:h100", "nvme"])
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        spread = str(candidates_query(CPU)[0].compile(dialect=dialect))
        pack = str(candidates_query(GPU)[0].compile(dialect=dialect))
        assert "ORDER BY hosts.has_gpu, hosts.vcpu_load" in spread
        assert "ORDER BY hosts.gpu_free, hosts.vcpu_load" in pack
        assert "NOT (EXISTS" in spread and "LIMIT" in spread
        if dialect.name == "postgresql":  # the planner fence (SQLite prints an OFFSET on every LIMIT)
            assert spread.count("OFFSET") == 1 and pack.count("OFFSET") == 1
    stmt, params = candidates_query(traits)
    assert params["p_trait_0"] == "gpu:h100" and params["p_trait_1"] == "nvme"
    assert str(stmt.compile(dialect=postgresql.dialect())).count("OFFSET") == 3
    # One statement per shape, reused: building it is the expensive part in Python.
    assert candidates_query(CPU)[0] is candidates_query(Request.of("ams1", vcpus=8, memory_mb=9, disk_gb=9, gpus=0))[0]


# --- quotas -----------------------------------------------------------------------------------


def _quota(vcpus_used: int, gpus_used: int, limit_vcpus: int = 8, limit_gpus: int = 2) -> quotas.Quota:
    return quotas.Quota(
        uuid.uuid4(), quotas.Limits(limit_vcpus, limit_gpus), quotas.Usage(vcpus_used, gpus_used), False, False
    )


def test_shortfall_names_limit_usage_and_pending() -> None:
    assert quotas.shortfall(_quota(4, 0), vcpus=4, gpus=0) is None
    short = quotas.shortfall(_quota(4, 0), vcpus=4, gpus=0, pending_vcpus=2)
    assert short == "4 more vCPUs would make 10, above the organization's limit of 8 vCPUs (4 in use and 2 pending)."
    both = quotas.shortfall(_quota(8, 2), vcpus=1, gpus=1) or ""
    assert "limit of 8 vCPUs" in both and "limit of 2 GPUs" in both
    # A CPU launch is not refused because GPU usage is above a lowered GPU limit.
    assert quotas.shortfall(_quota(0, 5), vcpus=2, gpus=0) is None


# --- launch rules -----------------------------------------------------------------------------


def _image(**overrides: object) -> Image:
    values: dict[str, object] = {
        "slug": "img",
        "name": "img",
        "os_family": "ubuntu",
        "version": "24.04",
        "min_disk_gb": 10,
        "gpu_ready": False,
        "status": "active",
        "created_at": NOW,
    }
    values.update(overrides)
    return Image(**values)


def _type(**overrides: object) -> InstanceType:
    values: dict[str, object] = {
        "slug": "t",
        "description": "t",
        "vcpus": 2,
        "memory_mb": 2048,
        "disk_gb": 25,
        "gpus": 0,
        "gpu_model": None,
        "required_traits": [],
        "price_per_hour": 3,
        "currency": "USD",
        "created_at": NOW,
    }
    values.update(overrides)
    return InstanceType(**values)


def test_image_suitability() -> None:
    assert image_unsuitable(_image(), _type()) is None
    assert "deprecated" in (image_unsuitable(_image(status="deprecated"), _type()) or "")
    assert "needs a 30 GB disk" in (image_unsuitable(_image(min_disk_gb=30), _type()) or "")
    gpu_type = _type(gpus=1, gpu_model="h100", disk_gb=100)
    assert "not GPU-ready" in (image_unsuitable(_image(), gpu_type) or "")
    assert image_unsuitable(_image(gpu_ready=True), gpu_type) is None
    assert image_unsuitable(_image(gpu_ready=True), _type()) is None  # CUDA images run on CPU types


# --- the catalogue's data ---------------------------------------------------------------------


def test_the_catalogue_is_consistent() -> None:
    regions = {r.slug: r for r in catalogue.REGIONS}
    slugs = [t.slug for t in catalogue.INSTANCE_TYPES]
    assert len(slugs) == len(set(slugs)) == 8
    for kind in catalogue.INSTANCE_TYPES:
        assert set(kind.regions) <= set(regions), kind.slug
        assert (kind.gpus > 0) == (kind.gpu_model is not None) == bool(kind.required_traits)
        assert kind.price_per_hour > 0 and kind.currency == "USD"
    prices = {t.slug: t.price_per_hour for t in catalogue.INSTANCE_TYPES}
    assert prices["cpu-1"] < prices["cpu-2"] < prices["cpu-4"] < prices["cpu-8"] < prices["gpu-a100x1"]
    for host in catalogue.local_fleet():
        assert host.zone in regions[host.region].zones
    # Every GPU model a region offers has a local host with its trait.
    for kind in catalogue.INSTANCE_TYPES:
        for region in kind.regions:
            assert any(
                set(kind.required_traits) <= set(h.traits) for h in catalogue.local_fleet() if h.region == region
            ), (kind.slug, region)


def test_the_simulated_fleet_fits_the_catalogue() -> None:
    from hangar.drivers.sim import sim_fleet

    regions = {r.slug: set(r.zones) for r in catalogue.REGIONS}
    for host in sim_fleet(60, list(regions), seed=3):
        assert host.zone in regions[host.region]
        assert set(host.inventories) <= {"VCPU", "MEMORY_MB", "DISK_GB", "GPU"}
