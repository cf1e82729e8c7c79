"""Idle timeout and maximum duration, enforced by the server (tiny settings on a server of
their own): the exit frame names the limit and the close code is the contract's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from terminal_support import Tenant, Terminal, run

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    return {"HANGAR_TERMINAL_IDLE_TIMEOUT_SECONDS": "0.8", "HANGAR_TERMINAL_MAX_DURATION_SECONDS": "2.5"}


def test_an_idle_session_is_closed_4408_and_typing_keeps_it_open(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance)

    async def scenario() -> tuple[Any, float]:
        term = await Terminal.open(created["url"], created["ticket"])
        await term.expect("$ ")
        started = time.monotonic()
        for _ in range(6):  # 1.2 s of activity, longer than the 0.8 s idle timeout
            await term.type("x")
            await term.expect("x")
            await asyncio.sleep(0.2)
        alive = time.monotonic() - started
        outcome = await term.finish()
        return outcome, alive

    outcome, alive = run(scenario())
    assert alive >= 1.2
    assert outcome.close_code == 4408 and outcome.exit == {"exit_code": None, "reason": "idle_timeout"}
    assert tenant.session(created["id"])["end_reason"] == "idle_timeout"


def test_a_session_ends_at_its_maximum_duration_4410(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance)

    async def scenario() -> tuple[Any, float]:
        term = await Terminal.open(created["url"], created["ticket"])
        await term.expect("$ ")
        started = time.monotonic()

        async def keep_typing() -> None:
            while True:
                await term.type("y")
                await asyncio.sleep(0.2)

        typing = asyncio.create_task(keep_typing())
        try:
            outcome = await term.finish()
        finally:
            typing.cancel()
        return outcome, time.monotonic() - started

    outcome, lasted = run(scenario())
    assert outcome.close_code == 4410 and outcome.exit == {"exit_code": None, "reason": "max_duration"}
    assert lasted >= 2.0
    assert tenant.session(created["id"])["end_reason"] == "max_duration"
