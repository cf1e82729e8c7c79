"""The payments journey from the CLI, against a live `hangar-server` (in-process webhook delivery,
a 200 ms sandbox delay, no signup credit): sign up → `hangar top-ups create --amount 50.00
--card 4242… --wait` reaches `succeeded` and shows the new balance (5000 cents) → the balance
says so → a partial refund; a declined card exits non-zero with the reason; a bad amount is a
usage error (exit 2) before anything is sent. The server's log never shows a card number."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, start_server, stop_server

from .helpers import PASSWORD, hangar

GOOD, DECLINED = "4242424242424242", "4000000000000002"


@pytest.fixture(scope="module")
def server(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(
        databases.dedicated(),
        tmp_path_factory.mktemp("live-payments") / "server.log",
        HANGAR_BILLING_SIGNUP_CREDIT="0",
        HANGAR_PAYMENTS_SANDBOX_DELAY_MS="200",
    )
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture(scope="module")
def config(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hangar-cli-payments") / "config.toml"
    email = f"payer-{uuid.uuid4().hex[:10]}@example.com"
    result = hangar(
        "signup", "--email", email, "--password", PASSWORD, "--organization", "Payer", "--output", "json",
        config=path, url=server.url,
    )  # fmt: skip
    assert result.code == 0, result
    return path


def test_top_up_with_wait_shows_succeeded_and_the_new_balance(server: LiveServer, config: Path) -> None:
    result = hangar(
        "top-ups", "create", "--amount", "50.00", "--card", GOOD, "--wait", "--output", "json", config=config
    )
    assert result.code == 0, result
    top_up = result.json()
    assert (top_up["status"], top_up["amount"], top_up["balance_after"]) == ("succeeded", 5000, 5000)
    balance = hangar("billing", "balance", "--output", "json", config=config)
    assert balance.code == 0, balance
    assert balance.json()["balance"] == 5000
    refund = hangar("refunds", "create", top_up["id"], "--amount", "10.00", "--output", "json", config=config)
    assert refund.code == 0, refund
    assert (refund.json()["amount"], refund.json()["balance_after"]) == (1000, 4000)
    assert GOOD not in server.output()


def test_a_declined_card_exits_non_zero_with_the_reason(config: Path) -> None:
    result = hangar("top-ups", "create", "--amount", "5", "--card", DECLINED, "--wait", config=config)
    assert result.code == 1, result
    assert "card_declined" in result.err and "The card was declined." in result.err


@pytest.mark.parametrize("amount", ["50.001", "-1", "abc"])
def test_a_bad_amount_is_a_usage_error(config: Path, amount: str) -> None:
    result = hangar("top-ups", "create", "--amount", amount, "--card", GOOD, config=config)
    assert result.code == 2, result
    assert "not an amount of money" in result.err
