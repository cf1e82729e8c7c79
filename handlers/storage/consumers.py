"""Storage's event consumers (registered by hangar.bus.load_consumers).

"storage.instances" follows provisioning's instances: when one is terminated (or has failed
for good — its host copy is destroyed either way) every volume attached to it is detached, so
the volumes outlive it and can be attached elsewhere. It runs in the delivery's transaction
(the inbox marks the event handled in the same commit, so a redelivery is a no-op) and only
records detach actions; the storage runner does the host work. A volume another action holds
right now is skipped here: when that action ends, the runner looks at the instance again
(steps._follow_instance) and detaches it then.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from handlers.storage import services
from handlers.storage.locks import lock
from handlers.storage.tables import Volume
from handlers.storage.wake import kick_after_commit
from hangar.bus import Bus, Envelope
from hangar.db import utcnow

log = logging.getLogger(__name__)

CONSUMER = "storage.instances"


def register(bus: Bus) -> None:
    bus.subscribe("instance.terminated", CONSUMER, on_instance_gone)
    bus.subscribe("instance.failed", CONSUMER, on_instance_gone)


def on_instance_gone(session: Session, envelope: Envelope) -> None:
    instance_id = uuid.UUID(str(envelope["data"]["instance_id"]))
    organization_id = uuid.UUID(str(envelope["organization_id"]))
    now = utcnow()
    volume_ids = session.scalars(
        select(Volume.id)
        .where(Volume.organization_id == organization_id, Volume.instance_id == instance_id)
        .order_by(Volume.id)  # locked in id order: two deliveries never deadlock
    ).all()
    detached = 0
    for volume_id in volume_ids:
        volume = lock(session, Volume, volume_id)
        if volume is not None and volume.instance_id == instance_id:
            reason = f"instance {str(envelope['type']).removeprefix('instance.')}"
            if services.detach_for_instance(session, volume, now, reason=reason) is not None:
                detached += 1
    if detached:
        log.info("instance %s is %s: detaching %d volume(s)", instance_id, envelope["type"], detached)
        kick_after_commit(session)
