"""Where provisioning asks billing for money: a hold before an instance is launched or
started, voided when a create is compensated.

Both hooks call billing's published ledger (`handlers.billing.published`, the sanctioned
edge in pyproject's import-linter contract) inside the caller's transaction, so a hold and
the request or saga step that asked for it commit together. They take a plain
`HoldRequest`, never a provisioning row, so billing never depends on this context's tables.

- `billing_hold` reserves price_per_hour × billing_hold_seconds (the "minimum run time",
  rounded up to the cent) from the organization's wallet to platform:holds as a pending
  transfer. It is idempotent per action: hold ids are uuid5(action id, n), and while the
  action's latest hold is still pending, asking again changes nothing (the saga's hold step
  after the request placed it, a replayed step). After a compensation voided it, the
  retry on another host places hold n + 1. The wallet opens on first use with the signup
  credit (billing_signup_credit). Not enough available → `HoldRefused("insufficient_credits")`
  saying how much is needed and available; the request answers it with a 402.
- `billing_void` releases whatever the action still holds; idempotent, never refuses, and
  fine when no hold was ever placed (compensation runs it regardless).

The hold's reference is `instance:<id>`: billing's metering tick draws on it when it charges
that instance (handlers/billing/holds.py), and releases it if the instance fails.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from handlers.billing import published as billing
from handlers.provisioning import configuration

_NS = uuid.UUID("9e3c0f64-7a2b-5d1e-8c4f-2b6a1d0e9f37")
_MAX_HOLDS_PER_ACTION = 64  # a create tries saga_max_attempts hosts; far below this


@dataclass(frozen=True)
class HoldRequest:
    """What a hold is for: this create (or start) of this instance at this price."""

    organization_id: uuid.UUID
    instance_id: uuid.UUID
    action_id: uuid.UUID  # the create/start action: the hold's idempotency key
    instance_type: str
    price_per_hour: int  # minor units of `currency`
    currency: str


class HoldRefused(Exception):  # noqa: N818 - a refusal, named for what it means to the saga
    """Billing will not back this launch; `code` becomes the action's error code."""

    def __init__(self, code: str, message: str, *, needed: int = 0, available: int = 0, currency: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.needed = needed
        self.available = available
        self.currency = currency


def hold_amount(price_per_hour: int, seconds: int) -> int:
    """price_per_hour × seconds / 3600, rounded up to a whole minor unit."""
    return -(-price_per_hour * seconds // 3600)


money = billing.format_money


def _hold_id(action_id: uuid.UUID, n: int) -> uuid.UUID:
    return uuid.uuid5(_NS, f"hold:{action_id}:{n}")


def billing_hold(session: Session, request: HoldRequest, *, now: datetime) -> None:
    """Reserve the minimum run time's price for this action (see the module doc). Raises HoldRefused."""
    settings = configuration.current()
    amount = hold_amount(request.price_per_hour, settings.billing_hold_seconds)
    if amount <= 0:
        return
    n = 0
    while n < _MAX_HOLDS_PER_ACTION:
        existing = billing.get_transfer(session, _hold_id(request.action_id, n))
        if existing is None:
            break
        if existing.status == "pending":
            return  # already held for this action
        n += 1
    else:
        raise HoldRefused("hold_error", f"action {request.action_id} has placed {n} holds; refusing another")
    wallet_id = billing.wallet(
        session,
        request.organization_id,
        now=now,
        currency=request.currency,
        signup_credit=settings.billing_signup_credit,
    )
    try:
        billing.transfer(
            session,
            id=_hold_id(request.action_id, n),
            debit=wallet_id,
            credit=billing.platform_account(session, "holds", currency=request.currency, now=now),
            amount=amount,
            code="hold",
            reference=f"instance:{request.instance_id}",
            organization_id=request.organization_id,
            pending=True,
            timeout_seconds=settings.billing_hold_timeout_seconds,
            now=now,
        )
    except billing.InsufficientFunds:
        available = max(0, billing.balance(session, wallet_id).available)
        minutes = settings.billing_hold_seconds / 60
        raise HoldRefused(
            "insufficient_credits",
            f"Launching {request.instance_type} needs {money(amount, request.currency)} of credit held "
            f"({minutes:g} minutes at {money(request.price_per_hour, request.currency)}/hour); "
            f"the organization has {money(available, request.currency)} available. Top up and try again.",
            needed=amount,
            available=available,
            currency=request.currency,
        ) from None


def billing_void(session: Session, request: HoldRequest, *, reason: str, now: datetime) -> None:
    """Give back what `billing_hold` reserved for `request.action_id` (idempotent, never refuses)."""
    for n in range(_MAX_HOLDS_PER_ACTION):
        hold_id = _hold_id(request.action_id, n)
        existing = billing.get_transfer(session, hold_id)
        if existing is None:
            return
        if existing.status != "pending":
            continue
        try:
            billing.void_pending(session, id=uuid.uuid5(_NS, f"void:{hold_id}"), pending_id=hold_id, now=now)
        except billing.LedgerError:  # resolved meanwhile (expired, or drawn on by metering)
            continue
