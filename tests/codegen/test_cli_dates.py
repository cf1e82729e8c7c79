"""`format: date` parameters become date flags: `hangar billing usage --from 2026-11-01` hands the
SDK a datetime.date (it calls .isoformat() on it; a plain string crashed the command)."""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli

SPEC: dict[str, Any] = json.loads((Path(__file__).resolve().parents[2] / "generated" / "openapi.json").read_text())


def test_the_usage_range_flags_are_dates() -> None:
    commands = cli.build_commands(SPEC)
    usage = next(c for c in commands if c.line == "hangar billing usage")
    kinds = {f.option: f.kind for f in usage.flags}
    assert kinds["--from"] == "date" and kinds["--to"] == "date"


def test_the_generated_cli_parses_dates_and_refuses_other_text() -> None:
    from hangar_cli.parser import KINDS

    assert KINDS["date"]("2026-11-01") == datetime.date(2026, 11, 1)
    for text in ("2026-13-01", "yesterday", "01/11/2026"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a date"):
            KINDS["date"](text)
