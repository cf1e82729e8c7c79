"""Provisioning's event consumers (registered by hangar.bus.load_consumers).

"provisioning.saga" takes `instance.requested` and runs the create saga's first step at
once, in the delivery's transaction (the bus's inbox marks the event handled in the same
commit, so a redelivery is a no-op). It is an accelerator, not the engine: the saga runner
polls for due steps anyway, so an event that arrives where no runner is (or before one has
started) loses nothing — the instance is simply picked up at the runner's next poll.

The consumer borrows the driver and settings of this process's runner, because the driver
is configured per process (background.services builds it) and a handler registered with
`register(bus)` gets no settings of its own. After the commit it wakes the runner, which
carries the saga on without waiting for its poll.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from handlers.provisioning import runner, saga
from hangar.bus import Bus, Envelope
from hangar.db import utcnow

log = logging.getLogger(__name__)

CONSUMER = "provisioning.saga"


def register(bus: Bus) -> None:
    bus.subscribe("instance.requested", CONSUMER, on_instance_requested)


def on_instance_requested(session: Session, envelope: Envelope) -> None:
    instance_id = uuid.UUID(str(envelope["data"]["instance_id"]))
    local = runner.local()
    if local is None:
        log.debug("no saga runner in this process; instance %s waits for a runner's poll", instance_id)
        return
    step = saga.advance(session, instance_id, utcnow(), local.driver, local.settings)
    log.debug("instance.requested %s: ran %s", instance_id, step or "nothing (not due)")
    runner.kick_after_commit(session)
