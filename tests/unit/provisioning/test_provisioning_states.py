"""The instance state machine: every edge, the refusals, the diagram, and that nothing but
states.py assigns an instance's state."""

from __future__ import annotations

import ast
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from handlers.provisioning import diagram, states
from handlers.provisioning.tables import Instance

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# The list, spelled out independently of the table.
EXPECTED_EDGES = {
    ("pending", "provisioning"),
    ("provisioning", "running"),
    ("provisioning", "pending"),
    ("running", "stopping"),
    ("stopping", "stopped"),
    ("stopped", "starting"),
    ("starting", "running"),
    ("running", "rebooting"),
    ("rebooting", "running"),
    *{
        (s, "terminating")
        for s in ("pending", "provisioning", "running", "stopping", "stopped", "starting", "rebooting")
    },
    ("terminating", "terminated"),
    ("pending", "failed"),
    ("provisioning", "failed"),
    ("starting", "failed"),
    ("rebooting", "failed"),
    ("failed", "terminating"),
    ("stopping", "failed"),  # added: a failed stop is destroyed and released like a failed start
}


class Recorder:
    """Stands in for a Session: states.transition only adds outbox rows to it."""

    def __init__(self) -> None:
        self.added: list[Any] = []

    def add(self, row: Any) -> None:
        self.added.append(row)

    def events(self) -> list[dict[str, Any]]:
        return [row.payload for row in self.added]


def _instance(state: str) -> Instance:
    instance = Instance(id=uuid.uuid4(), organization_id=uuid.uuid4())
    states.begin_life(instance, NOW)
    if state != states.PENDING:
        instance.__dict__["state"] = state  # a fixture, not a transition (bypasses the ORM event)
    return instance


def test_states_match_the_contract() -> None:
    doc = json.loads((ROOT / "generated" / "openapi.json").read_text())
    assert list(states.STATES) == doc["components"]["schemas"]["InstanceState"]["enum"]
    assert set(states.STATES) == states.STABLE | states.TRANSITIONAL
    assert not states.STABLE & states.TRANSITIONAL


def test_the_table_is_exactly_the_expected_edges() -> None:
    edges = [(t.source, t.target) for t in states.TRANSITIONS]
    assert len(edges) == len(set(edges)), "an edge is listed twice"
    assert set(edges) == EXPECTED_EDGES


@pytest.mark.parametrize(("source", "target"), sorted(EXPECTED_EDGES))
def test_every_legal_edge_moves_stamps_and_emits(source: str, target: str) -> None:
    instance = _instance(source)
    session = Recorder()
    action_id = uuid.uuid4()
    later = datetime(2026, 12, 1, 12, 5, tzinfo=UTC)
    states.transition(session, instance, target, now=later, reason="because", action_id=action_id)  # type: ignore[arg-type]
    assert instance.state == target
    assert instance.updated_at == later
    assert instance.state_reason == ("because" if target in states.REASONED else None)
    [event] = session.events()
    assert event["type"] == "instance.state_changed"
    assert event["organization_id"] == str(instance.organization_id)
    assert event["occurred_at"] == "2026-12-01T12:05:00Z"
    assert event["data"] == {
        "instance_id": str(instance.id),
        "from_state": source,
        "to_state": target,
        "reason": "because",
        "action_id": str(action_id),
    }


ILLEGAL = sorted((s, t) for s in states.STATES for t in states.STATES if (s, t) not in EXPECTED_EDGES)


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_every_other_edge_is_refused_and_changes_nothing(source: str, target: str) -> None:
    instance = _instance(source)
    session = Recorder()
    with pytest.raises(states.IllegalTransition) as refused:
        states.transition(session, instance, target, now=NOW)  # type: ignore[arg-type]
    assert instance.state == source and session.added == []
    assert f"{source} → {target}" in str(refused.value)


def test_nothing_leaves_terminated() -> None:
    assert states.targets(states.TERMINATED) == ()
    assert states.actions_allowed(states.TERMINATED) == ()


def test_a_blank_or_long_reason_is_normalised() -> None:
    instance = _instance(states.PENDING)
    session = Recorder()
    states.transition(session, instance, states.FAILED, now=NOW, reason="x" * 900)  # type: ignore[arg-type]
    assert instance.state_reason == "x" * 500
    assert session.events()[0]["data"]["reason"] == "x" * 500
    states.transition(session, instance, states.TERMINATING, now=NOW, reason="  ")  # type: ignore[arg-type]
    assert session.events()[1]["data"]["reason"] is None and session.events()[1]["data"]["action_id"] is None


def test_tenant_actions_follow_the_table() -> None:
    contract = json.loads((ROOT / "generated" / "openapi.json").read_text())["components"]["schemas"]
    assert set(states.ACTIONS) | {"create"} == set(contract["ActionType"]["enum"])
    for action, edges in states.ACTIONS.items():
        for source, target in edges.items():
            assert states.allowed(source, target), (action, source, target)
            assert source in states.STABLE and target in states.TRANSITIONAL
    assert states.actions_allowed("running") == ("stop", "reboot", "terminate")
    assert states.actions_allowed("stopped") == ("start", "terminate")
    assert states.actions_allowed("failed") == ("terminate",)


def test_the_diagram_has_every_edge_and_the_doc_is_fresh() -> None:
    chart = states.mermaid()
    assert chart.startswith("stateDiagram-v2\n    [*] --> pending")
    for t in states.TRANSITIONS:
        assert f"    {t.source} --> {t.target}: {t.cause}\n" in chart
    assert "    terminated --> [*]\n" in chart
    assert diagram.TARGET.read_text() == states.document(), "docs/instance-states.md is stale: run `make diagram`"
    assert diagram.main(["--check"]) == 0


def test_only_the_state_machine_assigns_an_instance_state() -> None:
    """`<x>.state = …`, `Instance(state=…)`, `.values(state=…)` or setattr(…, "state", …)
    anywhere in the context's code but states.py would bypass the table and the event."""
    offenders = []
    for path in sorted((ROOT / "handlers" / "provisioning").glob("*.py")):
        if path.name == "states.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "state" for t in targets):
                offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Call):
                # Instance(state=…) or update(Instance).values(state=…)
                builds = (isinstance(node.func, ast.Name) and node.func.id == "Instance") or (
                    isinstance(node.func, ast.Attribute) and node.func.attr == "values"
                )
                if builds and any(k.arg == "state" for k in node.keywords):
                    offenders.append(f"{path.name}:{node.lineno} (state=)")
                if (
                    isinstance(node.func, ast.Name)
                    and node.func.id == "setattr"
                    and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value == "state"
                ):
                    offenders.append(f"{path.name}:{node.lineno} (setattr)")
    assert offenders == []
