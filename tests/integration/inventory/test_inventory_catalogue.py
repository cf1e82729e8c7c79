"""The start-up seed and fleet loading: idempotent, safe from several processes at once,
and every offered type launchable on the local fleet."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

import pytest
from inventory_support import NOW, check_invariants
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from handlers.inventory import catalogue, services
from handlers.inventory.catalogue import ensure_catalogue, load_sim_fleet
from handlers.inventory.published import claim, resolve_launch
from handlers.inventory.tables import Host, HostTrait, Image, InstanceType, InstanceTypeRegion, Inventory, Region
from hangar.db import make_engine

pytestmark = pytest.mark.postgres

TABLES = (Region, Image, InstanceType, InstanceTypeRegion, Host, Inventory, HostTrait)


def _counts(session: Session) -> dict[str, int]:
    return {t.__tablename__: session.scalar(select(func.count()).select_from(t)) or 0 for t in TABLES}


@dataclass(frozen=True)
class FakeHost:
    name: str
    region: str
    zone: str
    traits: tuple[str, ...] = ()
    inventories: dict[str, int] = field(default_factory=lambda: {"VCPU": 8, "MEMORY_MB": 8192, "DISK_GB": 100})


def test_seed_is_idempotent_and_seeds_local_hosts_once(inventory_url: str) -> None:
    engine = make_engine(inventory_url)
    with Session(engine) as session:
        ensure_catalogue(session, driver="local", now=NOW)
        session.commit()
        first = _counts(session)
        ensure_catalogue(session, driver="local", now=NOW)
        ensure_catalogue(session, driver="sim", now=NOW)
        session.commit()
        assert _counts(session) == first
        assert first["regions"] == 3 and first["instance_types"] == 8 and first["images"] == 6
        assert first["hosts"] == len(catalogue.local_fleet()) == 10
        check_invariants(session)
    engine.dispose()


def test_every_offered_type_can_launch_on_the_local_fleet(inventory_url: str) -> None:
    engine = make_engine(inventory_url)
    with Session(engine) as session:
        ensure_catalogue(session, driver="local", now=NOW)
        session.commit()
        for view in services.list_instance_types(session):
            assert all(a.available for a in view.regions), view.instance_type.slug
            image = "pytorch-2.5-cuda12" if view.instance_type.gpus else "ubuntu-24.04"
            for availability in view.regions:
                launch = resolve_launch(
                    session, region=availability.region, instance_type=view.instance_type.slug, image=image
                )
                claim(
                    session,
                    consumer_id=uuid.uuid4(),
                    organization_id=uuid.uuid4(),
                    launch=launch,
                    now=NOW,
                    quota_vcpus=1000,
                )
                session.rollback()
    engine.dispose()


def test_sim_driver_seeds_no_hosts_and_load_sim_fleet_adds_them_once(inventory_url: str) -> None:
    from hangar.drivers.sim import sim_fleet

    engine = make_engine(inventory_url)
    with Session(engine) as session:
        ensure_catalogue(session, driver="sim", now=NOW)
        session.commit()
        assert _counts(session)["hosts"] == 0
        fleet = list(sim_fleet(30, ["fra1", "ams1", "nyc1"], seed=1))
        assert load_sim_fleet(session, fleet, now=NOW) == 30
        session.commit()
        assert load_sim_fleet(session, fleet, now=NOW) == 0
        session.commit()
        counts = _counts(session)
        assert counts["hosts"] == 30
        assert counts["inventories"] == sum(len(h.inventories) for h in fleet)
        gpu = next(h for h in fleet if h.kind == "gpu")
        view = services.get_host(session, catalogue.host_id_for(gpu.name))
        assert view.traits == sorted(gpu.traits) and view.host.has_gpu
        assert {i.resource_class: i.total for i in view.inventories} == gpu.inventories
        # A name an operator already uses is skipped, not overwritten.
        taken = FakeHost("fra1-op-1", "fra1", "fra1-a")
        services.create_host(session, name=taken.name, region="fra1", zone="fra1-a", inventories={}, now=NOW)
        assert load_sim_fleet(session, [taken, FakeHost("fra1-new", "fra1", "fra1-b")], now=NOW) == 1
        session.commit()
        check_invariants(session)
    engine.dispose()


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (FakeHost("x", "mars1", "mars1-a"), "unknown region"),
        (FakeHost("x", "fra1", "ams1-a"), "is not in fra1"),
        (FakeHost("x", "fra1", "fra1-a", inventories={"FPGA": 1}), "unknown resource class"),
        (FakeHost("x", "fra1", "fra1-a", inventories={"VCPU": -1}), "total must be at least 0"),
    ],
)
def test_load_sim_fleet_refuses_bad_hosts(session: Session, host: FakeHost, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_sim_fleet(session, [host], now=NOW)


def test_concurrent_start_ups_seed_once(inventory_url: str) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start() -> None:
        engine = make_engine(inventory_url)
        try:
            with Session(engine) as session:
                barrier.wait()
                ensure_catalogue(session, driver="local", now=NOW)
                session.commit()
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = make_engine(inventory_url)
    with Session(engine) as session:
        counts = _counts(session)
        assert (counts["regions"], counts["instance_types"], counts["hosts"]) == (3, 8, 10)
        assert counts["instance_type_regions"] == sum(len(t.regions) for t in catalogue.INSTANCE_TYPES)
        check_invariants(session)
    engine.dispose()
