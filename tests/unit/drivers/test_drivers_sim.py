"""The `sim` driver and fleet: determinism (across objects and processes), the failure rate,
the delay bounds, operations that never fail, and `make_driver`."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hangar.config import Settings
from hangar.drivers import InstanceSpec, Operation, Progress, make_driver
from hangar.drivers.local import LocalDriver
from hangar.drivers.sim import SimDriver, SimHost, sim_fleet, unit_hash

ROOT = Path(__file__).resolve().parents[3]
SINCE = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
DELAY_MS = 1000


def spec_for(n: int, attempt: int = 1) -> InstanceSpec:
    return InstanceSpec(
        instance_id=uuid.UUID(int=n),
        organization_id=uuid.UUID(int=0),
        name=f"i-{n}",
        host_id=uuid.UUID(int=7),
        host_name="fra1-cpu-0007",
        attempt=attempt,
        image="ubuntu-24.04",
        vcpus=2,
        memory_mb=4096,
        disk_gb=80,
        gpus=0,
    )


def at(ms: float) -> datetime:
    return SINCE + timedelta(milliseconds=ms)


def sim(failure_rate: float = 0.0, seed: int = 1, delay_ms: int = DELAY_MS) -> SimDriver:
    return SimDriver(seed=seed, delay_ms=delay_ms, failure_rate=failure_rate)


def final(driver: SimDriver, spec: InstanceSpec, op: Operation) -> Progress:
    """The answer once every possible duration (≤ 1.5 × delay) has passed."""
    return driver.poll(spec, op, SINCE, at(1.5 * driver.delay_ms))


class TestDeterminism:
    def test_same_inputs_same_answers_from_two_driver_objects(self) -> None:
        a, b = sim(0.3), sim(0.3)
        for n in range(200):
            for op in ("create", "start", "stop", "reboot", "destroy"):
                for ms in (0, 400, 800, 1200, 1500):
                    assert a.poll(spec_for(n), op, SINCE, at(ms)) == b.poll(spec_for(n), op, SINCE, at(ms))

    def test_the_seed_the_attempt_and_the_operation_each_change_the_draw(self) -> None:
        base = sim(seed=1)
        durations = {base.duration_ms(spec_for(n), "create") for n in range(50)}
        assert len(durations) == 50
        assert [base.duration_ms(spec_for(n), "create") for n in range(50)] != [
            sim(seed=2).duration_ms(spec_for(n), "create") for n in range(50)
        ]
        assert base.duration_ms(spec_for(1, attempt=1), "create") != base.duration_ms(spec_for(1, attempt=2), "create")
        assert base.duration_ms(spec_for(1), "create") != base.duration_ms(spec_for(1), "start")

    def test_another_process_with_another_hash_seed_computes_the_same(self) -> None:
        here = [sim(0.5).duration_ms(spec_for(n), "create") for n in range(5)]
        script = (
            "import uuid; from tests.unit.drivers.test_drivers_sim import sim, spec_for;"
            "print([sim(0.5).duration_ms(spec_for(n), 'create') for n in range(5)])"
        )
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert out.strip() == repr(here)

    def test_unit_hash_is_in_the_unit_interval_and_separates_its_parts(self) -> None:
        values = [unit_hash("t", n) for n in range(1000)]
        assert all(0.0 <= v < 1.0 for v in values)
        assert 0.45 < sum(values) / len(values) < 0.55
        assert unit_hash("t", "a", "bc") != unit_hash("t", "ab", "c")
        assert unit_hash("x", 1) != unit_hash("y", 1)


class TestTiming:
    def test_durations_stay_within_half_and_one_and_a_half_times_the_delay(self) -> None:
        driver = sim()
        durations = [driver.duration_ms(spec_for(n), "create") for n in range(2000)]
        assert all(0.5 * DELAY_MS <= d < 1.5 * DELAY_MS for d in durations)
        assert min(durations) < 0.55 * DELAY_MS and max(durations) > 1.45 * DELAY_MS  # the whole range is used
        for n in range(200):
            spec = spec_for(n)
            assert not driver.poll(spec, "create", SINCE, at(0.5 * DELAY_MS - 1)).done
            assert driver.poll(spec, "create", SINCE, at(1.5 * DELAY_MS)).done

    def test_percent_climbs_below_100_until_done_then_is_100(self) -> None:
        driver = sim()
        spec = spec_for(42)
        duration = driver.duration_ms(spec, "start")
        seen = [driver.poll(spec, "start", SINCE, at(ms)) for ms in range(0, int(duration) + 50, 10)]
        pending = [p.percent for p in seen if not p.done]
        assert pending == sorted(pending) and pending[0] == 0 and all(0 <= p <= 99 for p in pending)
        assert seen[-1] == Progress(done=True, ok=True, percent=100)
        # datetimes have microsecond resolution: one microsecond either side of the duration
        assert driver.poll(spec, "start", SINCE, at(duration + 0.001)).done
        assert not driver.poll(spec, "start", SINCE, at(duration - 0.001)).done

    def test_a_poll_before_since_is_zero_percent(self) -> None:
        assert sim().poll(spec_for(1), "create", SINCE, at(-500)) == Progress(done=False, ok=False, percent=0)

    def test_zero_delay_is_done_at_once(self) -> None:
        assert sim(delay_ms=0).poll(spec_for(1), "create", SINCE, SINCE).done


class TestFailures:
    def test_the_failure_rate_is_what_was_configured(self) -> None:
        driver = sim(0.2)
        for op in ("create", "start", "reboot"):
            outcomes = Counter(final(driver, spec_for(n), op).ok for n in range(2000))
            assert abs(outcomes[False] / 2000 - 0.2) < 0.03, (op, outcomes)

    def test_a_failure_is_a_host_error_naming_the_host(self) -> None:
        driver = sim(1.0)
        progress = final(driver, spec_for(3), "create")
        assert progress.done and not progress.ok and progress.percent == 100
        assert progress.error_code == "host_error"
        assert "fra1-cpu-0007" in (progress.error_message or "")
        assert not driver.poll(spec_for(3), "create", SINCE, SINCE).done  # fails only once its time is up

    def test_stop_and_destroy_never_fail(self) -> None:
        driver = sim(1.0)
        for n in range(500):
            assert final(driver, spec_for(n), "stop").ok
            assert final(driver, spec_for(n), "destroy").ok

    def test_a_retry_is_a_new_draw(self) -> None:
        driver = sim(0.5)
        first = [final(driver, spec_for(n, attempt=1), "create").ok for n in range(200)]
        second = [final(driver, spec_for(n, attempt=2), "create").ok for n in range(200)]
        assert any(not a and b for a, b in zip(first, second, strict=True))
        assert first == [final(driver, spec_for(n, attempt=1), "create").ok for n in range(200)]

    def test_begin_does_nothing_but_checks_the_operation(self) -> None:
        driver = sim()
        driver.begin(spec_for(1), "create")
        with pytest.raises(ValueError, match="unknown host operation"):
            driver.begin(spec_for(1), "explode")  # type: ignore[arg-type]
        driver.close()

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"delay_ms": -1}, "delay_ms"),
            ({"failure_rate": 1.5}, "failure_rate"),
            ({"failure_rate": -0.1}, "failure_rate"),
        ],
    )
    def test_nonsense_settings_are_refused(self, kwargs: dict[str, float], message: str) -> None:
        values: dict[str, float] = {"seed": 1, "delay_ms": 10, "failure_rate": 0.0, **kwargs}
        with pytest.raises(ValueError, match=message):
            SimDriver(**values)  # type: ignore[arg-type]


class TestFleet:
    REGIONS = ("fra1", "iad1")

    def test_deterministic_and_a_bigger_fleet_extends_a_smaller_one(self) -> None:
        fleet = list(sim_fleet(100, self.REGIONS, seed=7))
        assert fleet == list(sim_fleet(100, self.REGIONS, seed=7))
        assert list(sim_fleet(40, self.REGIONS, seed=7)) == fleet[:40]
        assert fleet != list(sim_fleet(100, self.REGIONS, seed=8))

    def test_the_mix_is_four_cpu_hosts_to_one_gpu_host_per_region(self) -> None:
        fleet = list(sim_fleet(200, self.REGIONS, seed=3))
        by_region = Counter((h.region, h.kind) for h in fleet)
        assert by_region == {("fra1", "cpu"): 80, ("fra1", "gpu"): 20, ("iad1", "cpu"): 80, ("iad1", "gpu"): 20}
        gpu_zones = Counter(h.zone for h in fleet if h.kind == "gpu" and h.region == "fra1")
        assert set(gpu_zones) == {"fra1-a", "fra1-b", "fra1-c"}
        models = Counter(h.gpu_model for h in fleet if h.kind == "gpu")
        assert set(models) == {"h100", "a100"}

    def test_hosts_are_shaped_for_the_inventory_context(self) -> None:
        fleet = list(sim_fleet(50, self.REGIONS, seed=1))
        assert len({h.name for h in fleet}) == 50
        for host in fleet:
            assert isinstance(host, SimHost)
            assert host.zone.startswith(f"{host.region}-") and host.zone[-1] in "abc"
            if host.kind == "gpu":
                assert set(host.inventories) == {"VCPU", "MEMORY_MB", "DISK_GB", "GPU"}
                assert host.inventories["GPU"] == 8
                assert host.traits == (f"gpu:{host.gpu_model}", "nvme")
                assert host.name == f"{host.region}-{host.gpu_model}-{host.name[-4:]}"
            else:
                assert set(host.inventories) == {"VCPU", "MEMORY_MB", "DISK_GB"}
                assert host.gpu_model is None and not any(t.startswith("gpu:") for t in host.traits)
                assert (host.inventories["VCPU"], host.inventories["MEMORY_MB"], host.inventories["DISK_GB"]) in {
                    (64, 262144, 2048),
                    (128, 524288, 4096),
                }

    def test_edge_cases(self) -> None:
        assert list(sim_fleet(0, ["fra1"], seed=1)) == []
        assert len(list(sim_fleet(3, ["fra1"], seed=1))) == 3
        with pytest.raises(ValueError, match="region"):
            list(sim_fleet(3, [], seed=1))
        with pytest.raises(ValueError, match="distinct"):
            list(sim_fleet(3, ["fra1", "fra1"], seed=1))


class TestMakeDriver:
    def test_local_and_sim_by_name(self, tmp_path: Path) -> None:
        local = make_driver(Settings(driver="local", instances_dir=tmp_path))
        assert isinstance(local, LocalDriver) and local.name == "local" and local.instances_dir == tmp_path
        simulated = make_driver(Settings(driver="sim", sim_seed=9, sim_delay_ms=20, sim_failure_rate=0.25))
        assert isinstance(simulated, SimDriver) and simulated.name == "sim"
        assert (simulated.seed, simulated.delay_ms, simulated.failure_rate) == (9, 20, 0.25)

    def test_an_unknown_driver_is_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match="unknown host driver 'qemu'; expected 'local' or 'sim'"):
            make_driver(Settings(driver="qemu"))
