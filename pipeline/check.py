"""The handler half of `codegen.py check`: does every operation have a fitting handler, and
what covers each operation (handler, contract tests, SDK method, CLI command)?

The drift half (regenerate into a temporary tree and compare) lives in codegen.py. This
module reads other stages' outputs only if they exist: a missing SDK or CLI shows as
"missing" in the table rather than failing the check, because their own stages and the
drift check already fail loudly when they are absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hangar.handlers_registry import inspect_handlers, operation_modules
from pipeline.routing import snake_case
from pipeline.stages import ROOT

GENERATED = ROOT / "generated"
SDK_API = GENERATED / "sdk" / "hangar_client" / "api"
CLI_COMMANDS = GENERATED / "cli" / "hangar_cli" / "commands.json"
CONTRACT_COVERAGE = ROOT / ".hangar" / "contract-coverage.json"
COLUMNS = ("operationId", "handler", "contract-tested", "SDK method", "CLI command")


def _operations() -> Mapping[str, Any]:
    from generated.routing import OPERATIONS

    return OPERATIONS


def check_handlers(
    operations: Mapping[str, Any] | None = None, extra_modules: Iterable[str] | None = None
) -> list[str]:
    """One line per problem, each starting with the operationId it concerns."""
    ops = _operations() if operations is None else operations
    modules = operation_modules() if extra_modules is None else extra_modules
    return inspect_handlers(ops, modules).problems()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sdk_module(tag: str, operation_id: str, sdk_api: Path = SDK_API) -> Path:
    """openapi-python-client's layout: api/<tag as identifier>/<operationId in snake_case>.py."""
    return sdk_api / snake_case(tag.replace("-", "_")) / f"{snake_case(operation_id)}.py"


def _contract_cell(coverage: Any, op_id: str) -> str:
    if not isinstance(coverage, dict):
        return "not run"
    entry = coverage.get(op_id)
    if not isinstance(entry, dict):
        return "no"
    cases = int(entry.get("schemathesis_cases", 0) or 0)
    parts = [f"{cases} cases" if cases else "0 cases"]
    if entry.get("sdk_roundtrip"):
        parts.append("SDK round-trip")
    return " + ".join(parts)


def coverage_rows(
    operations: Mapping[str, Any] | None = None,
    extra_modules: Iterable[str] | None = None,
    sdk_api: Path = SDK_API,
    cli_commands: Path = CLI_COMMANDS,
    contract_coverage: Path = CONTRACT_COVERAGE,
) -> list[tuple[str, str, str, str, str]]:
    ops = _operations() if operations is None else operations
    report = inspect_handlers(ops, operation_modules() if extra_modules is None else extra_modules)
    commands = _read_json(cli_commands)
    commands = commands if isinstance(commands, dict) else {}
    coverage = _read_json(contract_coverage)
    rows = []
    for op_id, op in ops.items():
        if op_id in report.bad_signatures:
            handler = "BAD SIGNATURE"
        elif op_id in report.handlers:
            handler = "yes"
        else:
            handler = "MISSING"
        module = sdk_module(op.tag, op_id, sdk_api)
        sdk = f"{module.parent.name}.{module.stem}" if module.is_file() else "missing"
        command = commands.get(op_id)
        cli = command if isinstance(command, str) else "missing"
        rows.append((op_id, handler, _contract_cell(coverage, op_id), sdk, cli))
    return rows


def coverage_table(**kwargs: Any) -> str:
    """The coverage table as aligned plain text (kwargs as for coverage_rows)."""
    rows = [COLUMNS, *coverage_rows(**kwargs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
