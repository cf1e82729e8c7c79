"""Receiving the sandbox provider's webhook: verify, then apply — one function for both ways an
event arrives (an HTTP POST to receiveSandboxWebhook, or the in-process delivery of
background.py), so the signature check is exercised on every event either way.

Statuses (docs/payments.md): a missing, malformed or wrong signature → 400
`webhook-signature-invalid`; a timestamp beyond the tolerance → 400
`webhook-timestamp-out-of-tolerance`; a body that is not the event schema → 400; a replayed
event id → 409 `webhook-event-replayed` (a provider treats it as delivered; nothing changes);
an unknown top-up or a mismatched amount → 422 `webhook-event-rejected`; a top-up not yet
confirmed → 409 `invalid-top-up-state`; otherwise 200 with `applied`.
"""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy.orm import Session

from generated import models
from handlers.payments import sandbox, services, signing
from hangar.config import Settings
from hangar.problems import BadRequest


def receive(
    session: Session, *, header: str | None, raw_body: bytes, settings: Settings, now: datetime
) -> services.Receipt:
    signing.verify(
        header,
        raw_body,
        signing.signing_secrets(session, settings, now=now),
        now=now,
        tolerance=settings.payments_webhook_tolerance_seconds,
    )
    # Parsed from the bytes that were verified, never from anything re-serialised.
    try:
        event = models.SandboxEvent.model_validate(json.loads(raw_body))
    except (ValueError, ValidationError):
        raise BadRequest("The webhook body is not a sandbox event.") from None
    return services.apply_event(session, event, provider=sandbox.PROVIDER, settings=settings, now=now)
