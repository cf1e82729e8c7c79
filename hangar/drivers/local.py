"""The `local` host driver: every instance is a real, sandboxed process tree on this machine.

It is what `make run` uses, so that creating, stopping, rebooting and destroying an instance
does something you can see with `ps` — without root, without containers, without a VM.

## Working directory (one per instance)
```
<instances_dir>/<instance_id>/   mode 0700; removed by destroy
  manifest.json      id, name, organization, image, host, attempt, sizes (written by create)
  console.log        stdout/stderr of the init and of spawned sessions, appended across boots
  root/              the instance's home and "filesystem": HOME and cwd of every process in
                     it; survives stop/start/reboot (this is the instance's data)
  run/               the driver's bookkeeping, not the instance's business:
    lock             flock(2) serialising the steps that spawn or remove, across processes
    init.pid         {"pid", "start_ticks", "started_at"} of the current init process
    booted           {"pid", "start_ticks", "booted_at"} written by the init once it is up
    exit.json        {"pid", "start_ticks", "status"} of the last init that exited, written
                     by the process that reaped it, so a poller elsewhere can say why
    reboot.json      {"old": <init.pid record or null>, "requested_at"} of the last reboot
    sessions/<pid>.json   processes started by `LocalDriver.spawn` (a terminal, Issue 5)
```

## Why state lives in files
The API process begins an operation and a worker polls it (or the other way round, or a
process that restarted after a crash). So every fact `poll` needs is in the working
directory, written atomically (write, rename), and every step that could double-spawn or
race with removal runs under `run/lock`. A process is identified by its pid *and* its start
time in clock ticks (/proc/<pid>/stat field 22): a pid whose start time differs has been
reused by an unrelated process and is treated as dead — it is never signalled. Signals go
through a pidfd opened before the start time is re-checked, so even the window between
check and kill is closed.

Some operations need more than one step and there is nobody but `poll` to take them:
`poll("stop")` sends SIGKILL once the grace period (measured from `since`) is over, and
`poll("reboot")` starts the new init once the old one is gone. Each step is idempotent.

## The sandbox: what it does
- its own session and process group (`start_new_session`), so the instance is signalled as
  a whole and never receives the terminal's or the platform's signals;
- cwd and HOME = `root/`, umask 077, stdin /dev/null, stdout/stderr → `console.log`;
- a scrubbed environment: HOME, PATH=/usr/bin:/bin, LANG, HANGAR_INSTANCE_ID,
  HANGAR_INSTANCE_NAME, HANGAR_RUN_DIR — nothing inherited, so no HANGAR_DATABASE_URL, no
  broker credentials, no cloud tokens from the platform's environment;
- resource limits (soft = hard, so the instance cannot raise them back): RLIMIT_NOFILE
  (1024), RLIMIT_CORE 0 (no core dumps of tenant memory on the host's disk), RLIMIT_FSIZE =
  disk_gb GiB (no single file may exceed the disk the instance bought), RLIMIT_AS =
  memory_mb MiB (at least 256 MiB, so the init itself can run), RLIMIT_NPROC = what the user
  already runs + 256 when the platform does not run as root (a fork-bomb brake);
- stop and destroy find every process still in the instance's session or process group —
  and in the sessions of processes started with `spawn` — and signal each one.

## What it does NOT isolate (no namespaces, no cgroups: those need root)
- It runs as the platform's own user. An instance can read and write every file that user
  can (the database file, other instances' directories), signal or ptrace the platform's
  processes and, by rewriting its own `run/` files, point the driver at other processes.
  This is a convenience for development and demos, NOT a boundary against a hostile tenant.
- Same network, same filesystem view, same pid namespace, same hostname: it sees everything.
- Limits are per process, not per instance: RLIMIT_AS bounds each process's address space,
  not the instance's total memory; nothing bounds CPU time, total disk use or the number of
  vCPUs (an instance with 1 vCPU can use all cores). RLIMIT_NPROC is counted per user across
  the whole machine and is not enforced at all for root.
- A process that calls setsid() *and* changes its process group (a classic daemon double
  fork) leaves the instance's session and group and survives stop and destroy.
The `sim` driver and a future VM or container driver keep the same interface.

## Zombies
Only a process's parent can reap it. A driver object registers every Popen it creates in a
per-process registry and polls them at each call, so an instance that exits never lingers
as a zombie of the API or worker process. A zombie seen anywhere ('Z' in /proc/<pid>/stat)
counts as dead.

## Attaching a terminal (Issue 5)
`LocalDriver.spawn(instance_id, argv, controlling_tty=True, stdin=<pty slave>, …)` starts a
process inside a running instance's sandbox — same environment and limits, cwd = `root/`,
a new session whose controlling terminal is the pty — and records it under
`run/sessions/` so stop and destroy take it down with the instance.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from hangar.drivers import DriverError, InstanceSpec, Operation, Progress, check_operation

BOOT_TIMEOUT_SECONDS = 30.0
STOP_GRACE_SECONDS = 5.0
NOFILE = 1024
NPROC_HEADROOM = 256
MIN_ADDRESS_SPACE_MB = 256
SANDBOX_PATH = "/usr/bin:/bin"
_KILL_SETTLE_SECONDS = 0.2  # how long a poll waits for SIGKILLed processes to be gone

INIT_PROGRAM = Path(__file__).with_name("local_init.py")


# --- /proc ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the driver uses."""

    pid: int
    state: str  # R S D Z T X …
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # field 22: start time after boot in clock ticks; with pid, an identity

    @property
    def dead(self) -> bool:
        return self.state in ("Z", "X", "x")


def read_stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat parsed, or None when there is no such process.

    The command name (field 2) may hold spaces and parentheses, so the other fields are
    counted from after the last ')' — the first field there is field 3 (state).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # ENOENT, or ESRCH when it vanished while being read
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=fields[0].decode(),
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        session=int(fields[3]),
        start_ticks=int(fields[19]),
    )


def _all_processes() -> list[ProcStat]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = read_stat(int(entry.name))
            if st is not None:
                found.append(st)
    return found


@dataclass(frozen=True)
class ProcessRecord:
    """A process the driver started, as written to init.pid or sessions/<pid>.json."""

    pid: int
    start_ticks: int

    def alive(self) -> bool:
        """Running (not a zombie) and the very process that was recorded, not a pid reuse."""
        _reap_children()
        st = read_stat(self.pid)
        return st is not None and st.start_ticks == self.start_ticks and not st.dead

    @classmethod
    def load(cls, path: Path) -> ProcessRecord | None:
        data = _read_json(path)
        if data is None:
            return None
        try:
            return cls(pid=int(data["pid"]), start_ticks=int(data["start_ticks"]))
        except (KeyError, TypeError, ValueError):
            return None  # a torn or foreign file identifies nothing


def _members(anchors: Sequence[ProcessRecord]) -> list[ProcStat]:
    """Every live process in the session or process group that one of `anchors` leads.

    An anchor whose pid now belongs to a process with another start time has been reused:
    its own session and group are necessarily empty (Linux does not hand out a pid still in
    use as a session or group id), so it contributes nothing. Members must have started no
    earlier than their anchor; zombies do not count. The calling process never does.
    """
    _reap_children()
    if not anchors:
        return []
    procs = _all_processes()
    by_pid = {p.pid: p for p in procs}
    me = os.getpid()
    found: dict[int, ProcStat] = {}
    for anchor in anchors:
        leader = by_pid.get(anchor.pid)
        if leader is not None and leader.start_ticks != anchor.start_ticks:
            continue
        for p in procs:
            if p.dead or p.pid == me or p.start_ticks < anchor.start_ticks:
                continue
            if anchor.pid in (p.session, p.pgrp):
                found[p.pid] = p
    return list(found.values())


def _signal(p: ProcStat, signum: int) -> None:
    """Send `signum` to exactly the process `p` describes, never to a successor of its pid.

    The pidfd pins the process before its start time is checked again, so a pid reused in
    between cannot receive the signal.
    """
    try:
        fd = os.pidfd_open(p.pid)
    except ProcessLookupError:
        return
    except OSError as exc:  # kernel without pidfds (< 5.3): check, then kill — a tiny window
        if exc.errno not in (errno.ENOSYS, errno.EPERM):
            raise
        now = read_stat(p.pid)
        if now is not None and now.start_ticks == p.start_ticks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signum)
        return
    try:
        now = read_stat(p.pid)
        if now is not None and now.start_ticks == p.start_ticks:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signum)
    finally:
        os.close(fd)


# --- children of this process --------------------------------------------------------------

# Zombies belong to the process that started them, whichever driver object did it, so the
# registry is per process. pid → (Popen, its run/ directory, its start ticks).
_CHILDREN: dict[int, tuple[subprocess.Popen[bytes], Path, int]] = {}
_CHILDREN_LOCK = threading.Lock()


def _adopt(proc: subprocess.Popen[bytes], run_dir: Path, start_ticks: int) -> None:
    with _CHILDREN_LOCK:
        _CHILDREN[proc.pid] = (proc, run_dir, start_ticks)


def _reap_children() -> None:
    """Collect every exited child this process started; note an init's exit status in its
    run/ directory (`exit.json`) so that a poller in another process can report it."""
    with _CHILDREN_LOCK:
        exited = [(pid, entry) for pid, entry in _CHILDREN.items() if entry[0].poll() is not None]
        for pid, _entry in exited:
            del _CHILDREN[pid]
    for pid, (proc, run_dir, start_ticks) in exited:
        init = ProcessRecord.load(run_dir / "init.pid")
        if init == ProcessRecord(pid, start_ticks):
            with contextlib.suppress(OSError):  # destroyed meanwhile: nobody to tell
                _write_json(run_dir / "exit.json", {"pid": pid, "start_ticks": start_ticks, "status": proc.returncode})


# --- files ---------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write so that a reader in any process sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _mkdir_private(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    os.chmod(path, 0o700)


def _rmtree(path: Path) -> None:
    """Remove a working directory even where the instance made directories unwritable or
    unreadable (a platform not running as root could not remove them otherwise). Symlinks
    are never followed: shutil.rmtree works on directory fds, and the chmod pass skips them."""
    for _ in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except PermissionError:
            _make_dirs_accessible(path)
    shutil.rmtree(path)


def _make_dirs_accessible(top: Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(top, stat.S_IRWXU)
    for dirpath, dirnames, _files in os.walk(top):  # top-down: fixed before it descends
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                with contextlib.suppress(OSError):
                    os.chmod(child, stat.S_IRWXU)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _elapsed(since: datetime, now: datetime) -> float:
    return max(0.0, (now - since).total_seconds())


# --- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The sandbox's resource limits, computed in the parent and applied in the child."""

    nofile: int
    fsize: int  # bytes
    address_space: int  # bytes
    nproc: int | None  # None: not set (root, for whom the kernel ignores it)

    def rlimits(self) -> list[tuple[int, int]]:
        wanted = [
            (resource.RLIMIT_NOFILE, self.nofile),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_FSIZE, self.fsize),
            (resource.RLIMIT_AS, self.address_space),
        ]
        if self.nproc is not None:
            wanted.append((resource.RLIMIT_NPROC, self.nproc))
        clamped = []
        for which, value in wanted:
            _soft, hard = resource.getrlimit(which)
            clamped.append((which, value if hard == resource.RLIM_INFINITY else min(value, hard)))
        return clamped


def _sandbox_preexec(rlimits: list[tuple[int, int]], controlling_tty: bool) -> Callable[[], None]:
    """What runs in the child between fork and exec (after setsid): soft = hard limits, and
    for a terminal, make stdin the controlling terminal of the new session.

    preexec_fn runs in a forked copy of a possibly multi-threaded process (the API server),
    where a lock held by another thread at fork time stays held forever. So this function
    only calls setrlimit and ioctl — C functions that take no Python-level locks and import
    nothing — on values computed in the parent beforehand.
    """

    def apply() -> None:
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))
        if controlling_tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    return apply


class LocalDriver:
    """Instances as sandboxed local process trees. See the module docstring for the layout,
    the sandbox, and what it does not isolate.

    `boot_timeout` and `stop_grace` are seconds measured from the `since` a poll is given;
    `init_command` replaces the init program (tests use it to make a boot fail or hang).
    """

    name = "local"

    def __init__(
        self,
        instances_dir: Path,
        *,
        boot_timeout: float = BOOT_TIMEOUT_SECONDS,
        stop_grace: float = STOP_GRACE_SECONDS,
        init_command: Sequence[str] | None = None,
        nofile: int = NOFILE,
        nproc_headroom: int = NPROC_HEADROOM,
    ) -> None:
        self.instances_dir = Path(instances_dir)
        self.boot_timeout = boot_timeout
        self.stop_grace = stop_grace
        self.init_command: tuple[str, ...] = (
            tuple(init_command) if init_command is not None else (sys.executable, "-I", "-S", str(INIT_PROGRAM))
        )
        self.nofile = nofile
        self.nproc_headroom = nproc_headroom

    # -- layout (public: a terminal or an operator needs these paths) --

    def workdir(self, instance_id: uuid.UUID) -> Path:
        return self.instances_dir / str(instance_id)

    def home(self, instance_id: uuid.UUID) -> Path:
        return self.workdir(instance_id) / "root"

    def run_dir(self, instance_id: uuid.UUID) -> Path:
        return self.workdir(instance_id) / "run"

    def console_log(self, instance_id: uuid.UUID) -> Path:
        return self.workdir(instance_id) / "console.log"

    def running_pid(self, instance_id: uuid.UUID) -> int | None:
        """The pid of the instance's init if it is alive and has booted, else None."""
        rec = ProcessRecord.load(self.run_dir(instance_id) / "init.pid")
        if rec is None or not rec.alive() or not self._booted(instance_id, rec):
            return None
        return rec.pid

    # -- the HostDriver interface --

    def begin(self, spec: InstanceSpec, operation: Operation) -> None:
        check_operation(operation)
        if operation == "create":
            self._prepare(spec)
            self._ensure_running(spec)
        elif operation == "start":
            self._require_workdir(spec, operation)
            self._ensure_running(spec)
        elif operation == "stop":
            if self.workdir(spec.instance_id).is_dir():
                for p in _members(self._anchors(spec.instance_id)):
                    _signal(p, signal.SIGTERM)
        elif operation == "reboot":
            self._require_workdir(spec, operation)
            self._begin_reboot(spec)
        else:  # destroy
            self._destroy_step(spec.instance_id)

    def poll(self, spec: InstanceSpec, operation: Operation, since: datetime, now: datetime) -> Progress:
        check_operation(operation)
        elapsed = _elapsed(since, now)
        iid = spec.instance_id
        if operation in ("create", "start"):
            if not self.workdir(iid).is_dir():
                return _failed("boot_failed", f"instance {iid} has no working directory on this host")
            rec = ProcessRecord.load(self.run_dir(iid) / "init.pid")
            if rec is None:
                return _failed("boot_failed", f"no init process was started for instance {iid}")
            return self._boot_progress(iid, rec, elapsed, self.boot_timeout)
        if operation == "stop":
            if not self.workdir(iid).is_dir():
                return Progress(done=True, ok=True, percent=100)
            return self._stop_step(iid, elapsed)
        if operation == "reboot":
            return self._reboot_step(spec, elapsed)
        # destroy
        try:
            gone = self._destroy_step(iid)
        except DriverError as exc:
            return _failed(exc.code, exc.message)
        return Progress(done=True, ok=True, percent=100) if gone else Progress(done=False, ok=False, percent=50)

    def close(self) -> None:
        """Reap what has exited. Running instances are left running — they outlive the API
        and worker processes by design; their Popen objects stay in the per-process
        registry so that whichever driver runs next still reaps them."""
        _reap_children()

    # -- more processes in a running instance (the terminal of Issue 5) --

    def spawn(
        self,
        instance_id: uuid.UUID,
        argv: Sequence[str],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        controlling_tty: bool = False,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside the running instance's sandbox, in a session of its own.

        Same scrubbed environment (plus `extra_env`, e.g. TERM), same limits, cwd = the
        instance's home. With `controlling_tty`, stdin must be a terminal (a pty slave) and
        becomes the session's controlling terminal, as a login shell expects. The process
        is recorded under run/sessions/ so that stop and destroy signal its whole session
        with the instance. Output defaults to console.log.
        """
        run = self.run_dir(instance_id)
        manifest = _read_json(self.workdir(instance_id) / "manifest.json")
        if manifest is None:
            raise DriverError("instance_missing", f"instance {instance_id} has no working directory on this host")
        with self._lock(instance_id):
            init = ProcessRecord.load(run / "init.pid")
            if init is None or not init.alive():
                raise DriverError("not_running", f"instance {instance_id} is not running")
            sizes = manifest.get("sizes", {})
            env = self._environment(instance_id, str(manifest.get("name", "")))
            env.update(extra_env or {})
            sessions = run / "sessions"
            _mkdir_private(sessions)
            proc = self._popen(
                instance_id,
                argv,
                env=env,
                limits=self._limits(int(sizes.get("disk_gb", 1)), int(sizes.get("memory_mb", 0))),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                controlling_tty=controlling_tty,
                error_code="host_error",
            )
            st = read_stat(proc.pid)
            start_ticks = st.start_ticks if st is not None else 0
            _adopt(proc, run, start_ticks)
            _write_json(
                sessions / f"{proc.pid}.json",
                {"pid": proc.pid, "start_ticks": start_ticks, "argv": list(argv), "started_at": _now_iso()},
            )
            return proc

    # -- internals --

    def _prepare(self, spec: InstanceSpec) -> None:
        """The working directory, its subdirectories and the manifest (create only)."""
        try:
            if not self.instances_dir.is_dir():
                self.instances_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            wd = self.workdir(spec.instance_id)
            for d in (wd, wd / "root", wd / "run"):
                _mkdir_private(d)
            _write_json(
                wd / "manifest.json",
                {
                    "id": str(spec.instance_id),
                    "name": spec.name,
                    "organization_id": str(spec.organization_id),
                    "image": spec.image,
                    "host": {"id": str(spec.host_id), "name": spec.host_name},
                    "attempt": spec.attempt,
                    "sizes": {
                        "vcpus": spec.vcpus,
                        "memory_mb": spec.memory_mb,
                        "disk_gb": spec.disk_gb,
                        "gpus": spec.gpus,
                    },
                },
            )
        except OSError as exc:
            raise DriverError(
                "host_error", f"cannot prepare the working directory of instance {spec.instance_id}: {exc}"
            ) from exc

    def _require_workdir(self, spec: InstanceSpec, operation: str) -> None:
        if not (self.workdir(spec.instance_id) / "run").is_dir():
            raise DriverError(
                "instance_missing",
                f"cannot {operation} instance {spec.instance_id}: it has no working directory on this host",
            )

    @contextlib.contextmanager
    def _lock(self, instance_id: uuid.UUID) -> Iterator[None]:
        """Hold run/lock. If destroy removed the directory while we waited, the lock we got
        is on an unlinked file; then the caller gets FileNotFoundError (nothing to lock)."""
        path = self.run_dir(instance_id) / "lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # replaced under us (destroy, then create): lock the new one
        try:
            yield
        finally:
            os.close(fd)

    def _anchors(self, instance_id: uuid.UUID) -> list[ProcessRecord]:
        """The init and every spawned session: the leaders whose sessions make the instance."""
        run = self.run_dir(instance_id)
        anchors = []
        init = ProcessRecord.load(run / "init.pid")
        if init is not None:
            anchors.append(init)
        sessions = run / "sessions"
        if sessions.is_dir():
            for path in sorted(sessions.glob("*.json")):
                rec = ProcessRecord.load(path)
                if rec is not None:
                    anchors.append(rec)
        return anchors

    def _prune_sessions(self, instance_id: uuid.UUID) -> None:
        """Forget spawned sessions that have no live process left."""
        sessions = self.run_dir(instance_id) / "sessions"
        if not sessions.is_dir():
            return
        for path in sessions.glob("*.json"):
            rec = ProcessRecord.load(path)
            if rec is None or not _members([rec]):
                path.unlink(missing_ok=True)

    def _booted(self, instance_id: uuid.UUID, rec: ProcessRecord) -> bool:
        marker = ProcessRecord.load(self.run_dir(instance_id) / "booted")
        return marker == rec

    def _boot_progress(self, iid: uuid.UUID, rec: ProcessRecord, elapsed: float, timeout: float) -> Progress:
        if rec.alive():
            if self._booted(iid, rec):
                return Progress(done=True, ok=True, percent=100)
            if elapsed >= timeout:
                return _failed(
                    "boot_timeout",
                    f"instance {iid}: init (pid {rec.pid}) has not booted after {timeout:g}s{self._console_tail(iid)}",
                )
            return Progress(done=False, ok=False, percent=min(99, 10 + int(80 * elapsed / timeout)))
        exit_info = _read_json(self.run_dir(iid) / "exit.json")
        how = "is gone"
        if (
            exit_info is not None
            and exit_info.get("pid") == rec.pid
            and exit_info.get("start_ticks") == rec.start_ticks
        ):
            status = exit_info.get("status")
            how = f"was killed by signal {-status}" if isinstance(status, int) and status < 0 else f"exited ({status})"
        return _failed("boot_failed", f"instance {iid}: init (pid {rec.pid}) {how}{self._console_tail(iid)}")

    def _console_tail(self, instance_id: uuid.UUID) -> str:
        """The console's last line, for error messages: usually the reason a boot failed."""
        try:
            with open(self.console_log(instance_id), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 4096))
                lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return f"; console: {lines[-1].strip()[:200]}" if lines else ""

    def _environment(self, instance_id: uuid.UUID, name: str) -> dict[str, str]:
        return {
            "HOME": str(self.home(instance_id)),
            "PATH": SANDBOX_PATH,
            "LANG": "C.UTF-8",
            "HANGAR_INSTANCE_ID": str(instance_id),
            "HANGAR_INSTANCE_NAME": name,
            "HANGAR_RUN_DIR": str(self.run_dir(instance_id)),
        }

    def _limits(self, disk_gb: int, memory_mb: int) -> Limits:
        nproc = None
        if os.geteuid() != 0:
            uid = os.getuid()
            mine = 0
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        mine += entry.stat().st_uid == uid
            nproc = mine + self.nproc_headroom
        return Limits(
            nofile=self.nofile,
            fsize=max(1, disk_gb) * 1024**3,
            address_space=max(MIN_ADDRESS_SPACE_MB, memory_mb) * 1024**2,
            nproc=nproc,
        )

    def _popen(
        self,
        instance_id: uuid.UUID,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        limits: Limits,
        stdin: int | IO[Any] | None,
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
        controlling_tty: bool,
        error_code: str,
    ) -> subprocess.Popen[bytes]:
        console = os.open(self.console_log(instance_id), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            return subprocess.Popen(  # noqa: S603  # argv is the platform's, never a tenant's string
                list(argv),
                stdin=stdin,
                stdout=console if stdout is None else stdout,
                stderr=console if stderr is None else stderr,
                cwd=self.home(instance_id),
                env=env,
                start_new_session=True,
                umask=0o077,
                close_fds=True,
                preexec_fn=_sandbox_preexec(limits.rlimits(), controlling_tty),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise DriverError(error_code, f"cannot start {argv[0]} in instance {instance_id}: {exc}") from exc
        finally:
            os.close(console)

    def _spawn_init(self, spec: InstanceSpec) -> ProcessRecord:
        """Start a new init. Caller holds the lock and has checked that none is alive."""
        run = self.run_dir(spec.instance_id)
        (run / "booted").unlink(missing_ok=True)
        proc = self._popen(
            spec.instance_id,
            self.init_command,
            env=self._environment(spec.instance_id, spec.name),
            limits=self._limits(spec.disk_gb, spec.memory_mb),
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
            controlling_tty=False,
            error_code="boot_failed",
        )
        # Our unreaped child, so its /proc entry exists even if it has already exited.
        st = read_stat(proc.pid)
        rec = ProcessRecord(proc.pid, st.start_ticks if st is not None else 0)
        _adopt(proc, run, rec.start_ticks)
        _write_json(run / "init.pid", {"pid": rec.pid, "start_ticks": rec.start_ticks, "started_at": _now_iso()})
        return rec

    def _ensure_running(self, spec: InstanceSpec) -> None:
        """Start the init unless one is alive: what makes begin(create|start) idempotent."""
        try:
            with self._lock(spec.instance_id):
                rec = ProcessRecord.load(self.run_dir(spec.instance_id) / "init.pid")
                if rec is not None and rec.alive():
                    return
                self._spawn_init(spec)
        except FileNotFoundError as exc:
            raise DriverError("instance_missing", f"instance {spec.instance_id} was destroyed meanwhile") from exc

    def _kill_all(self, instance_id: uuid.UUID) -> bool:
        """SIGKILL every process of the instance; True once none is left (waits briefly)."""
        anchors = self._anchors(instance_id)
        deadline = time.monotonic() + _KILL_SETTLE_SECONDS
        while True:
            members = _members(anchors)
            if not members:
                return True
            for p in members:
                _signal(p, signal.SIGKILL)
            if time.monotonic() >= deadline:
                return not _members(anchors)
            time.sleep(0.01)

    def _stop_step(self, iid: uuid.UUID, elapsed: float) -> Progress:
        members = _members(self._anchors(iid))
        if members and elapsed >= self.stop_grace and self._kill_all(iid):
            members = []
        if not members:
            self._prune_sessions(iid)
            return Progress(done=True, ok=True, percent=100)
        percent = min(99, int(100 * elapsed / self.stop_grace)) if self.stop_grace > 0 else 99
        return Progress(done=False, ok=False, percent=percent)

    def _begin_reboot(self, spec: InstanceSpec) -> None:
        """Record which init is being replaced and ask it to stop. A begin while the previous
        reboot is still under way (its replacement not yet booted, not yet dead) joins it; a
        reboot is an event, so a begin after that one finished reboots again."""
        run = self.run_dir(spec.instance_id)
        try:
            with self._lock(spec.instance_id):
                current = ProcessRecord.load(run / "init.pid")
                previous = _read_json(run / "reboot.json")
                if previous is not None and self._reboot_in_progress(spec.instance_id, previous, current):
                    return
                old = None if current is None else {"pid": current.pid, "start_ticks": current.start_ticks}
                _write_json(run / "reboot.json", {"old": old, "requested_at": _now_iso()})
        except FileNotFoundError as exc:
            raise DriverError("instance_missing", f"instance {spec.instance_id} was destroyed meanwhile") from exc
        for p in _members(self._anchors(spec.instance_id)):
            _signal(p, signal.SIGTERM)

    def _reboot_in_progress(self, iid: uuid.UUID, record: Mapping[str, Any], current: ProcessRecord | None) -> bool:
        old = _old_of(record)
        if current is None or current == old:
            return True  # the replacement has not been started yet
        return current.alive() and not self._booted(iid, current)

    def _reboot_step(self, spec: InstanceSpec, elapsed: float) -> Progress:
        iid = spec.instance_id
        run = self.run_dir(iid)
        if not run.is_dir():
            return _failed("boot_failed", f"instance {iid} has no working directory on this host")
        try:
            with self._lock(iid):
                record = _read_json(run / "reboot.json")
                if record is None:
                    return _failed("boot_failed", f"no reboot was begun for instance {iid}")
                old = _old_of(record)
                current = ProcessRecord.load(run / "init.pid")
                if current is None or current == old:
                    members = _members(self._anchors(iid))
                    if members and elapsed >= self.stop_grace and self._kill_all(iid):
                        members = []
                    if members:
                        percent = min(49, int(50 * elapsed / self.stop_grace)) if self.stop_grace > 0 else 49
                        return Progress(done=False, ok=False, percent=percent)
                    self._prune_sessions(iid)
                    current = self._spawn_init(spec)
        except FileNotFoundError:
            return _failed("boot_failed", f"instance {iid} was destroyed during the reboot")
        return self._boot_progress(iid, current, elapsed, self.stop_grace + self.boot_timeout)

    def _destroy_step(self, iid: uuid.UUID) -> bool:
        """Kill everything and remove the working directory; True when it is gone."""
        wd = self.workdir(iid)
        if not wd.exists():
            return True
        try:
            if not self.run_dir(iid).is_dir():  # half-created: no lock, no process to kill
                _rmtree(wd)
                return not wd.exists()
            with self._lock(iid):
                if not self._kill_all(iid):
                    return False
                _rmtree(wd)
        except FileNotFoundError:
            pass  # another process destroyed it while we waited for the lock
        except OSError as exc:
            raise DriverError("host_error", f"cannot remove the working directory of instance {iid}: {exc}") from exc
        return not wd.exists()


def _old_of(record: Mapping[str, Any]) -> ProcessRecord | None:
    old = record.get("old")
    if not isinstance(old, dict):
        return None
    try:
        return ProcessRecord(pid=int(old["pid"]), start_ticks=int(old["start_ticks"]))
    except (KeyError, TypeError, ValueError):
        return None


def _failed(code: str, message: str) -> Progress:
    return Progress(done=True, ok=False, percent=100, error_code=code, error_message=message)
