"""Units of the Terminal Gateway: frame parsing, tickets, the sim shell and the local PTY
attachment (a real PTY on a LocalDriver instance, no server)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from handlers.terminal import gateway, services
from hangar.config import Settings
from hangar.drivers import InstanceSpec
from hangar.drivers.local import LocalDriver
from hangar.drivers.terminal import (
    SIM_UNAME,
    AttachError,
    LocalTerminalHost,
    SimTerminalHost,
    exit_status,
    sim_files,
)


def test_tickets_are_random_prefixed_and_stored_as_sha256() -> None:
    token, digest = services.new_ticket()
    other, _ = services.new_ticket()
    assert token.startswith("hgt_") and len(token) >= 40 and token != other
    assert digest == services.hash_ticket(token) and len(digest) == 64 and token not in digest


def test_ticket_lifetime_is_capped_at_60_seconds() -> None:
    assert services.ticket_ttl(Settings(terminal_ticket_ttl_seconds=3600)) == 60
    assert services.ticket_ttl(Settings(terminal_ticket_ttl_seconds=5)) == 5
    assert services.ticket_ttl(Settings(terminal_ticket_ttl_seconds=0)) == 1


def test_auth_and_resize_frames_are_parsed_strictly() -> None:
    assert gateway.parse_auth(b'{"ticket": "hgt_x", "cols": 80, "rows": 24}') == ("hgt_x", 80, 24)
    assert gateway.parse_auth(b'{"ticket": "hgt_x"}') == ("hgt_x", None, None)
    for bad in (b"", b"[]", b"{}", b'{"ticket": 1}', b'{"ticket": "t", "cols": 0}', b'{"ticket": "t", "cols": true}',
                b'{"ticket": "t", "extra": 1}', b"\xff"):  # fmt: skip
        with pytest.raises(gateway.Malformed):
            gateway.parse_auth(bad)
    assert gateway.parse_resize(b'{"cols": 132, "rows": 43}') == (132, 43)
    for bad in (b'{"cols": 1001, "rows": 2}', b'{"cols": 2}', b'{"cols": 2, "rows": 2, "x": 1}'):
        with pytest.raises(gateway.Malformed):
            gateway.parse_resize(bad)
    frame = gateway.exit_frame(3, "exited")
    assert frame[0] == 3 and json.loads(frame[1:]) == {"exit_code": 3, "reason": "exited"}


def test_exit_status_maps_signals_like_a_shell() -> None:
    assert exit_status(0) == 0 and exit_status(3) == 3 and exit_status(-9) == 137


async def _drain(attachment: Any, timeout: float = 10.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = await asyncio.wait_for(attachment.read(), timeout)
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"no EOF; got {out!r}")


def test_the_sim_shell_echoes_runs_builtins_and_exits_with_the_code() -> None:
    async def scenario() -> tuple[bytes, int]:
        shell = SimTerminalHost().open(uuid.uuid4(), command=None, cols=80, rows=24)
        await shell.write(b"echo hi > f\rcat f\runame -a\rstty size\recho ab\x7fc\rexit 7\r")
        return await _drain(shell), await shell.wait()

    out, code = asyncio.run(scenario())
    text = out.decode()
    assert code == 7
    assert "hi\r\n" in text and SIM_UNAME in text and "24 80" in text and "ac\r\n" in text


def test_the_sim_shell_command_mode_and_unknown_commands() -> None:
    instance = uuid.uuid4()

    async def run(command: list[str]) -> tuple[bytes, int]:
        shell = SimTerminalHost().open(instance, command=command, cols=80, rows=24)
        return await _drain(shell), await shell.wait()

    assert asyncio.run(run(["touch", "made"])) == (b"", 0)
    assert "made" in sim_files(instance)
    assert asyncio.run(run(["false"]))[1] == 1
    with pytest.raises(AttachError) as err:
        SimTerminalHost().open(instance, command=["rm-rf-everything"], cols=80, rows=24)
    assert err.value.code == "command_not_found"


@pytest.fixture
def local_instance(tmp_path: Path) -> Any:
    driver = LocalDriver(tmp_path / "instances", boot_timeout=10)
    spec = InstanceSpec(
        instance_id=uuid.uuid4(), organization_id=uuid.uuid4(), name="t", host_id=uuid.uuid4(), host_name="h",
        attempt=1, image="ubuntu-24.04", vcpus=1, memory_mb=512, disk_gb=1, gpus=0,
    )  # fmt: skip
    from hangar.db import utcnow

    since = utcnow()
    driver.begin(spec, "create")
    deadline = time.monotonic() + 10
    while not driver.poll(spec, "create", since, utcnow()).done:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield driver, spec
    driver.begin(spec, "destroy")


def test_a_local_pty_runs_a_login_shell_in_the_instance_home(local_instance: Any) -> None:
    driver, spec = local_instance
    host = LocalTerminalHost(driver)

    async def scenario() -> tuple[bytes, int]:
        attachment = host.open(spec.instance_id, command=None, cols=90, rows=20)
        try:
            await attachment.write(b"stty size; pwd; echo $HANGAR_INSTANCE_ID; touch here\r")
            seen = b""
            while str(spec.instance_id).encode() + b"\r\n" not in seen:  # the first line has run
                seen += await asyncio.wait_for(attachment.read(), 10)
            attachment.resize(120, 50)
            await attachment.write(b"stty size; exit 4\r")
            return seen + await _drain(attachment), await attachment.wait()
        finally:
            attachment.kill()
            attachment.close()

    out, code = asyncio.run(scenario())
    text = out.decode(errors="replace")
    assert code == 4
    assert "20 90" in text and "50 120" in text and str(spec.instance_id) in text
    assert (driver.home(spec.instance_id) / "here").is_file()


def test_a_local_command_that_does_not_exist_is_refused_before_anything_runs(local_instance: Any) -> None:
    driver, spec = local_instance
    with pytest.raises(AttachError) as err:
        LocalTerminalHost(driver).open(spec.instance_id, command=["definitely-not-a-program"], cols=80, rows=24)
    assert err.value.code == "command_not_found"


def test_killing_a_local_attachment_ends_its_whole_session(local_instance: Any) -> None:
    driver, spec = local_instance

    async def scenario() -> int:
        attachment = LocalTerminalHost(driver).open(
            spec.instance_id, command=["sh", "-c", "sleep 600 & sleep 600"], cols=80, rows=24
        )
        await asyncio.sleep(0.2)
        attachment.kill()
        code = await asyncio.wait_for(attachment.wait(), 5)
        attachment.close()
        return code

    assert asyncio.run(scenario()) == 137
    sessions = driver.run_dir(spec.instance_id) / "sessions"
    assert not list(sessions.glob("*.json"))


def test_a_local_attach_into_a_stopped_instance_is_refused(local_instance: Any) -> None:
    driver, spec = local_instance
    from hangar.db import utcnow

    since = utcnow()
    driver.begin(spec, "stop")
    deadline = time.monotonic() + 10
    while not driver.poll(spec, "stop", since, utcnow()).done:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(AttachError) as err:
        LocalTerminalHost(driver).open(spec.instance_id, command=None, cols=80, rows=24)
    assert err.value.code == "not_running"
