"""`hangar instances exec` and `hangar instances terminal` against a live server (the terminal
gateway, hangar.terminal.v1) — the real console script in a subprocess, the interactive one on
a pseudo-terminal (pty.fork), so raw mode, SIGWINCH and the restoring of the terminal are the
real thing.

The server runs the `local` driver: instances are sandboxed processes on this machine and a
terminal is a real PTY running the image's login shell (hangar/drivers/terminal.py), so what
is typed really runs. One signup and one running instance per module.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, start_server, stop_server

from .helpers import HANGAR, PASSWORD, SCRUBBED, Result, hangar


@dataclass
class Account:
    config: Path
    url: str
    secret: str

    def run(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
        return hangar(*args, config=self.config, stdin=stdin, env=env)

    def ok(self, *args: str) -> Any:
        result = self.run(*args, "--output", "json")
        assert result.code == 0, result
        return result.json() if result.out.strip() else None


@pytest.fixture(scope="module")
def live_server(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`hangar-server` with the `local` driver: instances are sandboxed processes on this machine."""
    live = start_server(
        databases.dedicated(), tmp_path_factory.mktemp("hangar-terminal-live") / "server.log",
        HANGAR_DRIVER="local", HANGAR_BILLING_SIGNUP_CREDIT="10000000",
    )  # fmt: skip
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture(scope="module")
def account(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Account:
    config = tmp_path_factory.mktemp("hangar-terminal") / "config.toml"
    email = f"tess-{uuid.uuid4().hex[:10]}@example.com"
    result = hangar(
        "signup", "--email", email, "--password", PASSWORD, "--organization", "Term", "--output", "json",
        config=config, url=live_server.url,
    )  # fmt: skip
    assert result.code == 0, result
    return Account(config, live_server.url, result.json()["secret"])


def _launchable(account: Account) -> tuple[str, str, str]:
    """(region, instance type, image) for a CPU instance a host has room for, from the catalogue."""
    images = [i for i in account.ok("images")["data"] if i["status"] == "active"]
    for kind in account.ok("instance-types")["data"]:
        regions = [a["region"] for a in kind["availability"] if a["available"]]
        fitting = [i for i in images if i["min_disk_gb"] <= kind["disk_gb"]]
        if kind["gpus"] == 0 and regions and fitting:
            return regions[0], kind["slug"], fitting[0]["slug"]
    raise AssertionError("the catalogue offers no CPU instance type with room")


@pytest.fixture(scope="module")
def instance_id(account: Account) -> str:
    region, kind, image = _launchable(account)
    created = account.run(
        "instances", "create", "--name", "term-1", "--region", region, "--instance-type", kind, "--image", image,
        "--wait", "--timeout", "120", "--output", "json",
    )  # fmt: skip
    assert created.code == 0, created
    instance = created.json()["instance_id"]
    assert account.ok("instances", "get", instance)["state"] == "running"
    return str(instance)


# --- exec ----------------------------------------------------------------------------------------


def test_exec_prints_the_output_and_exits_0(account: Account, instance_id: str) -> None:
    result = account.run("instances", "exec", instance_id, "--", "echo", "hi")
    assert (result.code, result.out, result.err) == (0, "hi\n", ""), result


def test_exec_passes_the_exit_code_through(account: Account, instance_id: str) -> None:
    result = account.run("instances", "exec", instance_id, "--", "sh", "-c", "echo failing; exit 3")
    assert (result.code, result.out) == (3, "failing\n"), result
    assert result.err == ""


def test_exec_keeps_double_dashes_and_options_of_the_remote_command(account: Account, instance_id: str) -> None:
    result = account.run("instances", "exec", instance_id, "--", "sh", "-c", 'printf "%s|" "$@"', "sh", "--", "-l")
    assert (result.code, result.out) == (0, "--|-l|"), result


def test_exec_pipes_stdin_through_and_ends_it(account: Account, instance_id: str) -> None:
    result = account.run(
        "instances", "exec", instance_id, "--", "sh", "-c", "read a; read b; echo got:$a+$b", stdin="x\ny\n"
    )
    assert result.code == 0, result
    assert result.out.splitlines()[-1] == "got:x+y"
    # At the end of stdin the command gets an end of file: `cat` ends instead of waiting.
    counted = account.run("instances", "exec", instance_id, "--", "wc", "-l", stdin="1\n2\n3\n")
    assert counted.code == 0, counted
    assert counted.out.splitlines()[-1].strip() == "3"


def test_exec_of_an_unknown_program_fails_cleanly(account: Account, instance_id: str) -> None:
    result = account.run("instances", "exec", instance_id, "--", "no-such-program-here")
    assert result.code != 0 and "Traceback" not in result.err, result


def test_exec_without_a_command_is_a_usage_error(account: Account, instance_id: str) -> None:
    result = account.run("instances", "exec", instance_id)
    assert result.code == 2 and "give the command to run after `--`" in result.err, result


def test_exec_on_an_unknown_instance_is_a_404_and_exit_255(account: Account) -> None:
    result = account.run("instances", "exec", str(uuid.uuid4()), "--", "true")
    assert result.code == 255, result
    assert "(404)" in result.err and "Traceback" not in result.err


def test_exec_without_the_console_scope_is_refused(account: Account, instance_id: str) -> None:
    created = account.ok("api-keys", "create", "--name", "read-only", "--scope", "instances:read")
    result = account.run("instances", "exec", instance_id, "--", "true", env={"HANGAR_API_KEY": created["secret"]})
    assert result.code == 255 and "(403)" in result.err and "instances:console" in result.err, result


# --- the interactive terminal, on a pseudo-terminal ---------------------------------------------


# The child of pty.fork: runs `hangar ARGS` on the pseudo-terminal, then reports its exit status
# and whether the terminal's settings are what they were before (what the user's shell would see).
WRAPPER = """
import subprocess, sys, termios
before = termios.tcgetattr(0)
child = subprocess.Popen(sys.argv[1:])
print(f"[pid={child.pid}]", flush=True)
code = child.wait()
print(f"[exit={code} restored={termios.tcgetattr(0) == before}]", flush=True)
"""


PROMPT = r"[#$] (\x1b\[\?2004h)?$"  # the end of bash's prompt (bracketed paste may follow)


def line(text: str) -> str:
    """A pattern for `text` as a whole line of the remote's output (after its CR or LF)."""
    return rf"[\r\n]{re.escape(text)}\r\n"


class Pty:
    """`hangar ARGS` with a pseudo-terminal as its stdin/stdout/stderr (pty.fork)."""

    def __init__(self, args: list[str], config: Path, cols: int = 100, rows: int = 30) -> None:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(HANGAR_CONFIG=str(config), TERM="xterm")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a new session whose controlling terminal is the pty
            try:
                os.execve(sys.executable, [sys.executable, "-c", WRAPPER, str(HANGAR), *args], env)
            finally:
                os._exit(127)
        self.resize(cols, rows)
        self.output = b""
        self.hangar_pid = int(self.read_until(r"\[pid=(\d+)\]").group(1))

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def lflag(self) -> int:
        """The local modes of the terminal (ICANON, ECHO, ISIG…) as the programs on it see them."""
        return int(termios.tcgetattr(self.fd)[3])

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def read_until(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Read until `pattern` matches what came after the last match; the match."""
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern)
        while True:
            found = compiled.search(self.output.decode(errors="replace"))
            if found:
                self.output = self.output.decode(errors="replace")[found.end() :].encode()
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} did not appear; got {self.output.decode(errors='replace')!r}")
            if select.select([self.fd], [], [], remaining)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: every process on the terminal is gone
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{pattern!r} did not appear before the end: {self.output!r}")
                self.output += chunk

    def finish(self, timeout: float = 20.0) -> tuple[int, bool]:
        """(hangar's exit status, whether it left the terminal's settings as it found them)."""
        found = self.read_until(r"\[exit=(-?\d+) restored=(True|False)\]", timeout)
        return int(found.group(1)), found.group(2) == "True"

    def close(self) -> None:
        for pid in (self.hangar_pid, self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def terminal(account: Account, instance_id: str) -> Iterator[Any]:
    opened: list[Pty] = []

    def open_terminal(cols: int = 100, rows: int = 30) -> Pty:
        session = Pty(["instances", "terminal", instance_id], account.config, cols, rows)
        opened.append(session)
        session.read_until(PROMPT)  # attached (raw mode on), the remote shell waits for input
        return session

    yield open_terminal
    for session in opened:
        session.close()


def test_terminal_runs_what_is_typed_and_exits_with_its_code(terminal: Any) -> None:
    session = terminal()
    marker = uuid.uuid4().hex[:8]
    session.send(f"echo hello-{marker}\r")
    session.read_until(line(f"hello-{marker}"))
    session.send("exit 5\r")
    assert session.finish() == (5, True)


def test_terminal_is_raw_while_attached_and_restored_after(terminal: Any) -> None:
    session = terminal()
    session.send("echo ready\r")
    session.read_until(line("ready"))
    raw = session.lflag()
    assert not raw & termios.ICANON and not raw & termios.ECHO and not raw & termios.ISIG, "raw while attached"
    # ^C goes to the remote shell (it interrupts `sleep` there) instead of ending the CLI.
    session.send("sleep 30\r")
    time.sleep(0.5)
    session.send("\x03")
    session.send("echo after-interrupt\r")
    session.read_until(line("after-interrupt"))
    session.send("exit\r")
    assert session.finish() == (0, True)


def test_a_resize_reaches_the_remote(terminal: Any) -> None:
    session = terminal(cols=100, rows=30)
    session.send("stty size\r")
    session.read_until(line("30 100"))
    session.resize(132, 43)  # the kernel sends SIGWINCH to the terminal's foreground group: hangar
    deadline = time.monotonic() + 10
    while True:
        session.send("stty size\r")
        try:
            session.read_until(line("43 132"), timeout=1.0)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
    session.send("exit 0\r")
    assert session.finish() == (0, True)


def test_terminal_restores_the_terminal_when_killed(terminal: Any) -> None:
    session = terminal()
    session.send("echo up\r")
    session.read_until(line("up"))
    os.kill(session.hangar_pid, signal.SIGTERM)
    assert session.finish() == (143, True)


def test_terminal_with_a_piped_stdin_runs_it_as_a_script(account: Account, instance_id: str) -> None:
    result = account.run("instances", "terminal", instance_id, stdin="echo scripted-$((6*7))\nexit 4\n")
    assert result.code == 4, result
    assert "scripted-42" in result.out
