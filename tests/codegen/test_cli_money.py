"""`x-cli-money: true`: an integer body field in minor units becomes a decimal CLI option
(`--amount 50.00` sends 5000), validated at generation time like the other x-cli extensions."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli

SPEC: dict[str, Any] = json.loads((Path(__file__).resolve().parents[2] / "generated" / "openapi.json").read_text())


def _flag(commands: list[cli.Command], line: str, option: str) -> cli.Flag:
    command = next(c for c in commands if c.line == line)
    return next(f for f in command.flags if f.option == option)


def test_the_top_up_amount_is_a_money_flag_and_its_example_is_a_decimal() -> None:
    commands = cli.build_commands(SPEC)
    amount = _flag(commands, "hangar top-ups create", "--amount")
    assert amount.kind == "money" and "2 decimals" in amount.help
    assert _flag(commands, "hangar refunds create", "--amount").kind == "money"
    assert _flag(commands, "hangar top-ups create", "--card").kind == "str"
    create = next(c for c in commands if c.line == "hangar top-ups create")
    assert "hangar top-ups create --amount 50.00" in create.epilog
    assert '"amount": 5000' in create.epilog, "--body stays in cents"


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        ("yes", "amount", "x-cli-money must be true"),
        (False, "amount", "x-cli-money must be true"),
        # CardNumber is shared with createPaymentMethod's `number`: whichever comes first is named.
        (True, "card", "x-cli-money goes on an integer field"),
    ],
)
def test_bad_x_cli_money_fails_generation_naming_the_operation(value: Any, field: str, message: str) -> None:
    spec = copy.deepcopy(SPEC)
    props = spec["components"]["schemas"]["TopUpCreate"]["properties"]
    target = props[field]
    if "$ref" in target:  # `card` is a $ref: put the extension on the referenced schema
        target = spec["components"]["schemas"][target["$ref"].rsplit("/", 1)[-1]]
    target["x-cli-money"] = value
    named = (
        "createTopUp: field `amount`" if field == "amount" else r"create(TopUp|PaymentMethod): field `(card|number)`"
    )
    with pytest.raises(cli.CliSpecError, match=rf"{named}: {message}"):
        cli.build_commands(spec)


def test_money_text() -> None:
    assert [cli.money_text(v) for v in (5000, 5, 0, 123456)] == ["50.00", "0.05", "0.00", "1234.56"]


def _parser_money() -> Any:
    from hangar_cli.parser import KINDS

    return KINDS["money"]


@pytest.mark.parametrize(
    ("text", "cents"), [("50", 5000), ("50.0", 5000), ("50.00", 5000), ("0.05", 5), ("1234.5", 123450)]
)
def test_the_generated_cli_reads_decimal_amounts(text: str, cents: int) -> None:
    assert _parser_money()(text) == cents


@pytest.mark.parametrize("text", ["50.001", "-1", "abc", "1e3", "", "5,00", ".5", "50."])
def test_the_generated_cli_refuses_other_amounts(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not an amount of money"):
        _parser_money()(text)
