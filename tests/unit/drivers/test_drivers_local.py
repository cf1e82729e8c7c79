"""The `local` driver against real processes: boot, sandbox, idempotency, stop/start/reboot/
destroy, failures, the pid-reuse guard, pollers in other processes, and attached sessions.

Timeouts and grace periods are short (constructor arguments), and where a test is about a
deadline it passes a `now` past the deadline instead of sleeping.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hangar.drivers import DriverError, InstanceSpec, Operation, Progress
from hangar.drivers.local import LocalDriver, ProcessRecord, read_stat

ROOT = Path(__file__).resolve().parents[3]
GRACE = 0.5
BOOT_TIMEOUT = 5.0


def make_spec(**overrides: object) -> InstanceSpec:
    values: dict[str, object] = {
        "instance_id": uuid.uuid4(),
        "organization_id": uuid.uuid4(),
        "name": "web-1",
        "host_id": uuid.uuid4(),
        "host_name": "fra1-cpu-0001",
        "attempt": 1,
        "image": "ubuntu-24.04",
        "vcpus": 2,
        "memory_mb": 4096,
        "disk_gb": 10,
        "gpus": 0,
    }
    values.update(overrides)
    return InstanceSpec(**values)  # type: ignore[arg-type]


def utcnow() -> datetime:
    return datetime.now(UTC)


def run_to_end(driver: LocalDriver, spec: InstanceSpec, op: Operation, timeout: float = 5.0) -> Progress:
    """begin, then poll with the real clock until done."""
    since = utcnow()
    driver.begin(spec, op)
    deadline = time.monotonic() + timeout
    while True:
        progress = driver.poll(spec, op, since, utcnow())
        if progress.done:
            return progress
        assert time.monotonic() < deadline, f"{op} not done after {timeout}s: {progress}"
        time.sleep(0.01)


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def init_record(driver: LocalDriver, spec: InstanceSpec) -> ProcessRecord:
    rec = ProcessRecord.load(driver.run_dir(spec.instance_id) / "init.pid")
    assert rec is not None
    return rec


def alive(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and not st.dead


def session_members(sid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None and st.session == sid and not st.dead:
                members.append(st.pid)
    return members


@pytest.fixture
def instances_dir(tmp_path: Path) -> Path:
    return tmp_path / "instances"


@pytest.fixture
def driver(instances_dir: Path) -> Iterator[LocalDriver]:
    d = LocalDriver(instances_dir, stop_grace=GRACE, boot_timeout=BOOT_TIMEOUT)
    yield d
    # Leave no process behind, whatever the test did.
    if instances_dir.is_dir():
        for entry in instances_dir.iterdir():
            spec = make_spec(instance_id=uuid.UUID(entry.name))
            d.begin(spec, "destroy")
    d.close()


@pytest.fixture
def running(driver: LocalDriver) -> InstanceSpec:
    spec = make_spec()
    assert run_to_end(driver, spec, "create").ok
    return spec


class TestCreate:
    def test_boots_a_real_process_in_its_own_sandbox(
        self, driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HANGAR_DATABASE_URL", "postgresql+psycopg://secret@db/hangar")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
        spec = make_spec(name="db-7", disk_gb=3, memory_mb=512)
        progress = run_to_end(driver, spec, "create")
        assert progress == Progress(done=True, ok=True, percent=100)

        pid = driver.running_pid(spec.instance_id)
        assert pid is not None and alive(pid)
        assert os.getpgid(pid) != os.getpgid(0)
        assert os.getsid(pid) == pid  # a session of its own
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        )
        assert "HANGAR_DATABASE_URL" not in environ and "AWS_SECRET_ACCESS_KEY" not in environ
        home = driver.home(spec.instance_id)
        assert environ["HOME"] == str(home)
        assert environ["PATH"] == "/usr/bin:/bin"
        assert environ["HANGAR_INSTANCE_ID"] == str(spec.instance_id)
        assert environ["HANGAR_INSTANCE_NAME"] == "db-7"
        assert os.readlink(f"/proc/{pid}/cwd") == str(home)

        status = Path(f"/proc/{pid}/status").read_text()
        assert "Umask:\t0077" in status
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert "Max core file size        0                    0" in limits
        assert f"Max file size             {3 * 1024**3}" in limits
        assert "Max open files            1024                 1024" in limits
        assert f"Max address space         {512 * 1024**2}" in limits
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/1") == str(driver.console_log(spec.instance_id))

        workdir = driver.workdir(spec.instance_id)
        assert workdir == driver.instances_dir / str(spec.instance_id)
        assert workdir.stat().st_mode & 0o777 == 0o700
        manifest = json.loads((workdir / "manifest.json").read_text())
        assert manifest["id"] == str(spec.instance_id)
        assert manifest["name"] == "db-7"
        assert manifest["image"] == "ubuntu-24.04"
        assert manifest["host"] == {"id": str(spec.host_id), "name": "fra1-cpu-0001"}
        assert manifest["sizes"] == {"vcpus": 2, "memory_mb": 512, "disk_gb": 3, "gpus": 0}
        booted = json.loads((workdir / "run" / "booted").read_text())
        assert booted["pid"] == pid
        assert "booted" in driver.console_log(spec.instance_id).read_text()

    def test_begin_twice_starts_one_process(self, driver: LocalDriver) -> None:
        spec = make_spec()
        driver.begin(spec, "create")
        first = init_record(driver, spec)
        driver.begin(spec, "create")
        assert init_record(driver, spec) == first
        assert run_to_end(driver, spec, "create").ok
        assert init_record(driver, spec) == first
        assert session_members(first.pid) == [first.pid]

    def test_a_poller_in_another_driver_object_agrees(self, driver: LocalDriver, instances_dir: Path) -> None:
        spec = make_spec()
        since = utcnow()
        driver.begin(spec, "create")
        other = LocalDriver(instances_dir, stop_grace=GRACE, boot_timeout=BOOT_TIMEOUT)
        wait_for(lambda: other.poll(spec, "create", since, utcnow()).done)
        now = utcnow()
        assert other.poll(spec, "create", since, now) == driver.poll(spec, "create", since, now)
        assert other.running_pid(spec.instance_id) == driver.running_pid(spec.instance_id) is not None

    def test_a_process_that_dies_at_boot_is_boot_failed_and_reaped(self, instances_dir: Path) -> None:
        crash = [sys.executable, "-c", "import sys; print('disk not found', file=sys.stderr); sys.exit(3)"]
        driver = LocalDriver(instances_dir, boot_timeout=BOOT_TIMEOUT, init_command=crash)
        spec = make_spec()
        progress = run_to_end(driver, spec, "create")
        assert not progress.ok and progress.error_code == "boot_failed"
        assert "exited (3)" in (progress.error_message or "")
        assert "disk not found" in (progress.error_message or "")
        assert read_stat(init_record(driver, spec).pid) is None  # reaped, not a zombie
        driver.begin(spec, "destroy")

    def test_a_process_that_never_boots_is_boot_timeout(self, instances_dir: Path) -> None:
        hang = ["/bin/sleep", "30"]
        driver = LocalDriver(instances_dir, boot_timeout=2.0, init_command=hang)
        spec = make_spec()
        since = utcnow()
        driver.begin(spec, "create")
        early = driver.poll(spec, "create", since, since + timedelta(seconds=1))
        assert not early.done and 0 <= early.percent < 100
        late = driver.poll(spec, "create", since, since + timedelta(seconds=2))
        assert late.done and not late.ok and late.error_code == "boot_timeout"
        driver.begin(spec, "destroy")
        assert not driver.workdir(spec.instance_id).exists()

    def test_limits_are_bounded_by_the_size_and_nproc_only_applies_without_root(
        self, driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limits = driver._limits(disk_gb=0, memory_mb=64)
        assert limits.fsize == 1024**3 and limits.address_space == 256 * 1024**2  # floors
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        assert driver._limits(disk_gb=5, memory_mb=1024).nproc is None  # the kernel ignores it for root
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        nproc = driver._limits(disk_gb=5, memory_mb=1024).nproc
        assert nproc is not None and nproc >= driver.nproc_headroom

    def test_poll_without_begin_fails_instead_of_waiting_forever(self, driver: LocalDriver) -> None:
        spec = make_spec()
        progress = driver.poll(spec, "create", utcnow(), utcnow())
        assert progress.done and not progress.ok and progress.error_code == "boot_failed"

    def test_unknown_operation_is_a_programming_error(self, driver: LocalDriver) -> None:
        with pytest.raises(ValueError, match="unknown host operation 'resize'"):
            driver.begin(make_spec(), "resize")  # type: ignore[arg-type]


class TestStopStartReboot:
    def test_stop_ends_the_process_cleanly_and_keeps_the_workdir(
        self, driver: LocalDriver, running: InstanceSpec
    ) -> None:
        pid = init_record(driver, running).pid
        assert run_to_end(driver, running, "stop") == Progress(done=True, ok=True, percent=100)
        assert not alive(pid)
        assert driver.running_pid(running.instance_id) is None
        assert driver.home(running.instance_id).is_dir()
        assert "SIGTERM" in driver.console_log(running.instance_id).read_text()
        exit_info = json.loads((driver.run_dir(running.instance_id) / "exit.json").read_text())
        assert exit_info["pid"] == pid and exit_info["status"] == 0

    def test_stop_kills_after_the_grace_period(self, instances_dir: Path) -> None:
        stubborn = [
            sys.executable,
            "-c",
            "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path('ready').touch(); time.sleep(60)",
        ]
        driver = LocalDriver(instances_dir, stop_grace=3.0, init_command=stubborn)
        spec = make_spec()
        driver.begin(spec, "create")
        wait_for(lambda: (driver.home(spec.instance_id) / "ready").exists())
        pid = init_record(driver, spec).pid
        since = utcnow()
        driver.begin(spec, "stop")
        time.sleep(0.05)
        within_grace = driver.poll(spec, "stop", since, since + timedelta(seconds=1))
        assert not within_grace.done and 0 < within_grace.percent < 100
        assert alive(pid)  # SIGTERM ignored
        after_grace = driver.poll(spec, "stop", since, since + timedelta(seconds=3))
        assert after_grace.done and after_grace.ok
        assert not alive(pid)
        driver.begin(spec, "destroy")

    def test_stop_is_idempotent_and_needs_no_instance(self, driver: LocalDriver, running: InstanceSpec) -> None:
        assert run_to_end(driver, running, "stop").ok
        assert run_to_end(driver, running, "stop").ok
        assert run_to_end(driver, make_spec(), "stop").ok  # never created: nothing runs

    def test_start_after_stop_is_a_new_process_with_the_data_kept(
        self, driver: LocalDriver, running: InstanceSpec
    ) -> None:
        first = init_record(driver, running).pid
        (driver.home(running.instance_id) / "data.txt").write_text("kept")
        assert run_to_end(driver, running, "stop").ok
        assert run_to_end(driver, running, "start").ok
        second = driver.running_pid(running.instance_id)
        assert second is not None and second != first
        assert (driver.home(running.instance_id) / "data.txt").read_text() == "kept"

    def test_start_of_a_running_instance_is_a_no_op(self, driver: LocalDriver, running: InstanceSpec) -> None:
        before = init_record(driver, running)
        assert run_to_end(driver, running, "start").ok
        assert init_record(driver, running) == before

    def test_start_without_a_workdir_is_refused(self, driver: LocalDriver) -> None:
        with pytest.raises(DriverError) as caught:
            driver.begin(make_spec(), "start")
        assert caught.value.code == "instance_missing"

    def test_reboot_replaces_the_process(self, driver: LocalDriver, running: InstanceSpec) -> None:
        first = init_record(driver, running)
        assert run_to_end(driver, running, "reboot").ok
        second = driver.running_pid(running.instance_id)
        assert second is not None and second != first.pid
        assert not alive(first.pid)
        assert driver.console_log(running.instance_id).read_text().count("booted") == 2

    def test_reboot_begun_twice_reboots_once_and_again_after_it_finished(
        self, driver: LocalDriver, running: InstanceSpec
    ) -> None:
        since = utcnow()
        driver.begin(running, "reboot")
        driver.begin(running, "reboot")
        wait_for(lambda: driver.poll(running, "reboot", since, utcnow()).done)
        assert driver.console_log(running.instance_id).read_text().count("booted") == 2
        driver.begin(running, "reboot")  # the previous one finished: a new reboot
        wait_for(lambda: driver.poll(running, "reboot", since, utcnow()).done)
        assert driver.console_log(running.instance_id).read_text().count("booted") == 3

    def test_reboot_of_a_stopped_instance_starts_it(self, driver: LocalDriver, running: InstanceSpec) -> None:
        assert run_to_end(driver, running, "stop").ok
        assert run_to_end(driver, running, "reboot").ok
        assert driver.running_pid(running.instance_id) is not None


class TestDestroy:
    def test_destroy_kills_and_removes_and_is_idempotent(self, driver: LocalDriver, running: InstanceSpec) -> None:
        pid = init_record(driver, running).pid
        assert run_to_end(driver, running, "destroy") == Progress(done=True, ok=True, percent=100)
        assert not alive(pid)
        assert not driver.workdir(running.instance_id).exists()
        assert run_to_end(driver, running, "destroy").ok
        assert run_to_end(driver, make_spec(), "destroy").ok

    def test_destroy_removes_a_half_created_workdir(self, driver: LocalDriver) -> None:
        spec = make_spec()
        workdir = driver.workdir(spec.instance_id)
        workdir.mkdir(parents=True)
        (workdir / "manifest.json").write_text("{}")
        assert run_to_end(driver, spec, "destroy").ok
        assert not workdir.exists()

    def test_destroy_removes_what_the_instance_locked_down(self, driver: LocalDriver, running: InstanceSpec) -> None:
        locked = driver.home(running.instance_id) / "a" / "b"
        locked.mkdir(parents=True)
        (locked / "f").write_text("x")
        os.symlink("/etc", driver.home(running.instance_id) / "etc-link")
        os.chmod(locked, 0o500)
        os.chmod(locked.parent, 0)
        assert run_to_end(driver, running, "destroy").ok
        assert not driver.workdir(running.instance_id).exists()
        assert Path("/etc/passwd").exists()  # the symlink was removed, not followed


class TestAcrossProcesses:
    def test_an_instance_begun_by_a_process_that_exited_is_polled_and_stopped_here(
        self, driver: LocalDriver, instances_dir: Path
    ) -> None:
        spec = make_spec()
        since = utcnow()
        script = (
            "import pathlib\nfrom uuid import UUID\n"
            "from hangar.drivers import InstanceSpec\n"
            "from hangar.drivers.local import LocalDriver\n"
            f"spec = {spec!r}\n"
            f"LocalDriver(pathlib.Path({str(instances_dir)!r})).begin(spec, 'create')\n"
        )
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=30)
        wait_for(lambda: driver.poll(spec, "create", since, utcnow()).done)
        assert driver.poll(spec, "create", since, utcnow()).ok
        pid = init_record(driver, spec).pid
        assert run_to_end(driver, spec, "stop").ok  # not our child: a zombie, if any, counts as dead
        assert not alive(pid)

    def test_a_zombie_counts_as_dead(self) -> None:
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        wait_for(lambda: (st := read_stat(child.pid)) is not None and st.dead)
        st = read_stat(child.pid)
        assert st is not None and st.state == "Z"
        assert not ProcessRecord(child.pid, st.start_ticks).alive()
        child.wait()


class TestPidReuse:
    def test_a_recorded_pid_now_used_by_another_process_is_never_signalled(
        self, driver: LocalDriver, running: InstanceSpec
    ) -> None:
        assert run_to_end(driver, running, "stop").ok
        victim = subprocess.Popen(["/bin/sleep", "30"], start_new_session=True)
        try:
            st = read_stat(victim.pid)
            assert st is not None
            # As if the init had died and its pid had been handed to `victim`.
            forged = {"pid": victim.pid, "start_ticks": st.start_ticks + 1, "started_at": "x"}
            (driver.run_dir(running.instance_id) / "init.pid").write_text(json.dumps(forged))

            since = utcnow()
            created = driver.poll(running, "create", since, since)
            assert created.done and not created.ok and created.error_code == "boot_failed"
            driver.begin(running, "stop")
            assert driver.poll(running, "stop", since, since + timedelta(seconds=60)).ok
            assert victim.poll() is None and alive(victim.pid)

            assert run_to_end(driver, running, "start").ok  # the forged process is not "alive"
            assert driver.running_pid(running.instance_id) not in (None, victim.pid)
            assert run_to_end(driver, running, "destroy").ok
            assert victim.poll() is None
        finally:
            victim.kill()
            victim.wait()


class TestSessions:
    def test_a_terminal_session_runs_in_the_home_and_stops_with_the_instance(
        self, driver: LocalDriver, running: InstanceSpec
    ) -> None:
        master, slave = pty.openpty()
        try:
            shell = driver.spawn(
                running.instance_id,
                ["/bin/sh", "-c", 'tty; pwd; echo "HOME=$HOME"; echo ready; exec sleep 60'],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                controlling_tty=True,
                extra_env={"TERM": "dumb"},
            )
            os.close(slave)
            output = b""
            deadline = time.monotonic() + 5
            while b"ready" not in output and time.monotonic() < deadline:
                if select.select([master], [], [], 0.1)[0]:
                    output += os.read(master, 4096)
            text = output.decode()
            assert "/dev/pts/" in text
            assert str(driver.home(running.instance_id)) in text
            assert f"HOME={driver.home(running.instance_id)}" in text
            assert os.getsid(shell.pid) == shell.pid != os.getsid(init_record(driver, running).pid)

            assert run_to_end(driver, running, "stop").ok
            assert shell.wait(timeout=5) == -signal.SIGTERM
            assert not list((driver.run_dir(running.instance_id) / "sessions").glob("*.json"))
        finally:
            os.close(master)

    def test_destroy_kills_spawned_sessions_too(self, driver: LocalDriver, running: InstanceSpec) -> None:
        sleeper = driver.spawn(running.instance_id, ["/bin/sleep", "60"])
        assert run_to_end(driver, running, "destroy").ok
        assert sleeper.wait(timeout=5) == -signal.SIGKILL

    def test_spawn_needs_a_running_instance(self, driver: LocalDriver, running: InstanceSpec) -> None:
        assert run_to_end(driver, running, "stop").ok
        with pytest.raises(DriverError) as caught:
            driver.spawn(running.instance_id, ["/bin/true"])
        assert caught.value.code == "not_running"
        with pytest.raises(DriverError) as missing:
            driver.spawn(uuid.uuid4(), ["/bin/true"])
        assert missing.value.code == "instance_missing"
