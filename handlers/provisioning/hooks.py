"""Where the create saga will ask billing for money: a hold before the host builds anything,
voided when the create is compensated.

Billing does not exist yet, so both hooks accept everything and do nothing. Their
signatures are the seam billing plugs into: it will make them call its published interface
(`handlers.billing.published`, a second sanctioned edge in pyproject's import-linter
contract), inside the saga step's transaction, so a hold and the step that asked for it
commit together. They take a plain `HoldRequest`, never a provisioning row, so billing never
depends on this context's tables.

Contract for an implementation:
- `billing_hold` is idempotent per `action_id` (a replayed step asks again) and raises
  `HoldRefused` to refuse; the saga then releases the claimed capacity and fails the
  instance with the refusal's `code` (no retry on another host: the host was not the problem).
- `billing_void` is idempotent and must not fail for lack of a hold (compensation runs it
  whether or not the hold step was reached); it never refuses.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session


@dataclass(frozen=True)
class HoldRequest:
    """What a hold is for: this create of this instance at this price."""

    organization_id: uuid.UUID
    instance_id: uuid.UUID
    action_id: uuid.UUID  # the create action: the hold's idempotency key
    instance_type: str
    price_per_hour: int  # minor units of `currency`
    currency: str


class HoldRefused(Exception):  # noqa: N818 - a refusal, named for what it means to the saga
    """Billing will not back this launch; `code` becomes the action's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def billing_hold(session: Session, request: HoldRequest, *, now: datetime) -> None:
    """Reserve money for the launch (no-op until billing lands). Raises HoldRefused."""


def billing_void(session: Session, request: HoldRequest, *, reason: str, now: datetime) -> None:
    """Give back what `billing_hold` reserved for `request.action_id` (no-op until billing lands)."""
