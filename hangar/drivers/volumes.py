"""Volume drivers: how the storage context asks a host to create, attach, detach, resize,
snapshot and delete volumes, and how it learns how far the host has got.

Same shape as the host drivers (hangar.drivers): `begin` asks and returns, `poll` says how
far it got given when it was begun, both idempotent and stateless between calls, so the
storage runner may run one step per transaction and another process may carry on after a
crash. `Progress` and `DriverError` are the host drivers' own.

Two implementations, picked by `settings.driver` (`make_volume_driver`):

- `local` (`LocalVolumeDriver`): real storage on this machine, under `storage_dir`
  (default: a `volumes` directory next to `instances_dir`, i.e. `.hangar/volumes`)::

      <storage_dir>/volumes/<volume_id>/      the volume: a directory (0700), its data
      <storage_dir>/snapshots/<snapshot_id>/  a snapshot: a copy of a volume's directory
      <storage_dir>/*/<id>.partial            a copy in progress (renamed into place when whole)

  A volume is a directory, not a sparse file with a filesystem in it: mounting a filesystem
  image needs root (or FUSE), and the local host driver runs without either. The size is
  therefore NOT enforced on `local` (a tenant may write more than size_gib; the instance's
  RLIMIT_FSIZE still caps each file). Attaching makes the directory appear inside the
  instance's sandbox as `<instance home>/volumes/<volume name>` — a symlink, so the instance
  sees it under `~/volumes/<name>` — and detaching removes that link. The instance's destroy
  never follows symlinks (hangar.drivers.local._rmtree), so terminating an instance leaves its
  volumes' data alone. Snapshot and restore copy the directory tree with holes preserved
  (SEEK_DATA/SEEK_HOLE), into a `.partial` directory that is renamed into place once whole,
  so a crash mid-copy never leaves a half snapshot that looks complete. ADR 0014.

- `sim` (`SimVolumeDriver`): no files. Every answer is a pure function of the seed, the task's
  key (the action or snapshot id), the operation and the elapsed time, like hangar.drivers.sim:
  `create`, `attach` and `snapshot` fail with probability `failure_rate`; `detach`, `resize`
  and the deletes never fail (they must always be able to run).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast, get_args

from hangar.drivers import DriverError, Progress
from hangar.drivers.sim import unit_hash

if TYPE_CHECKING:
    from hangar.config import Settings

VolumeOperation = Literal["create", "attach", "detach", "resize", "delete", "snapshot", "delete_snapshot"]
VOLUME_OPERATIONS: tuple[VolumeOperation, ...] = get_args(VolumeOperation)

__all__ = [
    "VOLUME_OPERATIONS",
    "LocalVolumeDriver",
    "SimVolumeDriver",
    "VolumeDriver",
    "VolumeOperation",
    "VolumeTask",
    "make_volume_driver",
]


@dataclass(frozen=True)
class VolumeTask:
    """One thing to do to a volume (or a snapshot), built by the storage runner from its rows.

    `key` identifies this piece of work (the action's id; the snapshot's id for snapshot work):
    the sim driver draws its delay and outcome from it, so a replay gives the same answer and
    a new action a new draw.
    """

    operation: VolumeOperation
    key: uuid.UUID
    volume_id: uuid.UUID
    volume_name: str
    size_gib: int
    instance_id: uuid.UUID | None = None  # attach, detach
    snapshot_id: uuid.UUID | None = None  # snapshot, delete_snapshot: the snapshot; create: restore from it


class VolumeDriver(Protocol):
    name: str  # "local" | "sim"

    def begin(self, task: VolumeTask) -> None:
        """Ask for `task`; returns once it is under way (or done); calling it twice is harmless.
        Raises DriverError when it could not be started at all."""
        ...

    def poll(self, task: VolumeTask, since: datetime, now: datetime) -> Progress:
        """How far `task`, begun at `since`, has got at `now`; any process may poll."""
        ...

    def close(self) -> None: ...


def check_task(task: VolumeTask) -> VolumeOperation:
    if task.operation not in VOLUME_OPERATIONS:
        raise ValueError(f"unknown volume operation {task.operation!r}; expected one of {', '.join(VOLUME_OPERATIONS)}")
    if task.operation in ("attach", "detach") and task.instance_id is None:
        raise ValueError(f"a volume {task.operation} needs an instance_id")
    if task.operation in ("snapshot", "delete_snapshot") and task.snapshot_id is None:
        raise ValueError(f"a volume {task.operation} needs a snapshot_id")
    return cast(VolumeOperation, task.operation)


def make_volume_driver(settings: Settings) -> VolumeDriver:
    """The volume driver matching `settings.driver` (instances and their volumes live on the
    same kind of host)."""
    if settings.driver == "local":
        return LocalVolumeDriver(storage_root(settings), settings.instances_dir)
    if settings.driver == "sim":
        return SimVolumeDriver(
            seed=settings.sim_seed,
            delay_ms=settings.storage_sim_delay_ms,
            failure_rate=settings.storage_sim_failure_rate,
        )
    raise ValueError(f"unknown host driver {settings.driver!r}; expected 'local' or 'sim' (HANGAR_DRIVER)")


def storage_root(settings: Settings) -> Path:
    """`settings.storage_dir`, or a `volumes` directory next to `instances_dir`."""
    return settings.storage_dir if settings.storage_dir is not None else settings.instances_dir.parent / "volumes"


# --- sim -------------------------------------------------------------------------------------

_SIM_FAILING: frozenset[str] = frozenset({"create", "attach", "snapshot"})


class SimVolumeDriver:
    """Simulated storage: a delay of `delay_ms` × (0.5 + u) per task and, for create, attach and
    snapshot, a failure with probability `failure_rate`; nothing is stored anywhere."""

    name = "sim"

    def __init__(self, *, seed: int, delay_ms: int, failure_rate: float) -> None:
        if delay_ms < 0:
            raise ValueError(f"sim delay_ms must be >= 0, got {delay_ms}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"sim failure_rate must be between 0 and 1, got {failure_rate}")
        self.seed = seed
        self.delay_ms = delay_ms
        self.failure_rate = failure_rate

    def duration_ms(self, task: VolumeTask) -> float:
        return self.delay_ms * (0.5 + unit_hash("sim-vol-duration", self.seed, task.key, task.operation))

    def fails(self, task: VolumeTask) -> bool:
        if task.operation not in _SIM_FAILING:
            return False
        return unit_hash("sim-vol-failure", self.seed, task.key, task.operation) < self.failure_rate

    def begin(self, task: VolumeTask) -> None:
        check_task(task)

    def poll(self, task: VolumeTask, since: datetime, now: datetime) -> Progress:
        check_task(task)
        duration = self.duration_ms(task)
        elapsed = (now - since).total_seconds() * 1000.0
        if elapsed < duration:
            percent = max(0, min(99, int(100 * elapsed / duration))) if duration > 0 else 99
            return Progress(done=False, ok=False, percent=percent)
        if self.fails(task):
            return Progress(
                done=True,
                ok=False,
                percent=100,
                error_code="host_error",
                error_message=f"simulated storage failed to {task.operation} volume {task.volume_id} (seed {self.seed})",
            )
        return Progress(done=True, ok=True, percent=100)

    def close(self) -> None:
        """Nothing is held."""


# --- local -----------------------------------------------------------------------------------

_DONE = Progress(done=True, ok=True, percent=100)
_UNDER_WAY = Progress(done=False, ok=False, percent=50)


class LocalVolumeDriver:
    """Volumes as directories under `storage_dir`, attached by a symlink into the instance's
    home (the layout of hangar.drivers.local: `<instances_dir>/<instance_id>/root`)."""

    name = "local"

    def __init__(self, storage_dir: Path, instances_dir: Path) -> None:
        self.storage_dir = Path(storage_dir)
        self.instances_dir = Path(instances_dir)

    # -- layout (public: tests and operators read these) --

    def volume_dir(self, volume_id: uuid.UUID) -> Path:
        return self.storage_dir / "volumes" / str(volume_id)

    def snapshot_dir(self, snapshot_id: uuid.UUID) -> Path:
        return self.storage_dir / "snapshots" / str(snapshot_id)

    def instance_home(self, instance_id: uuid.UUID) -> Path:
        return self.instances_dir / str(instance_id) / "root"

    def mount_point(self, instance_id: uuid.UUID, volume_name: str) -> Path:
        """Where an attached volume appears inside the instance: `~/volumes/<name>`."""
        return self.instance_home(instance_id) / "volumes" / volume_name

    # -- the VolumeDriver interface --

    def begin(self, task: VolumeTask) -> None:
        """The work is done here, synchronously (a local copy or a symlink), and is atomic:
        `poll` then only looks at the result. See the module doc."""
        operation = check_task(task)
        try:
            if operation == "create":
                self._create(task)
            elif operation == "attach":
                self._attach(task)
            elif operation == "detach":
                self._detach(task)
            elif operation == "resize":
                self._require(self.volume_dir(task.volume_id), f"volume {task.volume_id}")
            elif operation == "delete":
                _remove_tree(self.volume_dir(task.volume_id))
            elif operation == "snapshot":
                assert task.snapshot_id is not None  # check_task
                source = self.volume_dir(task.volume_id)
                self._require(source, f"volume {task.volume_id}")
                _copy_into_place(source, self.snapshot_dir(task.snapshot_id))
            else:  # delete_snapshot
                assert task.snapshot_id is not None
                _remove_tree(self.snapshot_dir(task.snapshot_id))
        except DriverError:
            raise
        except OSError as exc:
            raise DriverError("host_error", f"cannot {operation} volume {task.volume_id}: {exc}") from exc

    def poll(self, task: VolumeTask, since: datetime, now: datetime) -> Progress:
        operation = check_task(task)
        if operation in ("create", "resize"):
            return _DONE if self.volume_dir(task.volume_id).is_dir() else _UNDER_WAY
        if operation == "attach":
            assert task.instance_id is not None
            return _DONE if self._linked(task) else _UNDER_WAY
        if operation == "detach":
            return _UNDER_WAY if self._linked(task) else _DONE
        if operation == "delete":
            return _UNDER_WAY if os.path.lexists(self.volume_dir(task.volume_id)) else _DONE
        assert task.snapshot_id is not None
        exists = self.snapshot_dir(task.snapshot_id).is_dir()
        if operation == "snapshot":
            return _DONE if exists else _UNDER_WAY
        return _UNDER_WAY if exists else _DONE  # delete_snapshot

    def close(self) -> None:
        """Nothing is held."""

    # -- internals --

    def _require(self, path: Path, what: str) -> None:
        if not path.is_dir():
            raise DriverError("volume_missing", f"{what} has no data on this host ({path} is missing)")

    def _create(self, task: VolumeTask) -> None:
        target = self.volume_dir(task.volume_id)
        if target.is_dir():
            return  # a replay
        _mkdir_private(target.parent, parents=True)
        if task.snapshot_id is None:
            _mkdir_private(target)
            return
        source = self.snapshot_dir(task.snapshot_id)
        self._require(source, f"snapshot {task.snapshot_id}")
        _copy_into_place(source, target)

    def _attach(self, task: VolumeTask) -> None:
        assert task.instance_id is not None
        volume = self.volume_dir(task.volume_id)
        self._require(volume, f"volume {task.volume_id}")
        link = self.mount_point(task.instance_id, task.volume_name)
        _mkdir_private(link.parent, parents=True)
        if os.path.islink(link):
            if os.readlink(link) == str(volume):
                return  # a replay
            link.unlink()  # a stale link (a volume of that name detached while the instance was away)
        elif os.path.lexists(link):
            raise DriverError(
                "mount_point_busy",
                f"~/volumes/{task.volume_name} already exists inside instance {task.instance_id} and is not a volume; "
                "move it away and attach again",
            )
        tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}")
        os.symlink(volume, tmp)
        os.replace(tmp, link)

    def _detach(self, task: VolumeTask) -> None:
        if self._linked(task):
            assert task.instance_id is not None
            with contextlib.suppress(FileNotFoundError):
                self.mount_point(task.instance_id, task.volume_name).unlink()

    def _linked(self, task: VolumeTask) -> bool:
        assert task.instance_id is not None
        link = self.mount_point(task.instance_id, task.volume_name)
        try:
            return os.readlink(link) == str(self.volume_dir(task.volume_id))
        except OSError:
            return False


def _mkdir_private(path: Path, *, parents: bool = False) -> None:
    if parents:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


def _remove_tree(path: Path) -> None:
    """Remove a volume's or a snapshot's directory even where the tenant made parts of it
    unwritable; symlinks inside are removed, never followed."""
    for _ in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except PermissionError:
            for dirpath, dirnames, _files in os.walk(path):
                for name in dirnames:
                    child = os.path.join(dirpath, name)
                    if not os.path.islink(child):
                        with contextlib.suppress(OSError):
                            os.chmod(child, stat.S_IRWXU)
            with contextlib.suppress(OSError):
                os.chmod(path, stat.S_IRWXU)
    shutil.rmtree(path)


def _copy_into_place(source: Path, target: Path) -> None:
    """Copy the tree `source` to `target`, atomically: into `<target>.partial` first (a leftover
    of a crashed copy is removed), then renamed. A replay once `target` exists does nothing."""
    if target.is_dir():
        return
    _mkdir_private(target.parent, parents=True)
    partial = target.with_name(target.name + ".partial")
    _remove_tree(partial)
    shutil.copytree(source, partial, symlinks=True, copy_function=copy_sparse)
    os.chmod(partial, 0o700)
    os.replace(partial, target)


def copy_sparse(src: str, dst: str) -> str:
    """Copy a regular file keeping its holes: only the data extents (SEEK_DATA/SEEK_HOLE) are
    read and written, the rest is left as holes by truncating to the size. Falls back to a
    plain copy where the filesystem cannot report extents. Mode and times are kept."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        try:
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # nothing but a hole from here on
                        break
                    raise
                end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
                fin.seek(start)
                fout.seek(start)
                remaining = end - start
                while remaining > 0:
                    chunk = fin.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    fout.write(chunk)
                    remaining -= len(chunk)
                offset = end
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            fin.seek(0)
            fout.seek(0)
            shutil.copyfileobj(fin, fout, 1 << 20)
        fout.truncate(size)
    shutil.copystat(src, dst)
    return dst
