"""`codegen.py check`: handler coverage (missing, stray, misfitting), the coverage table, and
the drift check against a hand-edited generated tree.

Handler fixtures live in tests/codegen/fixtures/routing/fixture_handlers/; the operations
they are checked against are the fixture spec's, rendered into a throwaway `widgetgen`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import codegen
from hangar.handlers_registry import HandlerRegistryError, load_handlers, operation_modules, signature_problems
from pipeline import bundle_stage, models, routing
from pipeline.check import check_handlers, coverage_table
from pipeline.models import render_models
from pipeline.routing import render_routing

FIXTURES = Path(__file__).parent / "fixtures" / "routing"


@pytest.fixture(scope="module")
def widgetgen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    spec = yaml.safe_load((FIXTURES / "spec.yaml").read_text(encoding="utf-8"))
    base = tmp_path_factory.mktemp("gen")
    package = base / "widgetgen"
    package.mkdir()
    models_source = render_models(spec)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(models_source)
    (package / "routing.py").write_text(render_routing(spec, models_source, package="widgetgen"))
    sys.path[:0] = [str(base), str(FIXTURES)]
    for name in [m for m in sys.modules if m.split(".")[0] in ("widgetgen", "fixture_handlers")]:
        del sys.modules[name]
    try:
        yield importlib.import_module("widgetgen.routing")
    finally:
        sys.path.remove(str(base))
        sys.path.remove(str(FIXTURES))


def ops_in(widgetgen: ModuleType, module: str) -> dict[str, Any]:
    """The fixture operations, with their handlers looked up in `module`."""
    return {op_id: dataclasses.replace(op, handler_module=module) for op_id, op in widgetgen.OPERATIONS.items()}


def test_fitting_handlers_pass(widgetgen: ModuleType) -> None:
    ops = ops_in(widgetgen, "fixture_handlers.good.operations")
    assert check_handlers(ops, extra_modules=[]) == []
    handlers = load_handlers(ops, extra_modules=[])
    assert sorted(handlers) == sorted(ops)
    assert handlers["listWidgets"].__name__ == "list_widgets"


def test_missing_stray_and_misfitting_handlers_are_each_named(widgetgen: ModuleType) -> None:
    problems = check_handlers(ops_in(widgetgen, "fixture_handlers.bad.operations"), extra_modules=[])
    by_op: dict[str, list[str]] = {}
    for line in problems:
        by_op.setdefault(line.split(":", 1)[0], []).append(line)
    assert by_op["ping"] == ["ping: no handler (fixture_handlers.bad.operations defines no function ping)"]
    assert "first parameter must be `ctx`" in by_op["whoAmI"][0]
    list_problems = "\n".join(by_op["listWidgets"])
    assert "`cursor` is annotated str, the adapter passes str | None" in list_problems
    assert "missing parameter `color: models.Color | None`" in list_problems
    assert "missing parameter `tag: list[str] | None`" in list_problems
    assert "`body` is annotated dict, the adapter passes models.WidgetCreate" in by_op["createWidget"][0]
    assert "`widget_id` is annotated str, the adapter passes uuid.UUID" in by_op["getWidget"][0]
    assert "returns models.Widget, the adapter expects None" in by_op["deleteWidget"][0]
    assert (
        len(by_op["renameWidget"]) == 1 and "fixture_handlers.bad.operations.rename_widget" in by_op["renameWidget"][0]
    )
    # Private helpers and imported functions are not handlers.
    assert not any("_helper" in line or "uuid4" in line for line in problems)


def test_load_handlers_refuses_to_start_and_lists_everything(widgetgen: ModuleType) -> None:
    with pytest.raises(HandlerRegistryError) as caught:
        load_handlers(ops_in(widgetgen, "fixture_handlers.bad.operations"), extra_modules=[])
    assert len(caught.value.problems) >= 8
    assert "ping: no handler" in str(caught.value) and "renameWidget" in str(caught.value)


def test_a_module_that_does_not_exist_means_missing_handlers(widgetgen: ModuleType) -> None:
    problems = check_handlers(ops_in(widgetgen, "fixture_handlers.nothing.operations"), extra_modules=[])
    assert len(problems) == len(widgetgen.OPERATIONS)
    assert all("module fixture_handlers.nothing.operations does not exist" in line for line in problems)


def test_a_module_that_fails_to_import_is_reported_as_broken(widgetgen: ModuleType) -> None:
    problems = check_handlers(ops_in(widgetgen, "fixture_handlers.broken.operations"), extra_modules=[])
    assert problems == [
        "cannot import fixture_handlers.broken.operations: ModuleNotFoundError: No module named 'hangar_no_such_module'"
    ]


def test_an_operations_module_no_operation_names_is_scanned_for_strays(widgetgen: ModuleType) -> None:
    assert operation_modules("fixture_handlers") == [
        "fixture_handlers.bad.operations",
        "fixture_handlers.broken.operations",
        "fixture_handlers.good.operations",
    ]
    ops = ops_in(widgetgen, "fixture_handlers.good.operations")
    problems = check_handlers(ops, extra_modules=["fixture_handlers.bad.operations"])
    strays = sorted(line.split(":", 1)[0] for line in problems)
    assert strays == ["createWidget", "deleteWidget", "getWidget", "listWidgets", "renameWidget", "whoAmI"]


def test_signature_accepts_optional_spelled_the_old_way(widgetgen: ModuleType) -> None:
    module = importlib.import_module("fixture_handlers.good.operations")
    assert signature_problems(widgetgen.OPERATIONS["getWidget"], module._get_widget_old_style) == []


def test_coverage_table_reads_sdk_cli_and_contract_results(widgetgen: ModuleType, tmp_path: Path) -> None:
    ops = ops_in(widgetgen, "fixture_handlers.bad.operations")
    ops["listWidgets"] = dataclasses.replace(ops["listWidgets"], handler_module="fixture_handlers.good.operations")
    sdk = tmp_path / "api"
    (sdk / "widgets").mkdir(parents=True)
    (sdk / "widgets" / "list_widgets.py").write_text("")
    commands = tmp_path / "commands.json"
    commands.write_text(json.dumps({"listWidgets": "hangar widgets list"}))
    coverage = tmp_path / "coverage.json"
    coverage.write_text(json.dumps({"listWidgets": {"schemathesis_cases": 120, "sdk_roundtrip": True}}))
    table = coverage_table(
        operations=ops, extra_modules=[], sdk_api=sdk, cli_commands=commands, contract_coverage=coverage
    ).splitlines()
    assert table[0].split() == ["operationId", "handler", "contract-tested", "SDK", "method", "CLI", "command"]
    rows = {line.split()[0]: line for line in table[2:]}
    assert rows["listWidgets"].split() == [
        "listWidgets", "yes", "120", "cases", "+", "SDK", "round-trip", "widgets.list_widgets", "hangar", "widgets", "list",
    ]  # fmt: skip
    assert rows["ping"].split() == ["ping", "MISSING", "no", "missing", "missing"]
    assert rows["getWidget"].split()[:2] == ["getWidget", "BAD"]
    assert len(rows) == len(ops)


def test_coverage_table_without_contract_run_says_not_run(widgetgen: ModuleType, tmp_path: Path) -> None:
    table = coverage_table(
        operations=ops_in(widgetgen, "fixture_handlers.good.operations"),
        extra_modules=[],
        sdk_api=tmp_path / "none",
        cli_commands=tmp_path / "none.json",
        contract_coverage=tmp_path / "none.json",
    )
    assert all(line.split()[1:] == ["yes", "not", "run", "missing", "missing"] for line in table.splitlines()[2:])


# --- drift -------------------------------------------------------------------------------


@pytest.fixture()
def fresh_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A generated/ tree built by this repository's bundle, models and routing stages only
    (the slow SDK/events stages are not what this test is about)."""
    stages = [bundle_stage.OPENAPI, bundle_stage.ASYNCAPI, models.STAGE, routing.STAGE]
    monkeypatch.setattr(codegen, "all_stages", lambda: stages)
    tree = tmp_path / "generated"
    codegen.generate(tree, force=True, quiet=True)
    monkeypatch.setattr(codegen, "GENERATED", tree)
    return tree


def test_drift_check_passes_on_a_fresh_tree(fresh_tree: Path) -> None:
    assert codegen.check_drift() == []


def test_drift_check_catches_hand_edits_deletions_and_strays(fresh_tree: Path) -> None:
    routing_py = fresh_tree / "routing.py"
    routing_py.write_text(routing_py.read_text().replace('"api-keys:read"', '"api-keys:write"'))
    (fresh_tree / "__init__.py").unlink()
    (fresh_tree / "handmade.py").write_text("x = 1\n")
    assert sorted(codegen.check_drift()) == [
        "differs from a fresh regeneration: generated/routing.py",
        "missing from generated/: generated/__init__.py",
        "not produced by codegen (stale or hand-made): generated/handmade.py",
    ]
