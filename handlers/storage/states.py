"""The volume and snapshot state machines, as data.

`TRANSITIONS` is every edge a volume may take, with what causes it; `ACTIONS` says which
tenant action each state accepts and where it moves the volume. Everything else is derived:
the 409 `invalid-state` details, the runner's notion of "work in flight", and the Mermaid
diagram in docs/storage.md (`document()`; a test fails when the file is stale).

`transition()` is the only code that assigns `Volume.state` / `Snapshot.state`; it refuses
an edge the table lacks (a bug, never a tenant's error: tenants are answered from `ACTIONS`
first, with a 409).

A resize changes no state: it runs under the volume's lock (`action_id`) in `available` or
`in_use`, like a DigitalOcean resize of an attached volume.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

CREATING = "creating"
AVAILABLE = "available"
ATTACHING = "attaching"
IN_USE = "in_use"
DETACHING = "detaching"
DELETING = "deleting"
DELETED = "deleted"
ERROR = "error"

# The contract's order (VolumeState in specs/openapi/storage.yaml).
STATES: tuple[str, ...] = (CREATING, AVAILABLE, ATTACHING, IN_USE, DETACHING, DELETING, DELETED, ERROR)
INITIAL = CREATING
TERMINAL: frozenset[str] = frozenset({DELETED})
STABLE: frozenset[str] = frozenset({AVAILABLE, IN_USE, DELETED, ERROR})
# States in which the volume holds (or is getting or losing) an attachment.
ATTACHED: frozenset[str] = frozenset({ATTACHING, IN_USE, DETACHING})
# Not deleted: a live volume keeps its name taken in its organization and region.
LIVE: frozenset[str] = frozenset(STATES) - {DELETED}


@dataclass(frozen=True)
class Transition:
    source: str
    target: str
    cause: str


TRANSITIONS: tuple[Transition, ...] = (
    Transition(CREATING, AVAILABLE, "host created it (empty, or restored from a snapshot)"),
    Transition(CREATING, ERROR, "host failed to create it"),
    Transition(AVAILABLE, ATTACHING, "attach action"),
    Transition(ATTACHING, IN_USE, "host attached it"),
    Transition(ATTACHING, AVAILABLE, "attach failed on the host"),
    Transition(IN_USE, DETACHING, "detach action, or its instance terminated"),
    Transition(DETACHING, AVAILABLE, "host detached it"),
    Transition(AVAILABLE, DELETING, "delete"),
    Transition(ERROR, DELETING, "delete"),
    Transition(DELETING, DELETED, "host removed its data"),
)

_EDGES: dict[tuple[str, str], Transition] = {(t.source, t.target): t for t in TRANSITIONS}

# Tenant actions: from which state each may start, and the state it moves the volume to.
ACTIONS: dict[str, dict[str, str]] = {
    "attach": {AVAILABLE: ATTACHING},
    "detach": {IN_USE: DETACHING},
    "resize": {AVAILABLE: AVAILABLE, IN_USE: IN_USE},
    "delete": {AVAILABLE: DELETING, ERROR: DELETING},
}
# Snapshots may be taken of a volume in these states (what is on it at that moment).
SNAPSHOTTABLE: frozenset[str] = frozenset({AVAILABLE, ATTACHING, IN_USE, DETACHING})


# --- snapshots ---------------------------------------------------------------------------

SNAP_PENDING = "pending"
SNAP_AVAILABLE = "available"
SNAP_ERROR = "error"
SNAP_DELETING = "deleting"
SNAP_DELETED = "deleted"
SNAPSHOT_STATES: tuple[str, ...] = (SNAP_PENDING, SNAP_AVAILABLE, SNAP_ERROR, SNAP_DELETING, SNAP_DELETED)
SNAPSHOT_TRANSITIONS: tuple[Transition, ...] = (
    Transition(SNAP_PENDING, SNAP_AVAILABLE, "host copied the volume"),
    Transition(SNAP_PENDING, SNAP_ERROR, "host failed to copy it"),
    Transition(SNAP_AVAILABLE, SNAP_DELETING, "delete"),
    Transition(SNAP_ERROR, SNAP_DELETING, "delete"),
    Transition(SNAP_DELETING, SNAP_DELETED, "host removed its data"),
)
_SNAPSHOT_EDGES: dict[tuple[str, str], Transition] = {(t.source, t.target): t for t in SNAPSHOT_TRANSITIONS}
# Work in flight for the runner.
SNAPSHOT_BUSY: frozenset[str] = frozenset({SNAP_PENDING, SNAP_DELETING})


class IllegalTransition(Exception):  # noqa: N818 - it is a refusal, named for what it refuses
    def __init__(self, kind: str, row_id: uuid.UUID, source: str, target: str) -> None:
        super().__init__(f"{kind} {row_id}: no transition {source} → {target}")
        self.source = source
        self.target = target


class _Stateful(Protocol):
    id: uuid.UUID
    state: str
    state_reason: str | None
    updated_at: datetime


def targets(source: str) -> tuple[str, ...]:
    return tuple(t.target for t in TRANSITIONS if t.source == source)


def allowed(source: str, target: str) -> bool:
    return (source, target) in _EDGES


def actions_allowed(state: str) -> tuple[str, ...]:
    """The tenant actions a volume in `state` accepts (when no other action runs)."""
    return tuple(name for name, edges in ACTIONS.items() if state in edges)


def transition(volume: _Stateful, target: str, *, now: datetime, reason: str | None = None) -> Transition:
    """Move a volume to `target` (a resize's same-state "move" is not an edge and never comes
    here); IllegalTransition for an edge the table lacks, leaving the row untouched."""
    edge = _EDGES.get((volume.state, target))
    if edge is None:
        raise IllegalTransition("volume", volume.id, volume.state, target)
    volume.state = target
    volume.state_reason = reason[:500] if target == ERROR and reason and reason.strip() else None
    volume.updated_at = now
    return edge


def snapshot_transition(snapshot: _Stateful, target: str, *, now: datetime, reason: str | None = None) -> Transition:
    edge = _SNAPSHOT_EDGES.get((snapshot.state, target))
    if edge is None:
        raise IllegalTransition("snapshot", snapshot.id, snapshot.state, target)
    snapshot.state = target
    snapshot.state_reason = reason[:500] if target == SNAP_ERROR and reason and reason.strip() else None
    snapshot.updated_at = now
    return edge


# --- the diagram -------------------------------------------------------------------------


def mermaid() -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL}: createVolume"]
    lines += [f"    {t.source} --> {t.target}: {t.cause}" for t in TRANSITIONS]
    lines += [f"    {state} --> [*]" for state in STATES if state in TERMINAL]
    return "\n".join(lines) + "\n"


def snapshot_mermaid() -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {SNAP_PENDING}: createSnapshot"]
    lines += [f"    {t.source} --> {t.target}: {t.cause}" for t in SNAPSHOT_TRANSITIONS]
    lines += [f"    {SNAP_DELETED} --> [*]"]
    return "\n".join(lines) + "\n"


def diagrams() -> str:
    """The generated part of docs/storage.md (between the markers)."""
    rows = "\n".join(
        f"| `{state}` | {', '.join(f'`{a}`' for a in actions_allowed(state)) or '—'} | "
        f"{'stable' if state in STABLE else 'in flight (locked by an action)'} |"
        for state in STATES
    )
    return (
        "### Volume states\n\n"
        f"```mermaid\n{mermaid()}```\n\n"
        "| state | actions it accepts | kind |\n"
        "|---|---|---|\n"
        f"{rows}\n\n"
        "### Snapshot states\n\n"
        f"```mermaid\n{snapshot_mermaid()}```\n"
    )
