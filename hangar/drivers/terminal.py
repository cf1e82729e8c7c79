"""Attaching a terminal to an instance: the host side of the Terminal Gateway (Issue 5).

`make_terminal_host(settings).open(...)` starts a shell (or one command) in a running
instance and returns an `Attachment`, one async interface for both drivers:

    await a.read() -> bytes        # output (stdout and stderr merged); b"" once it is over
    await a.write(data)            # input, as typed (the PTY's line discipline echoes it)
    a.resize(cols, rows)           # TIOCSWINSZ (the program gets SIGWINCH)
    await a.wait() -> int          # the exit status; 128 + n when killed by signal n
    a.kill()                       # end it and everything it started; idempotent
    a.close()                      # release the host resources (after kill / wait)

- `local`: a real pseudo-terminal. The slave side becomes the controlling terminal of a new
  session started by `LocalDriver.spawn` inside the instance's sandbox (its environment,
  limits, cwd = the instance's `root/`), running the image's login shell (`bash -l`, else
  `sh -l`) or the command's argv (no shell). The master side is read and written through the
  event loop (add_reader / add_writer on a non-blocking fd: no thread per session, none per
  byte); the exit is awaited on a pidfd.
- `sim`: `SimShell`, a small deterministic shell for tests: a cooked line discipline (echo,
  backspace, ^C, ^D), `$RANDOM` (deterministic), and `echo`, `exit N`, `uname [-a]`, `stty size`, `pwd`, `true`,
  `false`, `touch F`, `cat F`, `echo … > F`, `ls` over an in-memory file system per instance
  (shared by the sessions of one process; `sim_files(instance_id)`).

`open` is blocking (file locks, fork): call it in a worker thread. It raises `AttachError`
with a code: "not_running" (the host has no live instance), "instance_missing",
"command_not_found" (the command's program is not on the sandbox PATH), "host_error".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import struct
import subprocess
import termios
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hangar.drivers import DriverError

if TYPE_CHECKING:
    from hangar.config import Settings
    from hangar.drivers.local import LocalDriver

__all__ = ["AttachError", "Attachment", "PtyAttachment", "SimShell", "TerminalHost", "make_terminal_host", "sim_files"]

TERM = "xterm-256color"
READ_CHUNK = 65536


class AttachError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Attachment(Protocol):
    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def resize(self, cols: int, rows: int) -> None: ...
    async def wait(self) -> int: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


def exit_status(returncode: int) -> int:
    """A shell's view of a Popen returncode: 128 + n for a death by signal n."""
    return 128 + -returncode if returncode < 0 else returncode & 0xFF


class TerminalHost(Protocol):
    name: str

    def open(self, instance_id: uuid.UUID, *, command: Sequence[str] | None, cols: int, rows: int) -> Attachment: ...


def make_terminal_host(settings: Settings) -> TerminalHost:
    if settings.driver == "local":
        from hangar.drivers.local import LocalDriver

        return LocalTerminalHost(LocalDriver(settings.instances_dir))
    if settings.driver == "sim":
        return SimTerminalHost()
    raise ValueError(f"unknown host driver {settings.driver!r}; expected 'local' or 'sim'")


# --- local: a real PTY --------------------------------------------------------------------


def _winsize(cols: int, rows: int) -> bytes:
    return struct.pack("HHHH", rows, cols, 0, 0)


class LocalTerminalHost:
    name = "local"

    def __init__(self, driver: LocalDriver) -> None:
        self.driver = driver

    def login_shell(self) -> list[str]:
        from hangar.drivers.local import SANDBOX_PATH

        for shell in ("bash", "sh"):
            found = shutil.which(shell, path=SANDBOX_PATH)
            if found:
                return [found, "-l"]
        raise AttachError("host_error", "no login shell (bash or sh) on the sandbox PATH")

    def _argv(self, instance_id: uuid.UUID, command: Sequence[str] | None) -> list[str]:
        from hangar.drivers.local import SANDBOX_PATH

        if not command:
            return self.login_shell()
        program = command[0]
        if "/" in program:
            path = Path(program) if program.startswith("/") else self.driver.home(instance_id) / program
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise AttachError("command_not_found", f"{program}: no such executable")
        elif shutil.which(program, path=SANDBOX_PATH) is None:
            raise AttachError("command_not_found", f"{program}: command not found")
        return list(command)

    def open(self, instance_id: uuid.UUID, *, command: Sequence[str] | None, cols: int, rows: int) -> PtyAttachment:
        argv = self._argv(instance_id, command)
        master, slave = os.openpty()  # both non-inheritable (PEP 446): the child gets only stdio
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, _winsize(cols, rows))
            try:
                proc = self.driver.spawn(
                    instance_id,
                    argv,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    controlling_tty=True,
                    extra_env={"TERM": TERM, "COLUMNS": str(cols), "LINES": str(rows)},
                )
            except DriverError as exc:
                raise AttachError(exc.code, exc.message) from exc
            except FileNotFoundError as exc:  # the instance was destroyed under us
                raise AttachError("instance_missing", f"instance {instance_id} has no working directory") from exc
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return PtyAttachment(self.driver, instance_id, proc, master)


class PtyAttachment:
    """The master side of a PTY whose slave runs a process of the instance."""

    def __init__(self, driver: LocalDriver, instance_id: uuid.UUID, proc: subprocess.Popen[bytes], fd: int) -> None:
        from hangar.drivers.local import read_stat

        self._driver = driver
        self._instance_id = instance_id
        self.proc = proc
        self.fd = fd
        st = read_stat(proc.pid)
        self._start_ticks = st.start_ticks if st is not None else 0
        self._closed = False
        self._status: int | None = None
        self._lock = threading.Lock()

    @staticmethod
    async def _readable(fd: int) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, done)
        try:
            await fut
        finally:
            loop.remove_reader(fd)

    async def _ready(self, writer: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not fut.done():
                fut.set_result(None)

        (loop.add_writer if writer else loop.add_reader)(self.fd, done)
        try:
            await fut
        finally:
            (loop.remove_writer if writer else loop.remove_reader)(self.fd)

    async def read(self) -> bytes:
        while not self._closed:
            try:
                return os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                await self._ready(writer=False)
            except OSError as exc:
                if exc.errno == errno.EIO:  # every slave fd is closed: the session is over
                    return b""
                raise
        return b""

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                written = os.write(self.fd, view)
                view = view[written:]
            except BlockingIOError:
                await self._ready(writer=True)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return  # nobody reads any more; the exit is on its way
                raise

    def resize(self, cols: int, rows: int) -> None:
        if not self._closed:
            fcntl.ioctl(self.fd, termios.TIOCSWINSZ, _winsize(cols, rows))

    async def wait(self) -> int:
        if self._status is not None:
            return self._status
        try:
            pidfd = os.pidfd_open(self.proc.pid)
        except OSError:  # already reaped (by the driver's registry) or no pidfds: poll
            pidfd = None
        if pidfd is not None:
            try:
                while self.proc.poll() is None:
                    await self._readable(pidfd)
            finally:
                os.close(pidfd)
        while self.proc.poll() is None:
            await asyncio.sleep(0.02)
        assert self.proc.returncode is not None
        self._status = exit_status(self.proc.returncode)
        return self._status

    def kill(self) -> None:
        """SIGKILL every process of this terminal's session (background jobs have process
        groups of their own, but not sessions), never a reused pid."""
        from hangar.drivers.local import ProcessRecord, _members, _signal

        anchor = ProcessRecord(self.proc.pid, self._start_ticks)
        for _ in range(3):
            members = _members([anchor])
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            for p in members:
                _signal(p, signal.SIGKILL)
            if not members:
                break
        self.proc.poll()
        with contextlib.suppress(OSError):
            (self._driver.run_dir(self._instance_id) / "sessions" / f"{self.proc.pid}.json").unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            os.close(self.fd)


# --- sim: a deterministic echo shell --------------------------------------------------------

_SIM_FILES: dict[uuid.UUID, dict[str, bytes]] = {}
_SIM_LOCK = threading.Lock()
SIM_UNAME = "Linux sim-host 6.1.0-hangar-sim #1 SMP PREEMPT_DYNAMIC x86_64 GNU/Linux"
SIM_PROMPT = b"$ "


def sim_files(instance_id: uuid.UUID) -> dict[str, bytes]:
    """The simulated file system of an instance in this process (name → content)."""
    with _SIM_LOCK:
        return _SIM_FILES.setdefault(instance_id, {})


class SimTerminalHost:
    name = "sim"

    def open(self, instance_id: uuid.UUID, *, command: Sequence[str] | None, cols: int, rows: int) -> SimShell:
        if command and command[0] not in SimShell.BUILTINS:
            raise AttachError("command_not_found", f"{command[0]}: command not found")
        return SimShell(instance_id, command=command, cols=cols, rows=rows)


@dataclass
class _Result:
    output: bytes
    status: int
    exit: bool = False


class SimShell:
    """See the module docstring. Output is queued; nothing runs outside the event loop."""

    BUILTINS = frozenset({"echo", "exit", "uname", "stty", "pwd", "true", "false", "touch", "cat", "ls", "rm"})

    def __init__(self, instance_id: uuid.UUID, *, command: Sequence[str] | None, cols: int, rows: int) -> None:
        self.instance_id = instance_id
        self.cols, self.rows = cols, rows
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._line = bytearray()
        self._status: int | None = None
        self._done = asyncio.Event()
        self.last = 0
        self._draws = 0
        if command:
            result = self._run(list(command))
            self._out.put_nowait(result.output)
            self._finish(result.status)
        else:
            self._out.put_nowait(SIM_PROMPT)

    def _finish(self, status: int) -> None:
        if self._status is None:
            self._status = status
            self._out.put_nowait(b"")
            self._done.set()

    async def read(self) -> bytes:
        if self._status is not None and self._out.empty():
            return b""
        chunks = [await self._out.get()]
        while chunks[-1] and not self._out.empty():  # coalesce what is queued, up to an EOF
            chunks.append(self._out.get_nowait())
        if not chunks[-1] and len(chunks) > 1:
            chunks.pop()
            self._out.put_nowait(b"")  # keep the EOF for the next read
        return b"".join(chunks)

    async def write(self, data: bytes) -> None:
        for byte in data:
            if self._status is not None:
                return
            char = bytes([byte])
            if char in (b"\r", b"\n"):
                line = self._line.decode("utf-8", "replace")
                self._line.clear()
                result = self._interpret(line)
                self._out.put_nowait(b"\r\n" + result.output)
                if result.exit:
                    self._finish(result.status)
                    return
                self.last = result.status
                self._out.put_nowait(SIM_PROMPT)
            elif char in (b"\x7f", b"\x08"):
                if self._line:
                    self._line.pop()
                    self._out.put_nowait(b"\b \b")
            elif char == b"\x03":
                self._line.clear()
                self.last = 130
                self._out.put_nowait(b"^C\r\n" + SIM_PROMPT)
            elif char == b"\x04":
                if not self._line:
                    self._out.put_nowait(b"exit\r\n")
                    self._finish(self.last)
                    return
            else:
                self._line += char
                self._out.put_nowait(char)

    def resize(self, cols: int, rows: int) -> None:
        self.cols, self.rows = cols, rows

    async def wait(self) -> int:
        await self._done.wait()
        assert self._status is not None
        return self._status

    def kill(self) -> None:
        self._finish(128 + signal.SIGKILL)

    def close(self) -> None:
        self.kill()

    def _interpret(self, line: str) -> _Result:
        self._draws += 1  # $RANDOM: deterministic per instance and line, like the rest of sim
        draw = hashlib.blake2b(f"{self.instance_id}:{self._draws}".encode(), digest_size=2).digest()
        line = line.replace("$RANDOM", str(int.from_bytes(draw, "big") % 32768))
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return _Result(f"sim: syntax error: {exc}\r\n".encode(), 2)
        if not words:
            return _Result(b"", self.last)
        return self._run(words)

    def _run(self, words: list[str]) -> _Result:
        target = None
        if len(words) >= 2 and words[-2] == ">":
            target, words = words[-1], words[:-2]
        name, args = words[0], words[1:]
        files = sim_files(self.instance_id)
        if name == "exit":
            if args and not args[0].lstrip("-").isdigit():
                return _Result(f"sim: exit: {args[0]}: numeric argument required\r\n".encode(), 2, exit=True)
            return _Result(b"", int(args[0]) & 0xFF if args else self.last, exit=True)
        text: bytes
        status = 0
        if name == "echo":
            text = (" ".join(args) + "\n").encode()
        elif name == "uname":
            text = (SIM_UNAME if "-a" in args else "Linux").encode() + b"\n"
        elif name == "stty" and args == ["size"]:
            text = f"{self.rows} {self.cols}\n".encode()
        elif name == "pwd":
            text = b"/root\n"
        elif name in ("true", "false"):
            text, status = b"", 0 if name == "true" else 1
        elif name == "touch":
            for arg in args:
                files.setdefault(arg, b"")
            text = b""
        elif name == "rm":
            missing = [arg for arg in args if files.pop(arg, None) is None]
            text = b"".join(f"rm: cannot remove '{arg}': No such file or directory\n".encode() for arg in missing)
            status = 1 if missing else 0
        elif name == "ls":
            text = "".join(f"{n}\n" for n in sorted(files)).encode()
        elif name == "cat":
            missing = [arg for arg in args if arg not in files]
            if missing:
                text = b"".join(f"cat: {arg}: No such file or directory\n".encode() for arg in missing)
                status = 1
            else:
                text = b"".join(files[arg] for arg in args)
        else:
            return _Result(f"sim: {name}: command not found\r\n".encode(), 127)
        if target is not None and status == 0:
            files[target] = text
            text = b""
        return _Result(text.replace(b"\n", b"\r\n"), status)
