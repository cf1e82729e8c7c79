"""Issue 4's whole journey from the CLI, against a live `hangar-server` (sim driver, a
metering tick every second, no signup credit): sign up → a launch without credit is a 402 →
top up 1.00 with a test card → launch an 8-GPU instance (19.92 USD an hour, so seconds
cost cents) → refund most of the credit → watch the balance fall and the usage appear →
the credit runs out and the instance is stopped (not terminated) with the reason
`balance_depleted` → a restart is refused with a 402 → the month's statement and its lines
add up → nothing is left to refund. Every step is a `hangar` command and its exit code."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, start_server, stop_server

from .helpers import PASSWORD, Result, hangar, load_sim_fleet

GOOD = "4242424242424242"
GPU_LAUNCH = [
    "--name", "trainer", "--region", "fra1", "--instance-type", "gpu-h100x8", "--image", "ubuntu-24.04-cuda12",
]  # fmt: skip


@pytest.fixture(scope="module")
def server(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(
        databases.dedicated(),
        tmp_path_factory.mktemp("live-billing") / "server.log",
        HANGAR_BILLING_SIGNUP_CREDIT="0",
        HANGAR_BILLING_TICK_SECONDS="1",
        HANGAR_BILLING_HOLD_SECONDS="10",  # a launch holds 10 s of its price: 6 cents here
        HANGAR_QUOTA_VCPUS="512",
        HANGAR_QUOTA_GPUS="16",
    )
    try:
        load_sim_fleet(live.database_url, ["fra1"], hosts=5)  # one of the five is an 8 × H100 box
        yield live
    finally:
        stop_server(live)


def _until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.5)
    return value


def _ok(result: Result) -> Any:
    assert result.code == 0, result
    return result.json()


def test_top_up_run_pay_per_second_run_dry_get_stopped_and_read_the_statement(
    server: LiveServer, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"

    def cli(*args: str) -> Result:
        return hangar(*args, "--output", "json", config=config)

    signup = hangar(
        "signup", "--email", f"trainer-{uuid.uuid4().hex[:8]}@example.com", "--password", PASSWORD,
        "--organization", "Trainer", "--output", "json", config=config, url=server.url,
    )  # fmt: skip
    assert signup.code == 0, signup
    assert _ok(cli("billing", "balance"))["balance"] == 0

    refused = cli("instances", "create", *GPU_LAUNCH)
    assert refused.code == 1, refused
    assert "Insufficient Credits (402)" in refused.err and "0.06 USD of credit held" in refused.err

    top_up = _ok(cli("top-ups", "create", "--amount", "1.00", "--card", GOOD, "--wait"))
    assert (top_up["status"], top_up["balance_after"]) == ("succeeded", 100)

    launched = cli("instances", "create", *GPU_LAUNCH, "--wait")
    assert launched.code == 0, launched
    [instance] = _ok(cli("instances", "list"))["data"]
    assert instance["state"] == "running"
    # Part of the balance is held for the running instance (the launch's 10 s, then the
    # tick's rolling hold), and the ticks have begun to charge it.
    held = _ok(cli("billing", "balance"))
    assert 0 < held["held"] <= 6 and held["balance"] <= 100
    assert held["available"] == held["balance"] - held["held"]

    # Most of it back to the card: about 10 cents left, some of them held for the instance.
    refund = _ok(cli("refunds", "create", top_up["id"], "--amount", "0.90"))
    assert (refund["status"], refund["amount"]) == ("succeeded", 90) and 0 <= refund["balance_after"] <= 10

    # 19.92 USD an hour is 0.55 cents a second: the balance falls tick by tick, and the
    # usage shows the seconds and the cents of this instance.
    _until(lambda: _ok(cli("billing", "balance"))["balance"] < refund["balance_after"], "the balance falls")
    usage = _until(
        lambda: [u for u in _ok(cli("billing", "usage"))["data"] if u["resource_id"] == instance["id"] and u["amount"]],
        "usage appears",
    )
    assert (
        usage[0]["resource_type"] == "instance" and usage[0]["description"] == "gpu-h100x8" and usage[0]["seconds"] > 0
    )

    # The credit runs out: billing says so, provisioning stops (never terminates) it.
    # (`instances wait --state stopped` would refuse at once: while it runs and nothing is
    # acting on it, a waiter cannot know a stop is coming. So the test polls.)
    after = _until(
        lambda: (i := _ok(cli("instances", "get", instance["id"])))["state"] == "stopped" and i,
        "the instance is stopped",
        timeout=90,
    )
    assert (after["state"], after["state_reason"]) == ("stopped", "balance_depleted")
    restart = cli("instances", "start", instance["id"])
    assert restart.code == 1 and "Insufficient Credits (402)" in restart.err, restart

    # Everything that moved is on the month's statement: 1.00 in, 0.90 back, the rest usage.
    balance = _ok(cli("billing", "balance"))
    assert balance["balance"] >= 0 and balance["held"] == 0
    [statement] = _ok(cli("billing", "statements"))["data"]
    assert statement["status"] == "open" and (statement["top_ups"], statement["refunds"]) == (100, -90)
    assert statement["usage"] < 0 and statement["closing_balance"] == balance["balance"]
    assert (
        statement["opening_balance"]
        + statement["top_ups"]
        + statement["refunds"]
        + statement["usage"]
        + statement["credits"]
        + statement["adjustments"]
        + statement["other"]
        == statement["closing_balance"]
    )
    assert _ok(cli("billing", "statement", statement["id"]))["id"] == statement["id"]
    lines = _ok(cli("billing", "statement-lines", statement["id"]))["data"]
    assert any(line.get("resource_id") == instance["id"] for line in lines), lines
    # What is left (if anything) is less than the spent 1.00 minus the refund: never more.
    too_much = cli("refunds", "create", top_up["id"], "--amount", "0.10")
    assert too_much.code == 1 and "Conflict (409)" in too_much.err, too_much
