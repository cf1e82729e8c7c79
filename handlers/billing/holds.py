"""Holds as metering sees them: the ledger's open pending transfers with code "hold".

Two kinds exist, told apart by the transfer's reference:
- `instance:<uuid>` — a launch or start hold, placed by provisioning's hook
  (handlers/provisioning/hooks.py) through billing's published ledger functions, one per
  action, sized for the minimum run time;
- `metering:rolling` — the hold the tick re-places after every charge for the
  organization's running resources (a pending transfer resolves once, so a hold that funded
  a charge is gone and a fresh one takes its place).

The ledger is the only record of them (no table of our own to drift): what is open is what
`ledger_open_pendings` lists.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from handlers.billing import published
from handlers.billing.tables import LedgerOpenPending, LedgerTransfer

log = logging.getLogger(__name__)

ROLLING = "metering:rolling"
HOLD_CODE = "hold"
# A hold this close to its expiry is left to the ledger's expiry sweep (never raced).
EXPIRY_MARGIN = timedelta(seconds=5)
_NS = uuid.UUID("0d6a4f0e-1b8e-5f55-9d7c-3e2a90b1c7a4")

_TRANSFERS = cast(Table, LedgerTransfer.__table__)
_OPEN = cast(Table, LedgerOpenPending.__table__)


def instance_reference(instance_id: uuid.UUID) -> str:
    return f"instance:{instance_id}"


def instance_of(reference: str | None) -> uuid.UUID | None:
    """The instance a launch hold backs, from its reference (None for any other hold)."""
    if reference is None or not reference.startswith("instance:"):
        return None
    try:
        return uuid.UUID(reference[len("instance:") :])
    except ValueError:
        return None


@dataclass(frozen=True)
class Hold:
    id: uuid.UUID
    amount: int
    currency: str
    reference: str | None
    created_at: datetime
    expires_at: datetime | None


def open_holds(session: Session, organization_id: uuid.UUID, *, now: datetime) -> list[Hold]:
    """The organization's open holds not about to expire, oldest first."""
    return open_holds_of(session, [organization_id], now=now).get(organization_id, [])


def open_holds_of(
    session: Session, organization_ids: Iterable[uuid.UUID], *, now: datetime
) -> dict[uuid.UUID, list[Hold]]:
    """open_holds of several organizations in one query, by organization."""
    ids = sorted(set(organization_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(
            _TRANSFERS.c.organization_id,
            _TRANSFERS.c.id,
            _TRANSFERS.c.amount,
            _TRANSFERS.c.currency,
            _TRANSFERS.c.reference,
            _TRANSFERS.c.created_at,
            _OPEN.c.expires_at,
        )
        .join(_OPEN, _OPEN.c.pending_id == _TRANSFERS.c.id)
        .where(_TRANSFERS.c.organization_id.in_(ids), _TRANSFERS.c.code == HOLD_CODE)
        .order_by(_TRANSFERS.c.created_at, _TRANSFERS.c.id)
    ).all()
    found: dict[uuid.UUID, list[Hold]] = {}
    for r in rows:
        if r.expires_at is None or r.expires_at > now + EXPIRY_MARGIN:
            found.setdefault(r.organization_id, []).append(
                Hold(r.id, r.amount, r.currency, r.reference, r.created_at, r.expires_at)
            )
    return found


def settle(hold: Hold, amount: int) -> published.Resolution:
    """The ledger operation that settles `hold` for `amount` (≤ its amount; 0 = release it all)."""
    if amount > 0:
        return published.Resolution(uuid.uuid5(_NS, f"post:{hold.id}"), hold.id, "post", amount)
    return published.Resolution(uuid.uuid5(_NS, f"void:{hold.id}"), hold.id, "void")


def post_hold(session: Session, hold: Hold, amount: int, *, now: datetime) -> None:
    """Settle `hold` for `amount` (≤ its amount; 0 = release it all)."""
    published.apply(session, [settle(hold, amount)], now=now).views()


def void_instance_holds(session: Session, organization_id: uuid.UUID, instance_id: uuid.UUID, *, now: datetime) -> int:
    """Release every open hold backing `instance_id` (it failed or is gone); the number released."""
    reference = instance_reference(instance_id)
    released = 0
    for hold in open_holds(session, organization_id, now=now):
        if hold.reference != reference:
            continue
        try:
            post_hold(session, hold, 0, now=now)
            released += 1
        except published.LedgerError as exc:  # resolved meanwhile (posted by a tick, expired)
            log.info("hold %s of instance %s not released: %s", hold.id, instance_id, exc)
    return released


def rolling_hold_id(organization_id: uuid.UUID, seq: int, currency: str) -> uuid.UUID:
    return uuid.uuid5(_NS, f"rolling:{organization_id}:{seq}:{currency}")
