"""The volume drivers. `local`: real directories, symlinked into an instance's home on attach,
copied (holes kept) for snapshots and restores, atomically; `sim`: deterministic delays and
failures from the seed, nothing on disk."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hangar.drivers import DriverError
from hangar.drivers.volumes import LocalVolumeDriver, SimVolumeDriver, VolumeTask, copy_sparse

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def task(operation: str, volume_id: uuid.UUID, **extra: object) -> VolumeTask:
    return VolumeTask(
        operation=operation, key=uuid.uuid4(), volume_id=volume_id, volume_name="data", size_gib=1, **extra
    )  # type: ignore[arg-type]


def run(driver: LocalVolumeDriver, t: VolumeTask) -> None:
    driver.begin(t)
    driver.begin(t)  # idempotent
    assert driver.poll(t, T0, T0).done and driver.poll(t, T0, T0).ok


@pytest.fixture
def driver(tmp_path: Path) -> LocalVolumeDriver:
    return LocalVolumeDriver(tmp_path / "storage", tmp_path / "instances")


def test_local_create_attach_write_detach_reattach(driver: LocalVolumeDriver) -> None:
    vid, a, b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    run(driver, task("create", vid))
    assert driver.volume_dir(vid).is_dir() and oct(driver.volume_dir(vid).stat().st_mode & 0o777) == "0o700"

    run(driver, task("attach", vid, instance_id=a))
    inside_a = driver.mount_point(a, "data")
    assert inside_a == driver.instances_dir / str(a) / "root" / "volumes" / "data"
    (inside_a / "file").write_text("written in A")

    run(driver, task("detach", vid, instance_id=a))
    assert not os.path.lexists(inside_a)
    assert (driver.volume_dir(vid) / "file").read_text() == "written in A", "detach keeps the data"

    run(driver, task("attach", vid, instance_id=b))
    assert (driver.mount_point(b, "data") / "file").read_text() == "written in A"


def test_local_attach_never_clobbers_a_tenant_directory(driver: LocalVolumeDriver) -> None:
    vid, iid = uuid.uuid4(), uuid.uuid4()
    run(driver, task("create", vid))
    spot = driver.mount_point(iid, "data")
    spot.mkdir(parents=True)
    (spot / "mine").write_text("tenant's own file")
    with pytest.raises(DriverError) as refused:
        driver.begin(task("attach", vid, instance_id=iid))
    assert refused.value.code == "mount_point_busy"
    assert (spot / "mine").read_text() == "tenant's own file"


def test_local_destroying_an_instance_leaves_the_volume(driver: LocalVolumeDriver) -> None:
    from hangar.drivers.local import _rmtree

    vid, iid = uuid.uuid4(), uuid.uuid4()
    run(driver, task("create", vid))
    run(driver, task("attach", vid, instance_id=iid))
    (driver.mount_point(iid, "data") / "keep").write_text("x")
    _rmtree(driver.instances_dir / str(iid))  # what the host driver's destroy does
    assert (driver.volume_dir(vid) / "keep").read_text() == "x"
    run(driver, task("detach", vid, instance_id=iid))  # the instance is gone: still fine


def test_local_snapshot_restore_and_deletes(driver: LocalVolumeDriver) -> None:
    vid, sid, restored = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    run(driver, task("create", vid))
    (driver.volume_dir(vid) / "sub").mkdir()
    (driver.volume_dir(vid) / "sub" / "f").write_text("before")
    run(driver, task("snapshot", vid, snapshot_id=sid))
    (driver.volume_dir(vid) / "sub" / "f").write_text("after")
    assert (driver.snapshot_dir(sid) / "sub" / "f").read_text() == "before", "a snapshot is a point in time"

    run(driver, task("create", restored, snapshot_id=sid))
    assert (driver.volume_dir(restored) / "sub" / "f").read_text() == "before"

    run(driver, task("delete", vid))
    assert not driver.volume_dir(vid).exists()
    assert (driver.volume_dir(restored) / "sub" / "f").read_text() == "before"
    run(driver, task("delete_snapshot", vid, snapshot_id=sid))
    assert not driver.snapshot_dir(sid).exists()


def test_local_a_crashed_copy_is_never_taken_for_a_snapshot(driver: LocalVolumeDriver) -> None:
    vid, sid = uuid.uuid4(), uuid.uuid4()
    run(driver, task("create", vid))
    (driver.volume_dir(vid) / "f").write_text("data")
    partial = driver.snapshot_dir(sid).with_name(f"{sid}.partial")
    partial.mkdir(parents=True)
    (partial / "half").write_text("torn")
    t = task("snapshot", vid, snapshot_id=sid)
    assert not driver.poll(t, T0, T0).done, "a .partial directory is not a snapshot"
    run(driver, t)
    assert sorted(p.name for p in driver.snapshot_dir(sid).iterdir()) == ["f"]
    assert not partial.exists()


def test_local_missing_data_is_a_driver_error(driver: LocalVolumeDriver) -> None:
    with pytest.raises(DriverError) as missing:
        driver.begin(task("attach", uuid.uuid4(), instance_id=uuid.uuid4()))
    assert missing.value.code == "volume_missing"
    with pytest.raises(DriverError):
        driver.begin(task("create", uuid.uuid4(), snapshot_id=uuid.uuid4()))


def test_copy_sparse_keeps_holes_and_bytes(tmp_path: Path) -> None:
    src, dst = tmp_path / "sparse", tmp_path / "copy"
    with open(src, "wb") as f:
        f.seek(64 * 1024 * 1024)
        f.write(b"tail")
        f.seek(4096)
        f.write(b"head")
    copy_sparse(str(src), str(dst))
    assert dst.stat().st_size == src.stat().st_size
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read() == b.read()
    # 64 MiB apparent, a few blocks allocated (when the filesystem supports holes at all)
    if src.stat().st_blocks * 512 < 1024 * 1024:
        assert dst.stat().st_blocks * 512 < 1024 * 1024, "the copy filled the holes"


def test_sim_is_deterministic_and_fails_only_what_may_fail() -> None:
    sim = SimVolumeDriver(seed=7, delay_ms=100, failure_rate=1.0)
    vid = uuid.uuid4()
    create = task("create", vid)
    duration = sim.duration_ms(create)
    assert 50 <= duration < 150
    early = sim.poll(create, T0, T0 + timedelta(milliseconds=duration / 2))
    assert not early.done and 0 <= early.percent < 100
    late = sim.poll(create, T0, T0 + timedelta(milliseconds=duration + 1))
    assert late.done and not late.ok and late.error_code == "host_error"
    assert sim.poll(create, T0, T0 + timedelta(seconds=1)) == late, "same answer every time"
    for never_fails in ("detach", "resize", "delete"):
        t = task(never_fails, vid, instance_id=uuid.uuid4())
        assert sim.poll(t, T0, T0 + timedelta(seconds=1)).ok
    ok = SimVolumeDriver(seed=7, delay_ms=0, failure_rate=0.0)
    assert ok.poll(create, T0, T0).ok
    with pytest.raises(ValueError):
        ok.begin(task("attach", vid))  # an attach without an instance is a programming error
