"""Provisioning's event consumers (registered by hangar.bus.load_consumers).

"provisioning.saga" takes `instance.requested` and runs the create saga's first step at
once, in the delivery's transaction (the bus's inbox marks the event handled in the same
commit, so a redelivery is a no-op). It is an accelerator, not the engine: the saga runner
polls for due steps anyway, so an event that arrives where no runner is (or before one has
started) loses nothing — the instance is simply picked up at the runner's next poll.

"provisioning.stop_on_depleted" takes billing's `billing.balance_depleted` and stops (never
terminates) the organization's running instances through the normal stop action path
(services.start_action), with state_reason "balance_depleted": their disks and capacity
stay, and the tenant starts them again after a top-up. An instance locked by another
action at that moment is left to it (see docs/billing.md, "Metering").

The saga consumer borrows the driver and settings of this process's runner, because the driver
is configured per process (background.services builds it) and a handler registered with
`register(bus)` gets no settings of its own. After the commit it wakes the runner, which
carries the saga on without waiting for its poll.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers.provisioning import runner, saga, services, states
from handlers.provisioning.tables import Instance
from hangar.bus import Bus, Envelope
from hangar.context import Principal, RequestContext
from hangar.db import utcnow
from hangar.problems import Problem

log = logging.getLogger(__name__)

CONSUMER = "provisioning.saga"
DEPLETION = "provisioning.stop_on_depleted"
DEPLETED_REASON = "balance_depleted"
_PLATFORM = uuid.UUID(int=0)  # the acting "user" and "key" of a stop the platform starts


def register(bus: Bus) -> None:
    bus.subscribe("instance.requested", CONSUMER, on_instance_requested)
    bus.subscribe("billing.balance_depleted", DEPLETION, on_balance_depleted)


def on_balance_depleted(session: Session, envelope: Envelope) -> None:
    """Stop every running, unlocked instance of the organization (reason balance_depleted)."""
    organization_id = uuid.UUID(str(envelope["organization_id"]))
    now = utcnow()
    running = list(
        session.scalars(
            select(Instance.id)
            .where(
                Instance.organization_id == organization_id,
                Instance.state == states.RUNNING,
                Instance.action_id.is_(None),
            )
            .order_by(Instance.id)
        )
    )
    principal = Principal(organization_id, _PLATFORM, _PLATFORM, "platform", frozenset())
    ctx = RequestContext(request_id=f"evt_{envelope['id']}", session=session, principal=principal, now=now)
    stopped = 0
    for instance_id in running:
        try:
            with session.begin_nested():
                services.start_action(ctx, instance_id, "stop", reason=DEPLETED_REASON)
            stopped += 1
        except Problem as refusal:  # locked or changed state since the query: leave it be
            log.info("balance depleted: instance %s not stopped: %s", instance_id, refusal.detail)
    log.info(
        "organization %s: balance depleted, %d of %d running instances stopping", organization_id, stopped, len(running)
    )


def on_instance_requested(session: Session, envelope: Envelope) -> None:
    instance_id = uuid.UUID(str(envelope["data"]["instance_id"]))
    local = runner.local()
    if local is None:
        log.debug("no saga runner in this process; instance %s waits for a runner's poll", instance_id)
        return
    step = saga.advance(session, instance_id, utcnow(), local.driver, local.settings)
    log.debug("instance.requested %s: ran %s", instance_id, step or "nothing (not due)")
    runner.kick_after_commit(session)
