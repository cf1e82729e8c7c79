"""Terminal Gateway's event consumers (registered by hangar.bus.load_consumers).

- instance.stopped / instance.terminated: the instance's sessions end — pending ones at
  once (their tickets stop working), attached ones through a close request that the
  gateway holding them acts on (at once in this process, at its next re-check elsewhere),
  with close code 4499 and reason `instance_stopped`.
- api_key.revoked: the key's unused tickets stop working and its attached sessions close
  (reason `key_revoked`, close code 4401).

The gateway also re-reads the instance's state at every re-check, so a session is closed
even if these events reach a process late or not at all.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.orm import Session

from handlers.terminal import services
from hangar.bus import Bus, Envelope
from hangar.db import utcnow

log = logging.getLogger(__name__)

CONSUMER = "terminal.sessions"


def register(bus: Bus) -> None:
    bus.subscribe("instance.stopped", CONSUMER, on_event)
    bus.subscribe("instance.terminated", CONSUMER, on_event)
    bus.subscribe("api_key.revoked", CONSUMER, on_event)


def on_event(session: Session, envelope: Envelope) -> None:
    data = envelope["data"]
    if envelope["type"] == "api_key.revoked":
        closed = services.close_for_api_key(session, uuid.UUID(str(data["api_key_id"])), utcnow())
        what = f"api key {data['api_key_id']}"
    else:
        closed = services.close_for_instance(session, uuid.UUID(str(data["instance_id"])), "instance_stopped", utcnow())
        what = f"instance {data['instance_id']} ({envelope['type']})"
    if closed:
        log.info("%s: %d terminal session(s) closed", what, closed)
