"""The volume and snapshot state machines: every edge (and nothing else), the actions' table,
the refusals, the generated diagram in docs/storage.md, and that only states.py assigns a
state."""

from __future__ import annotations

import ast
import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from handlers.storage import states

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# The issue's diagram (creating → available ⇄ attaching → in_use → detaching, deleting →
# deleted, error), spelled out independently of the table.
EXPECTED_EDGES = {
    ("creating", "available"),
    ("creating", "error"),
    ("available", "attaching"),
    ("attaching", "in_use"),
    ("attaching", "available"),
    ("in_use", "detaching"),
    ("detaching", "available"),
    ("available", "deleting"),
    ("error", "deleting"),
    ("deleting", "deleted"),
}


@dataclass
class Row:
    id: uuid.UUID
    state: str
    state_reason: str | None = None
    updated_at: datetime = NOW


def test_the_table_is_the_issues_diagram() -> None:
    assert {(t.source, t.target) for t in states.TRANSITIONS} == EXPECTED_EDGES
    assert set(states.STATES) == {s for edge in EXPECTED_EDGES for s in edge}


@pytest.mark.parametrize(("source", "target"), list(itertools.product(states.STATES, states.STATES)))
def test_every_edge_not_in_the_table_is_refused(source: str, target: str) -> None:
    row = Row(uuid.uuid4(), source)
    if (source, target) in EXPECTED_EDGES:
        states.transition(row, target, now=NOW, reason="why")
        assert row.state == target
        assert (row.state_reason is not None) == (target == "error")
    else:
        with pytest.raises(states.IllegalTransition):
            states.transition(row, target, now=NOW)
        assert row.state == source, "a refused transition leaves the row alone"


def test_actions_only_start_from_their_states_and_follow_edges() -> None:
    assert states.ACTIONS["delete"].keys() == {"available", "error"}, "delete only from available (or error)"
    assert states.ACTIONS["attach"] == {"available": "attaching"}
    assert states.ACTIONS["detach"] == {"in_use": "detaching"}
    assert states.ACTIONS["resize"] == {"available": "available", "in_use": "in_use"}, "resize keeps the state"
    for action, edges in states.ACTIONS.items():
        for source, target in edges.items():
            assert source == target or states.allowed(source, target), (action, source, target)
    assert states.actions_allowed("deleted") == ()
    assert states.actions_allowed("attaching") == ()


def test_snapshot_machine() -> None:
    expected = {
        ("pending", "available"),
        ("pending", "error"),
        ("available", "deleting"),
        ("error", "deleting"),
        ("deleting", "deleted"),
    }
    assert {(t.source, t.target) for t in states.SNAPSHOT_TRANSITIONS} == expected
    for source, target in itertools.product(states.SNAPSHOT_STATES, states.SNAPSHOT_STATES):
        row = Row(uuid.uuid4(), source)
        if (source, target) in expected:
            states.snapshot_transition(row, target, now=NOW)
        else:
            with pytest.raises(states.IllegalTransition):
                states.snapshot_transition(row, target, now=NOW)


def test_the_docs_diagram_is_current() -> None:
    """docs/storage.md carries states.diagrams() between its markers; regenerate with
    `python -m handlers.storage.diagram` when the table changes."""
    from handlers.storage import diagram

    text = (ROOT / "docs" / "storage.md").read_text()
    assert diagram.current(text), "docs/storage.md is stale: run `.venv/bin/python -m handlers.storage.diagram`"


def test_only_states_py_assigns_a_state() -> None:
    offenders = []
    for path in (ROOT / "handlers" / "storage").glob("*.py"):
        if path.name == "states.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for t in ast.walk(target):
                        if isinstance(t, ast.Attribute) and t.attr == "state":
                            offenders.append(f"{path.name}:{node.lineno}")
    # The constructors in services.py set the initial state through keyword arguments, which
    # are not assignments; anything found here bypasses the table.
    assert offenders == []
