"""The instance state machine, as data.

`TRANSITIONS` is the whole life of an instance: every edge an instance may take, with what
causes it. Everything else is derived from that table — which actions a state allows (the
409 `invalid-state` detail), which states have work in flight (the saga runner's query),
and the Mermaid diagram in docs/instance-states.md (`make diagram`; a test fails when the
file is stale).

`transition()` is the only code that assigns `Instance.state` (a test greps for others): it
refuses an edge the table lacks, stamps `updated_at` and records `instance.state_changed`
in the outbox of the same transaction, so the event stream is exactly the sequence of
committed states, in order, per instance.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from hangar import outbox

if TYPE_CHECKING:
    from handlers.provisioning.tables import Instance

PENDING = "pending"
PROVISIONING = "provisioning"
RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"
STARTING = "starting"
REBOOTING = "rebooting"
TERMINATING = "terminating"
TERMINATED = "terminated"
FAILED = "failed"

# The contract's order (InstanceState in specs/openapi/provisioning.yaml).
STATES: tuple[str, ...] = (
    PENDING,
    PROVISIONING,
    RUNNING,
    STOPPING,
    STOPPED,
    STARTING,
    REBOOTING,
    TERMINATING,
    TERMINATED,
    FAILED,
)
INITIAL = PENDING
# Nothing ever leaves these.
TERMINAL: frozenset[str] = frozenset({TERMINATED})
# Nothing is in flight: no action runs, the saga has nothing to do. An instance at rest is in
# one of these; the chaos test checks every instance ends in one.
STABLE: frozenset[str] = frozenset({RUNNING, STOPPED, FAILED, TERMINATED})
# Work in flight: an action holds the instance's lock and the saga has steps to run.
TRANSITIONAL: frozenset[str] = frozenset(STATES) - STABLE
# `state_reason` is kept only where the contract gives it a meaning (why it failed, or why
# the platform stopped it — carried from `stopping`, e.g. "balance_depleted"); every other
# state clears it.
REASONED: frozenset[str] = frozenset({FAILED, STOPPING, STOPPED})


@dataclass(frozen=True)
class Transition:
    source: str
    target: str
    cause: str  # what makes it happen: the diagram's label


_NON_TERMINAL_BUT_FAILED = (PENDING, PROVISIONING, RUNNING, STOPPING, STOPPED, STARTING, REBOOTING)

TRANSITIONS: tuple[Transition, ...] = (
    Transition(PENDING, PROVISIONING, "placed, capacity claimed on a host"),
    Transition(PROVISIONING, RUNNING, "host built and booted it"),
    Transition(PROVISIONING, PENDING, "host failed, compensated, retry on another host"),
    Transition(RUNNING, STOPPING, "stop action"),
    Transition(STOPPING, STOPPED, "host stopped it"),
    Transition(STOPPED, STARTING, "start action"),
    Transition(STARTING, RUNNING, "host started it"),
    Transition(RUNNING, REBOOTING, "reboot action"),
    Transition(REBOOTING, RUNNING, "host rebooted it"),
    *(Transition(state, TERMINATING, "terminate") for state in _NON_TERMINAL_BUT_FAILED),
    Transition(FAILED, TERMINATING, "terminate"),
    Transition(TERMINATING, TERMINATED, "destroyed, capacity released"),
    Transition(PENDING, FAILED, "no host has room"),
    Transition(PROVISIONING, FAILED, "every attempt failed, or billing refused"),
    Transition(STARTING, FAILED, "start failed, destroyed, capacity released"),
    Transition(REBOOTING, FAILED, "reboot failed, destroyed, capacity released"),
    # Not in the list, but a stop can fail on a real host too; like a failed start
    # it ends with the instance destroyed and its capacity released, never half-stopped.
    Transition(STOPPING, FAILED, "stop failed, destroyed, capacity released"),
)

_EDGES: dict[tuple[str, str], Transition] = {(t.source, t.target): t for t in TRANSITIONS}

# The tenant's actions (ActionType in the contract): from which state each may start and the
# transitional state it moves the instance to. `create` is absent: it makes the instance.
ACTIONS: dict[str, dict[str, str]] = {
    "stop": {RUNNING: STOPPING},
    "start": {STOPPED: STARTING},
    "reboot": {RUNNING: REBOOTING},
    "terminate": {RUNNING: TERMINATING, STOPPED: TERMINATING, FAILED: TERMINATING},
}


class IllegalTransition(Exception):  # noqa: N818 - it is a refusal, named for what it refuses
    """An edge the state machine does not have: a bug in the caller, never a tenant's error
    (tenants are answered from `ACTIONS` first, with a 409 `invalid-state`)."""

    def __init__(self, instance_id: uuid.UUID, source: str, target: str) -> None:
        allowed = ", ".join(targets(source)) or "nothing"
        super().__init__(f"instance {instance_id}: no transition {source} → {target} (from {source}: {allowed})")
        self.source = source
        self.target = target


def targets(source: str) -> tuple[str, ...]:
    """The states `source` may move to, in table order."""
    return tuple(t.target for t in TRANSITIONS if t.source == source)


def allowed(source: str, target: str) -> bool:
    return (source, target) in _EDGES


def actions_allowed(state: str) -> tuple[str, ...]:
    """The tenant actions an instance in `state` accepts (when no other action runs)."""
    return tuple(name for name, edges in ACTIONS.items() if state in edges)


def begin_life(instance: Instance, now: datetime) -> None:
    """An instance's first state. Announced by `instance.requested` (the caller records it),
    not by `instance.state_changed`, which always has a `from_state`."""
    instance.state = INITIAL
    instance.state_reason = None
    instance.created_at = now
    instance.updated_at = now


def transition(
    session: Session,
    instance: Instance,
    target: str,
    *,
    now: datetime,
    reason: str | None = None,
    action_id: uuid.UUID | None = None,
) -> Transition:
    """Move `instance` to `target` and record `instance.state_changed`; raise
    IllegalTransition for an edge the table lacks (the instance is left untouched)."""
    source = instance.state
    edge = _EDGES.get((source, target))
    if edge is None:
        raise IllegalTransition(instance.id, source, target)
    reason = reason[:500] if reason and reason.strip() else None
    instance.state = target
    instance.state_reason = reason if target in REASONED else None
    instance.updated_at = now
    outbox.record(
        session,
        "instance.state_changed",
        instance.organization_id,
        {
            "instance_id": str(instance.id),
            "from_state": source,
            "to_state": target,
            "reason": reason,
            "action_id": str(action_id) if action_id is not None else None,
        },
        occurred_at=now,
    )
    return edge


# --- the diagram -------------------------------------------------------------------------


def mermaid() -> str:
    """A Mermaid stateDiagram-v2 of `TRANSITIONS`, in table order (so the output is stable)."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL}: createInstance"]
    lines += [f"    {t.source} --> {t.target}: {t.cause}" for t in TRANSITIONS]
    lines += [f"    {state} --> [*]" for state in STATES if state in TERMINAL]
    return "\n".join(lines) + "\n"


def document() -> str:
    """The whole of docs/instance-states.md."""
    rows = "\n".join(
        f"| `{state}` | {', '.join(f'`{a}`' for a in actions_allowed(state)) or '—'} | "
        f"{'stable' if state in STABLE else 'in flight (locked by an action)'} |"
        for state in STATES
    )
    return (
        "# Instance states\n\n"
        "<!-- Generated by `make diagram` from handlers/provisioning/states.py; do not edit. "
        "A test fails when this file is stale. -->\n\n"
        "Every edge an instance can take; `handlers/provisioning/states.py::transition` refuses any other\n"
        "and records `instance.state_changed` for each one taken.\n\n"
        f"```mermaid\n{mermaid()}```\n\n"
        "| state | actions it accepts | kind |\n"
        "|---|---|---|\n"
        f"{rows}\n"
    )
