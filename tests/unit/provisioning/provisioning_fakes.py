"""Test helpers for the provisioning saga (a uniquely named module; the conftest and the test
modules import it): a scriptable host driver, a small fleet, and a World that creates
instances through the services and drives their sagas step by step on a clock it owns."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from handlers.inventory import published
from handlers.inventory.catalogue import ensure_catalogue, load_sim_fleet
from handlers.provisioning import saga, services
from handlers.provisioning.tables import Action, Instance
from hangar.config import Settings
from hangar.context import Principal, RequestContext
from hangar.drivers import DriverError, InstanceSpec, Operation, Progress
from hangar.drivers.sim import SimHost
from hangar.outbox import OutboxEvent

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WRITE_SCOPES = frozenset({"instances:read", "instances:write"})

Outcome = Callable[[InstanceSpec, Operation], Progress | None]


@dataclass
class FakeDriver:
    """Every operation takes `polls` polls (the last one answers done); `outcome` may turn
    that answer into a failure; `begin_error` may make `begin` raise DriverError. Every call
    is logged as (call, operation, host_name, attempt)."""

    polls: int = 2
    outcome: Outcome | None = None
    begin_error: Callable[[InstanceSpec, Operation], DriverError | None] | None = None
    name: str = "fake"
    calls: list[tuple[str, str, str, int]] = field(default_factory=list)
    _seen: dict[tuple[uuid.UUID, int, str, datetime], int] = field(default_factory=dict)
    closed: bool = False

    def begin(self, spec: InstanceSpec, operation: Operation) -> None:
        self.calls.append(("begin", operation, spec.host_name, spec.attempt))
        if self.begin_error is not None:
            error = self.begin_error(spec, operation)
            if error is not None:
                raise error

    def poll(self, spec: InstanceSpec, operation: Operation, since: datetime, now: datetime) -> Progress:
        self.calls.append(("poll", operation, spec.host_name, spec.attempt))
        key = (spec.instance_id, spec.attempt, operation, since)
        self._seen[key] = self._seen.get(key, 0) + 1
        if self._seen[key] < self.polls:
            return Progress(done=False, ok=False, percent=100 * self._seen[key] // self.polls)
        if self.outcome is not None:
            verdict = self.outcome(spec, operation)
            if verdict is not None:
                return verdict
        return Progress(done=True, ok=True, percent=100)

    def close(self) -> None:
        self.closed = True

    def begun(self) -> list[tuple[str, str, int]]:
        return [(op, host, attempt) for call, op, host, attempt in self.calls if call == "begin"]


def host_error(message: str = "the host broke") -> Progress:
    return Progress(done=True, ok=False, percent=100, error_code="host_error", error_message=message)


def cpu_hosts(n: int, region: str = "fra1", vcpus: int = 64) -> list[SimHost]:
    """n identical CPU hosts, named <region>-host-<i>."""
    return [
        SimHost(
            name=f"{region}-host-{i}",
            region=region,
            zone=f"{region}-{'abc'[i % 3]}",
            kind="cpu",
            gpu_model=None,
            traits=("ssd",),
            inventories={"VCPU": vcpus, "MEMORY_MB": 256 * 1024, "DISK_GB": 2048},
        )
        for i in range(n)
    ]


def seed(sessions: sessionmaker[Session], hosts: list[SimHost]) -> None:
    with sessions() as session, session.begin():
        ensure_catalogue(session, driver="sim", now=T0)
        load_sim_fleet(session, hosts, now=T0)


class World:
    """Instances created through services.create_instance and driven by saga.advance, one
    committed step at a time, on a clock that only moves when told."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, driver: FakeDriver) -> None:
        self.sessions = sessions
        self.settings = settings
        self.driver = driver
        self.now = T0
        self.organization_id = uuid.uuid4()

    def ctx(self, session: Session, organization_id: uuid.UUID | None = None) -> RequestContext:
        principal = Principal(
            organization_id=organization_id or self.organization_id,
            user_id=uuid.uuid4(),
            api_key_id=uuid.uuid4(),
            role="owner",
            scopes=WRITE_SCOPES,
        )
        return RequestContext(request_id="req_test", session=session, principal=principal, now=self.now)

    def create(self, instance_type: str = "cpu-2", region: str = "fra1", image: str = "ubuntu-24.04") -> uuid.UUID:
        with self.sessions() as session, session.begin():
            instance, _ = services.create_instance(
                self.ctx(session), name="web-1", region=region, instance_type=instance_type, image=image
            )
            return instance.id

    def act(self, instance_id: uuid.UUID, action_type: str) -> uuid.UUID:
        with self.sessions() as session, session.begin():
            if action_type == "terminate":
                return services.terminate_instance(self.ctx(session), instance_id).id
            return services.start_action(self.ctx(session), instance_id, action_type).id

    def step(self, instance_id: uuid.UUID) -> str | None:
        """One step in its own committed transaction, then the clock moves 1 s."""
        with self.sessions() as session, session.begin():
            name = saga.advance(session, instance_id, self.now, self.driver, self.settings)
        self.now += timedelta(seconds=1)
        return name

    def drive(self, instance_id: uuid.UUID, limit: int = 200) -> list[str]:
        """Steps until there is nothing due; the steps' names."""
        steps: list[str] = []
        for _ in range(limit):
            name = self.step(instance_id)
            if name is None:
                return steps
            steps.append(name)
        raise AssertionError(f"the saga did not settle within {limit} steps: {steps[-10:]}")

    def instance(self, instance_id: uuid.UUID) -> Instance:
        with self.sessions() as session:
            return session.get_one(Instance, instance_id)

    def actions(self, instance_id: uuid.UUID) -> list[Action]:
        with self.sessions() as session:
            return list(
                session.scalars(select(Action).where(Action.instance_id == instance_id).order_by(Action.created_at))
            )

    def events(self, *types: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            query = select(OutboxEvent).order_by(OutboxEvent.seq)
            if types:
                query = query.where(OutboxEvent.type.in_(types))
            return [row.payload for row in session.scalars(query)]

    def allocation(self, instance_id: uuid.UUID) -> published.Claim | None:
        with self.sessions() as session:
            return published.allocation_of(session, instance_id)
