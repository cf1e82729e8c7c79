"""The `sim` host driver: a simulated fleet for tests, chaos runs and benchmarks.

It keeps no state at all. Every answer is a pure function of (`seed`, instance id, saga
attempt, operation) and the two times the caller passes, so any process — the API, a
worker, a test — polling the same operation gets the same answer, a crash loses nothing,
and a run can be replayed exactly by reusing the seed. The randomness comes from BLAKE2b,
not Python's `hash()`, which is salted per process and would break that.

- duration of an operation = `delay_ms` × (0.5 + u), u ∈ [0, 1) from one hash;
- `create`, `start` and `reboot` fail (error_code "host_error") when a second, independent
  hash falls below `failure_rate`; the failure shows once the duration has passed, as on a
  real host. `stop` and `destroy` never fail: compensation must always be able to run.

Because the outcome depends on the attempt, a saga retry (a new attempt) gets a fresh draw,
while replaying the same attempt gives the same result — which is what makes a chaos run
reproducible.

`sim_fleet` describes a deterministic fleet of hosts for the inventory context to insert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from hangar.drivers import InstanceSpec, Operation, Progress, check_operation

_FAILING_OPERATIONS: frozenset[str] = frozenset({"create", "start", "reboot"})


def unit_hash(purpose: str, *parts: object) -> float:
    """A number in [0, 1) determined only by `purpose` and `parts`.

    `purpose` goes into BLAKE2b's personalisation so that, say, the duration and the failure
    draw for the same instance are independent; the parts are joined with a separator that
    cannot occur in their `str()` forms (ids, ints, slugs) so ("a", "bc") ≠ ("ab", "c").
    """
    person = purpose.encode()[:16]
    digest = hashlib.blake2b("\x1f".join(str(part) for part in parts).encode(), digest_size=8, person=person)
    return int.from_bytes(digest.digest(), "big") / 2**64


class SimDriver:
    """A host that takes a while and sometimes fails, deterministically. See the module doc."""

    name = "sim"

    def __init__(self, *, seed: int, delay_ms: int, failure_rate: float) -> None:
        if delay_ms < 0:
            raise ValueError(f"sim delay_ms must be >= 0, got {delay_ms}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"sim failure_rate must be between 0 and 1, got {failure_rate}")
        self.seed = seed
        self.delay_ms = delay_ms
        self.failure_rate = failure_rate

    def duration_ms(self, spec: InstanceSpec, operation: Operation) -> float:
        """How long `operation` takes on this instance and attempt: 0.5×–1.5× `delay_ms`."""
        u = unit_hash("sim-duration", self.seed, spec.instance_id, spec.attempt, operation)
        return self.delay_ms * (0.5 + u)

    def fails(self, spec: InstanceSpec, operation: Operation) -> bool:
        """Whether `operation` ends in a host error for this instance and attempt."""
        if operation not in _FAILING_OPERATIONS:
            return False
        return unit_hash("sim-failure", self.seed, spec.instance_id, spec.attempt, operation) < self.failure_rate

    def begin(self, spec: InstanceSpec, operation: Operation) -> None:
        """Nothing to ask: the simulated host's behaviour is already fixed by the hashes. Only
        the operation is checked, so a typo fails here rather than at the first poll."""
        check_operation(operation)

    def poll(self, spec: InstanceSpec, operation: Operation, since: datetime, now: datetime) -> Progress:
        check_operation(operation)
        duration = self.duration_ms(spec, operation)
        elapsed = (now - since).total_seconds() * 1000.0
        if elapsed < duration:
            percent = max(0, min(99, int(100 * elapsed / duration))) if duration > 0 else 99
            return Progress(done=False, ok=False, percent=percent)
        if self.fails(spec, operation):
            return Progress(
                done=True,
                ok=False,
                percent=100,
                error_code="host_error",
                error_message=(
                    f"simulated host {spec.host_name} failed to {operation} instance {spec.instance_id} "
                    f"(attempt {spec.attempt}, seed {self.seed})"
                ),
            )
        return Progress(done=True, ok=True, percent=100)

    def close(self) -> None:
        """Nothing is held."""


# --- a simulated fleet ---------------------------------------------------------------------

GPU_SHARE = 0.2  # one host in five is a GPU host
ZONE_SUFFIXES = ("a", "b", "c")


@dataclass(frozen=True)
class SimHost:
    """One host of a simulated fleet, shaped like what the inventory context stores.

    `inventories` maps a resource class ("VCPU", "MEMORY_MB", "DISK_GB", "GPU") to its total;
    a CPU host has no "GPU" entry at all (as in placement, a provider without a class has no
    inventory record for it, rather than a zero one). The dict makes the object unhashable;
    it is a value to copy from, not a key.
    """

    name: str
    region: str
    zone: str
    kind: str  # "cpu" | "gpu"
    gpu_model: str | None
    traits: tuple[str, ...]
    inventories: dict[str, int] = field(default_factory=dict)


# (vCPUs, MiB, GiB, traits) — roughly a dual-socket general-purpose server.
_CPU_SHAPES: tuple[tuple[int, int, int, tuple[str, ...]], ...] = (
    (64, 256 * 1024, 2048, ("ssd",)),
    (128, 512 * 1024, 4096, ("nvme", "ssd")),
)
# model → (vCPUs, MiB, GiB, GPUs): shaped like an 8-GPU HGX box of that generation.
_GPU_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "h100": (208, 2048 * 1024, 30720, 8),
    "a100": (128, 1024 * 1024, 15360, 8),
}


def sim_fleet(n_hosts: int, regions: Sequence[str], seed: int) -> Iterator[SimHost]:
    """`n_hosts` deterministic hosts spread over `regions` (round robin) and three zones each.

    Host i depends only on (i, regions, seed), never on `n_hosts`, so a bigger fleet is a
    superset of a smaller one and benchmark runs at different sizes compare like with like.
    Within a region every fifth host is a GPU host (the phase is drawn from the seed), so the
    mix is 80 % CPU / 20 % GPU exactly for multiples of 5 per region and within one host
    otherwise; the GPU model (h100 or a100, even odds) and the CPU shape (64 vCPU/256 GiB/2 TB,
    or one in four 128 vCPU/512 GiB/4 TB) come from the seed.
    """
    if n_hosts < 0:
        raise ValueError(f"n_hosts must be >= 0, got {n_hosts}")
    if not regions:
        raise ValueError("sim_fleet needs at least one region")
    if len(set(regions)) != len(regions):
        raise ValueError(f"sim_fleet regions must be distinct, got {list(regions)}")
    period = round(1 / GPU_SHARE)
    phases = {region: int(unit_hash("fleet-phase", seed, region) * period) for region in regions}
    for i in range(n_hosts):
        region = regions[i % len(regions)]
        j = i // len(regions)  # the host's index within its region
        zone = f"{region}-{ZONE_SUFFIXES[j % len(ZONE_SUFFIXES)]}"
        if (j + phases[region]) % period == period - 1:
            model = "h100" if unit_hash("fleet-gpu-model", seed, region, j) < 0.5 else "a100"
            vcpus, memory_mb, disk_gb, gpus = _GPU_SHAPES[model]
            yield SimHost(
                name=f"{region}-{model}-{j:04d}",
                region=region,
                zone=zone,
                kind="gpu",
                gpu_model=model,
                traits=(f"gpu:{model}", "nvme"),
                inventories={"VCPU": vcpus, "MEMORY_MB": memory_mb, "DISK_GB": disk_gb, "GPU": gpus},
            )
        else:
            big = unit_hash("fleet-cpu-shape", seed, region, j) < 0.25
            vcpus, memory_mb, disk_gb, traits = _CPU_SHAPES[1 if big else 0]
            yield SimHost(
                name=f"{region}-cpu-{j:04d}",
                region=region,
                zone=zone,
                kind="cpu",
                gpu_model=None,
                traits=traits,
                inventories={"VCPU": vcpus, "MEMORY_MB": memory_mb, "DISK_GB": disk_gb},
            )
