"""The `local` driver: a real login shell in a real PTY inside the instance's sandbox, through
the live gateway. What is typed runs (files appear in the instance's root/), exit codes pass
through, resizes reach the PTY (`stty size`), refusals run nothing, and stopping the instance
ends the shell."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from terminal_support import Tenant, Terminal, run

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"HANGAR_DRIVER": "local"}


def home(server: Any, instance: str) -> Path:
    return Path(server.log).parent / "instances" / instance / "root"


def test_a_real_shell_runs_what_is_typed_and_passes_its_exit_code(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance, cols=100, rows=30)
    marker = f"made-{uuid.uuid4().hex[:8]}"

    async def scenario() -> Any:
        term = await Terminal.open(created["url"], created["ticket"])
        await term.type(f"echo $((6*7)) && touch {marker} && pwd && stty size\r")
        await term.expect("42")
        await term.expect("30 100")
        await term.send("resize", {"cols": 132, "rows": 43})
        await term.type("stty size\r")
        await term.expect("43 132")
        await term.type("exit 3\r")
        return await term.finish()

    outcome = run(scenario())
    assert outcome.exit == {"exit_code": 3, "reason": "exited"} and outcome.close_code == 1000
    assert str(home(server, instance)) in outcome.text
    assert (home(server, instance) / marker).is_file()


@pytest.mark.parametrize(
    ("command", "code"), [(["sh", "-c", "echo out; echo err >&2; exit 5"], 5), (["true"], 0), (["nope-not-here"], 127)]
)
def test_a_command_runs_without_a_shell_and_ends_with_its_code(
    server: Any, tenant: Tenant, command: list[str], code: int
) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance, command=command)

    async def scenario() -> Any:
        term = await Terminal.open(created["url"], created["ticket"])
        return await term.finish()

    outcome = run(scenario())
    assert outcome.exit == {"exit_code": code, "reason": "exited"}
    if code == 5:
        assert "out" in outcome.text and "err" in outcome.text  # the PTY merges stderr


def test_refused_tickets_run_nothing_on_a_real_host(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance, command=["touch", "pwned"])

    async def scenario() -> Any:
        term = await Terminal.open(created["url"], "hgt_" + "B" * 43)
        return await term.finish()

    assert run(scenario()).close_code == 4401
    assert not (home(server, instance) / "pwned").exists()
    assert home(server, instance).is_dir()


def test_stopping_the_instance_ends_the_shell(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance)

    async def scenario() -> tuple[Any, int]:
        term = await Terminal.open(created["url"], created["ticket"])
        await term.type("echo pid=$$\r")
        found = None
        while found is None:  # the typed line echoes `pid=$$`; the shell's answer has digits
            await term.expect("\n", timeout=30)
            found = re.search(r"pid=(\d+)", term.outcome.text)
        tenant.act(instance, "stop")
        # bash ignores SIGTERM: the stop kills it after the driver's grace period.
        return await term.finish(timeout=90), int(found.group(1))

    outcome, pid = run(scenario())
    assert outcome.close_code == 4499 and outcome.exit == {"exit_code": None, "reason": "instance_stopped"}
    try:
        os.kill(pid, 0)
        alive = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except ProcessLookupError:
        alive = False
    assert not alive, f"the shell {pid} survived"
