"""Host drivers: how provisioning asks a host to create, start, stop, reboot or destroy an
instance, and how it learns how far the host has got.

The interface is split into `begin` (ask, return at once) and `poll` (how far is it, given
when it was begun) because the saga runs one short transaction per step and may be resumed
by another process after a crash: nothing may depend on a driver object living between the
two calls. Both calls are idempotent, so a step that is replayed after a crash is harmless.

Two implementations (docs/compute.md, ADR 0009):
- `local` (`hangar.drivers.local.LocalDriver`): every instance is a real, sandboxed process
  tree on this machine; the default for `make run`.
- `sim` (`hangar.drivers.sim.SimDriver`): a stateless, deterministic simulated fleet for
  tests, chaos runs and benchmarks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol, cast, get_args

if TYPE_CHECKING:
    from hangar.config import Settings

Operation = Literal["create", "start", "stop", "reboot", "destroy"]
OPERATIONS: tuple[Operation, ...] = get_args(Operation)

__all__ = [
    "OPERATIONS",
    "DriverError",
    "HostDriver",
    "InstanceSpec",
    "Operation",
    "Progress",
    "check_operation",
    "make_driver",
]


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a host needs to know about an instance; built by the saga from its rows."""

    instance_id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    host_id: uuid.UUID
    host_name: str
    attempt: int  # saga attempt: 1, 2, … (a retry on another host is a new attempt)
    image: str  # image slug
    vcpus: int
    memory_mb: int
    disk_gb: int
    gpus: int


@dataclass(frozen=True)
class Progress:
    """How far an operation has got. `ok` only means something once `done` is true."""

    done: bool
    ok: bool
    percent: int  # 0..100
    error_code: str | None = None  # e.g. "host_error", "boot_failed", "boot_timeout"
    error_message: str | None = None


class DriverError(Exception):
    """The host could not even begin an operation (the working directory cannot be created,
    the init program cannot be spawned, …).

    `begin` raises it instead of returning a failed `Progress` because nothing was started
    that `poll` could report on; the saga treats it like a failed step with `code`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class HostDriver(Protocol):
    """What provisioning needs from a host. See docs/compute.md, section `hangar.drivers`."""

    name: str  # "local" | "sim"

    def begin(self, spec: InstanceSpec, operation: Operation) -> None:
        """Ask the host to do `operation`; returns at once; calling it twice is harmless."""
        ...

    def poll(self, spec: InstanceSpec, operation: Operation, since: datetime, now: datetime) -> Progress:
        """How far `operation`, begun at `since`, has got at `now`; any process may poll."""
        ...

    def close(self) -> None:
        """Release what this driver object holds; instances keep running."""
        ...


def check_operation(operation: str) -> Operation:
    """The operation, or ValueError: an unknown operation is a programming error, not a host
    failure, so it must not be reported as a failed `Progress`."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown host operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    return cast(Operation, operation)  # the membership test above is the narrowing


def make_driver(settings: Settings) -> HostDriver:
    """The driver `settings.driver` names. Imports lazily so the `sim` driver never pulls in
    the process machinery and vice versa."""
    if settings.driver == "local":
        from hangar.drivers.local import LocalDriver

        return LocalDriver(settings.instances_dir)
    if settings.driver == "sim":
        from hangar.drivers.sim import SimDriver

        return SimDriver(seed=settings.sim_seed, delay_ms=settings.sim_delay_ms, failure_rate=settings.sim_failure_rate)
    raise ValueError(f"unknown host driver {settings.driver!r}; expected 'local' or 'sim' (HANGAR_DRIVER)")
