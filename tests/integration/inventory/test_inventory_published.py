"""The published interface provisioning uses: resolve_launch, check_quota, claim, release,
allocation_of — on a real database, committing."""

from __future__ import annotations

import random
import uuid

import pytest
from inventory_support import NOW, add_host, add_type, check_invariants
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from handlers.inventory import placement, services
from handlers.inventory.published import (
    Claim,
    LaunchRefused,
    LaunchSpec,
    NoCapacity,
    QuotaExceeded,
    Resources,
    allocation_of,
    check_quota,
    claim,
    release,
    resolve_launch,
)
from handlers.inventory.tables import Allocation, Host, Image
from hangar.outbox import OutboxEvent

pytestmark = pytest.mark.postgres

UUID_KEYS = ("consumer_id", "host_id")


def _events(session: Session, event_type: str) -> list[dict]:
    rows = session.scalars(select(OutboxEvent).where(OutboxEvent.type == event_type).order_by(OutboxEvent.seq))
    return [row.payload for row in rows]


def _launch(
    session: Session, instance_type: str = "t-2", region: str = "fra1", image: str = "ubuntu-24.04"
) -> LaunchSpec:
    return resolve_launch(session, region=region, instance_type=instance_type, image=image)


def _claim(
    session: Session,
    launch: LaunchSpec,
    org: uuid.UUID | None = None,
    *,
    consumer_id: uuid.UUID | None = None,
    exclude_hosts: frozenset[uuid.UUID] = frozenset(),
    quota_vcpus: int = 64,
    quota_gpus: int = 8,
) -> Claim:
    result = claim(
        session,
        consumer_id=consumer_id or uuid.uuid4(),
        organization_id=org or uuid.uuid4(),
        launch=launch,
        exclude_hosts=exclude_hosts,
        now=NOW,
        quota_vcpus=quota_vcpus,
        quota_gpus=quota_gpus,
    )
    session.commit()
    return result


# --- resolve_launch -------------------------------------------------------------------------


def test_resolve_launch_builds_the_spec_from_the_catalogue(session: Session) -> None:
    spec = resolve_launch(session, region="fra1", instance_type="gpu-h100x1", image="pytorch-2.5-cuda12")
    assert spec == LaunchSpec(
        region="fra1",
        instance_type="gpu-h100x1",
        image="pytorch-2.5-cuda12",
        vcpus=24,
        memory_mb=240 * 1024,
        disk_gb=1000,
        gpus=1,
        gpu_model="h100",
        price_per_hour=249,
        currency="USD",
    )
    assert spec.resources == Resources(24, 240 * 1024, 1000, 1)


@pytest.mark.parametrize(
    ("region", "instance_type", "image", "slug", "field"),
    [
        ("mars1", "cpu-1", "ubuntu-24.04", "unknown-region", "region"),
        ("fra1", "cpu-99", "ubuntu-24.04", "unknown-instance-type", "instance_type"),
        ("fra1", "cpu-1", "windows-95", "unknown-image", "image"),
        ("fra1", "gpu-a100x1", "pytorch-2.5-cuda12", "instance-type-not-offered", "instance_type"),
        ("fra1", "cpu-1", "pytorch-2.5-cuda12", "image-not-suitable", "image"),  # 50 GB image, 25 GB disk
        ("fra1", "gpu-h100x1", "ubuntu-24.04", "image-not-suitable", "image"),  # not GPU-ready
    ],
)
def test_resolve_launch_names_the_bad_field(
    session: Session, region: str, instance_type: str, image: str, slug: str, field: str
) -> None:
    with pytest.raises(LaunchRefused) as refused:
        resolve_launch(session, region=region, instance_type=instance_type, image=image)
    assert refused.value.status == 422
    assert refused.value.slug == slug
    assert refused.value.field == field
    assert refused.value.errors == [{"location": f"body.{field}", "message": refused.value.detail}]


def test_a_deprecated_image_is_not_suitable(session: Session) -> None:
    session.execute(update(Image).where(Image.slug == "ubuntu-22.04").values(status="deprecated"))
    with pytest.raises(LaunchRefused) as refused:
        resolve_launch(session, region="fra1", instance_type="cpu-1", image="ubuntu-22.04")
    assert refused.value.slug == "image-not-suitable"
    assert "deprecated" in refused.value.detail
    # CPU types take GPU-ready images whose disk fits.
    assert resolve_launch(session, region="fra1", instance_type="cpu-2", image="ubuntu-24.04-cuda12").disk_gb == 50


# --- claim / release ------------------------------------------------------------------------


def test_claim_allocates_emits_and_is_idempotent_per_consumer(session: Session) -> None:
    host_id = add_host(session, "h1")
    add_type(session, "t-2", vcpus=2, memory_mb=2048, disk_gb=20)
    session.commit()
    consumer, org = uuid.uuid4(), uuid.uuid4()
    launch = _launch(session)

    first = _claim(session, launch, org, consumer_id=consumer)
    again = _claim(session, launch, org, consumer_id=consumer, exclude_hosts=frozenset({host_id}))

    assert first == again == allocation_of(session, consumer)
    assert first.host_id == host_id and first.host_name == "h1"
    assert (first.region, first.zone) == ("fra1", "fra1-a")
    events = _events(session, "allocation.claimed")
    assert len(events) == 1
    assert events[0]["organization_id"] == str(org)
    assert events[0]["data"] == {
        "consumer_id": str(consumer),
        "host_id": str(host_id),
        "host_name": "h1",
        "region": "fra1",
        "zone": "fra1-a",
        "resources": {"VCPU": 2, "MEMORY_MB": 2048, "DISK_GB": 20, "GPU": 0},
    }
    rows = session.scalars(select(Allocation).where(Allocation.consumer_id == consumer)).all()
    assert {(r.resource_class, r.amount) for r in rows} == {("VCPU", 2), ("MEMORY_MB", 2048), ("DISK_GB", 20)}
    host = session.get_one(Host, host_id, populate_existing=True)
    assert host.generation == 1
    assert host.vcpu_free == 16 * 4 - 2
    check_invariants(session)


def test_release_gives_everything_back_once(session: Session) -> None:
    host_id = add_host(session, "h1", gpu=8, traits=["gpu:h100"])
    add_type(session, "g-1", vcpus=4, gpus=1, gpu_model="h100")
    session.commit()
    consumer, org = uuid.uuid4(), uuid.uuid4()
    _claim(session, _launch(session, "g-1", image="pytorch-2.5-cuda12"), org, consumer_id=consumer)

    assert release(session, consumer_id=consumer, now=NOW, reason="instance-deleted") is True
    session.commit()
    assert release(session, consumer_id=consumer, now=NOW) is False
    assert release(session, consumer_id=uuid.uuid4(), now=NOW) is False
    session.commit()

    assert allocation_of(session, consumer) is None
    events = _events(session, "allocation.released")
    assert len(events) == 1
    assert events[0]["organization_id"] == str(org)
    assert events[0]["data"] == {
        "consumer_id": str(consumer),
        "host_id": str(host_id),
        "host_name": "h1",
        "region": "fra1",
        "zone": "fra1-a",
        "resources": {"VCPU": 4, "MEMORY_MB": 1024, "DISK_GB": 60, "GPU": 1},
        "reason": "instance-deleted",
    }
    host = session.get_one(Host, host_id, populate_existing=True)
    assert (host.generation, host.gpu_free, host.vcpu_free, host.vcpu_load) == (2, 8, 64, 0.0)
    check_invariants(session)


def test_no_capacity_when_nothing_fits(session: Session) -> None:
    add_host(session, "small", vcpu=2, vcpu_ratio=1.0)
    add_type(session, "t-2", vcpus=2, regions=("fra1", "ams1"))
    add_type(session, "t-4", vcpus=4)
    session.commit()
    with pytest.raises(NoCapacity) as none:
        _claim(session, _launch(session, "t-4"))
    assert none.value.reason == "no-valid-host"
    assert "fra1" in none.value.message and "VCPU 4" in none.value.message
    with pytest.raises(NoCapacity):  # no host in ams1 at all
        _claim(session, _launch(session, "t-2", region="ams1"))
    _claim(session, _launch(session, "t-2"))
    with pytest.raises(NoCapacity):  # the one host is full now
        _claim(session, _launch(session, "t-2"))
    session.rollback()
    check_invariants(session)


def test_claims_skip_excluded_draining_down_and_trait_less_hosts(session: Session) -> None:
    a = add_host(session, "a", gpu=8, traits=["gpu:a100"])
    b = add_host(session, "b", gpu=8, traits=["gpu:h100"])
    add_type(session, "g-1", vcpus=4, gpus=1, gpu_model="h100")
    session.commit()
    launch = _launch(session, "g-1", image="pytorch-2.5-cuda12")
    assert _claim(session, launch).host_id == b  # a lacks the trait
    with pytest.raises(NoCapacity):
        _claim(session, launch, exclude_hosts=frozenset({b}))
    session.rollback()
    services.drain(session, b, now=NOW)
    session.commit()
    with pytest.raises(NoCapacity):
        _claim(session, launch)
    session.rollback()
    services.mark_down(session, b, now=NOW)
    session.commit()
    with pytest.raises(NoCapacity):
        _claim(session, launch)
    session.rollback()
    services.activate(session, b, now=NOW)
    session.commit()
    assert _claim(session, launch).host_id == b
    assert session.get_one(Host, a, populate_existing=True).generation == 0


@pytest.mark.parametrize(
    ("fields", "fits"),
    [
        ({"min_unit": 4}, False),  # 2 is below min_unit
        ({"max_unit": 1}, False),  # 2 is above max_unit
        ({"step_size": 4}, False),  # 2 is off step_size
        ({"step_size": 2, "min_unit": 2, "max_unit": 8}, True),
        ({"reserved": 15, "vcpu_ratio": 1.0}, False),  # capacity (16 − 15) × 1 = 1
        ({"reserved": 14, "vcpu_ratio": 1.0}, True),  # capacity 2
    ],
)
def test_unit_rules_and_reserved_filter_hosts(session: Session, fields: dict, fits: bool) -> None:
    add_host(session, "h", **fields)
    add_type(session, "t-2", vcpus=2)
    session.commit()
    if fits:
        _claim(session, _launch(session))
    else:
        with pytest.raises(NoCapacity):
            _claim(session, _launch(session))


# --- weighing -------------------------------------------------------------------------------


def test_gpu_requests_pack_onto_the_fullest_gpu_host_that_fits(session: Session) -> None:
    empty = add_host(session, "empty", vcpu=64, memory_mb=1 << 20, gpu=8, traits=["gpu:h100"])
    busy = add_host(session, "busy", vcpu=64, memory_mb=1 << 20, gpu=8, traits=["gpu:h100"])
    add_type(session, "g-1", vcpus=4, gpus=1, gpu_model="h100")
    add_type(session, "g-8", vcpus=8, gpus=8, gpu_model="h100")
    session.commit()
    one = _launch(session, "g-1", image="pytorch-2.5-cuda12")
    # Fill "busy" to 6 of 8 GPUs by excluding "empty".
    for _ in range(6):
        _claim(session, one, exclude_hosts=frozenset({empty}))
    # The next single-GPU claims go to "busy" (2 free, then 1) …
    for _ in range(2):
        assert _claim(session, one).host_id == busy
    # … so the whole host stays free for an 8-GPU instance.
    assert _claim(session, _launch(session, "g-8", image="pytorch-2.5-cuda12")).host_id == empty
    check_invariants(session)


def test_cpu_requests_spread_and_stay_off_gpu_hosts_while_a_cpu_host_fits(session: Session) -> None:
    gpu_host = add_host(session, "gpu", vcpu=64, gpu=8, traits=["gpu:h100"])
    cpu_hosts = [add_host(session, f"cpu-{i}", vcpu=4, vcpu_ratio=1.0) for i in range(4)]
    add_type(session, "t-1", vcpus=1)
    session.commit()
    launch = _launch(session, "t-1")
    # Load cpu-i with 3 − i vCPUs.
    for i, host in enumerate(cpu_hosts):
        for _ in range(3 - i):
            _claim(session, launch, exclude_hosts=frozenset({gpu_host, *cpu_hosts}) - {host})
    # The query returns CPU hosts least loaded first, the (empty) GPU host last.
    request = placement.Request.of("fra1", vcpus=1, memory_mb=1024, disk_gb=10, gpus=0)
    assert [c.id for c in placement.candidates(session, request)] == [*reversed(cpu_hosts), gpu_host]
    # Fill the CPU hosts (10 vCPUs left); only then does CPU work land on the GPU host.
    for _ in range(10):
        assert _claim(session, launch).host_id in cpu_hosts
    assert _claim(session, launch).host_id == gpu_host
    check_invariants(session)


def test_the_random_pick_is_among_the_best_few_only(session: Session) -> None:
    hosts = [add_host(session, f"cpu-{i}", vcpu=10, vcpu_ratio=1.0) for i in range(6)]
    add_type(session, "t-1", vcpus=1)
    session.commit()
    launch = _launch(session, "t-1")
    # Load host i with i vCPUs: the three least loaded are hosts 0, 1, 2.
    for i, host in enumerate(hosts):
        for _ in range(i):
            _claim(session, launch, exclude_hosts=frozenset(set(hosts) - {host}))
    landed = set()
    for seed in range(12):
        result = claim(
            session,
            consumer_id=uuid.uuid4(),
            organization_id=uuid.uuid4(),
            launch=launch,
            now=NOW,
            rng=random.Random(seed),
        )
        landed.add(result.host_id)
        session.rollback()
    assert landed <= set(hosts[:3]) and len(landed) > 1


# --- quotas ---------------------------------------------------------------------------------


def test_check_quota_counts_usage_and_pending(session: Session) -> None:
    add_host(session, "h1")
    add_type(session, "t-4", vcpus=4)
    session.commit()
    org = uuid.uuid4()
    launch = _launch(session, "t-4")
    _claim(session, launch, org, quota_vcpus=8)
    check_quota(session, organization_id=org, launch=launch, pending=Resources(), quota_vcpus=8)
    with pytest.raises(QuotaExceeded) as exceeded:
        check_quota(session, organization_id=org, launch=launch, pending=Resources(vcpus=2), quota_vcpus=8)
    assert exceeded.value.status == 409 and exceeded.value.slug == "quota-exceeded"
    assert "limit of 8 vCPUs" in exceeded.value.detail
    assert "4 in use and 2 pending" in exceeded.value.detail
    # An organization that never claimed has the defaults and no usage.
    check_quota(session, organization_id=uuid.uuid4(), launch=launch, pending=Resources(vcpus=60))


def test_claim_enforces_the_quota_and_overrides(session: Session) -> None:
    add_host(session, "h1", gpu=8, traits=["gpu:h100"])
    add_type(session, "t-4", vcpus=4)
    add_type(session, "g-1", vcpus=1, gpus=1, gpu_model="h100")
    session.commit()
    org = uuid.uuid4()
    cpu, gpu = _launch(session, "t-4"), _launch(session, "g-1", image="pytorch-2.5-cuda12")
    _claim(session, cpu, org, quota_vcpus=8)
    _claim(session, cpu, org, quota_vcpus=8)
    with pytest.raises(NoCapacity) as refused:
        _claim(session, cpu, org, quota_vcpus=8)
    assert refused.value.reason == "quota-exceeded"
    session.rollback()
    services.set_quota(session, org, max_vcpus=12, max_gpus=0, default_vcpus=8, default_gpus=8, now=NOW)
    session.commit()
    _claim(session, cpu, org, quota_vcpus=8)  # the override wins over the default
    with pytest.raises(NoCapacity) as no_gpus:
        _claim(session, gpu, org)
    assert no_gpus.value.reason == "quota-exceeded" and "GPUs" in no_gpus.value.message
    session.rollback()
    quota = services.get_quota(session, org, default_vcpus=8, default_gpus=8)
    assert (quota.limits.vcpus, quota.limits.gpus, quota.usage.vcpus, quota.usage.gpus) == (12, 0, 12, 0)
    assert quota.overridden_vcpus and quota.overridden_gpus
    check_invariants(session)
