"""Billing's event consumers (registered by hangar.bus.load_consumers).

"billing.metering" turns provisioning's and storage's events into meter edges
(metering.record_edge), in the delivery's transaction, so the inbox marker and the edge
commit together. Billing learns about instances and volumes only from these events.

    instance.running            start at price_per_hour (per hour)
    instance.stopped / .failed  stop          (.failed also releases the instance's holds)
    instance.terminated         end
    volume.created              start at size_gib × billing_volume_price_per_gib_month (per 730 h)
    volume.resized              stop + start at the new size, same second
    volume.deleted              end

"billing.wallets" opens a new organization's wallet on organization.created, with the
signup credit (billing_signup_credit) — the wallet would otherwise open on first use.

Storage's events are subscribed only when the contract has them (the catalog), so billing
never stops a process from starting while storage's specification is being written.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy.orm import Session

from generated.events.catalog import CATALOG
from handlers.billing import holds, metering, published
from hangar.bus import Bus, Envelope
from hangar.db import utcnow

log = logging.getLogger(__name__)

METERING = "billing.metering"
WALLETS = "billing.wallets"

_INSTANCE_EVENTS = ("instance.running", "instance.stopped", "instance.terminated", "instance.failed")
_VOLUME_EVENTS = ("volume.created", "volume.resized", "volume.deleted")


def register(bus: Bus) -> None:
    for event_type in _INSTANCE_EVENTS:
        bus.subscribe(event_type, METERING, on_metered_event)
    for event_type in _VOLUME_EVENTS:
        if event_type in CATALOG:
            bus.subscribe(event_type, METERING, on_metered_event)
        else:  # pragma: no cover - only while storage's contract is being written
            log.warning("billing: %s is not in the event catalog; volumes are not metered", event_type)
    bus.subscribe("organization.created", WALLETS, on_organization_created)


def on_organization_created(session: Session, envelope: Envelope) -> None:
    organization_id = uuid.UUID(str(envelope["organization_id"] or envelope["data"]["organization_id"]))
    published.wallet(session, organization_id, now=utcnow(), signup_credit=metering.settings().billing_signup_credit)


def on_metered_event(session: Session, envelope: Envelope) -> None:
    """One consumer identity for every metered event (one inbox; see hangar.bus)."""
    kind = str(envelope["type"])
    data = envelope["data"]
    event_id = uuid.UUID(str(envelope["id"]))
    organization_id = uuid.UUID(str(envelope["organization_id"]))
    at = metering.parse_time(str(envelope["occurred_at"]))
    now = utcnow()
    if kind.startswith("instance."):
        instance_id = uuid.UUID(str(data["instance_id"]))
        common: dict[str, Any] = {
            "organization_id": organization_id,
            "resource_type": "instance",
            "resource_id": instance_id,
            "at": at,
            "now": now,
        }
        if kind == "instance.running":
            metering.record_edge(
                session,
                edge_id=metering.edge_id(event_id, "start"),
                kind="start",
                rate=int(data["price_per_hour"]),
                description=str(data["instance_type"]),
                currency=str(data["currency"]),
                **common,
            )
        elif kind == "instance.terminated":
            metering.record_edge(session, edge_id=metering.edge_id(event_id, "end"), kind="end", **common)
        else:
            metering.record_edge(session, edge_id=metering.edge_id(event_id, "stop"), kind="stop", **common)
        if kind == "instance.failed":
            holds.void_instance_holds(session, organization_id, instance_id, now=now)
        return
    volume_id = uuid.UUID(str(data["volume_id"]))
    common = {
        "organization_id": organization_id,
        "resource_type": "volume",
        "resource_id": volume_id,
        "at": at,
        "now": now,
    }
    price = metering.settings().billing_volume_price_per_gib_month
    if kind == "volume.deleted":
        metering.record_edge(session, edge_id=metering.edge_id(event_id, "end"), kind="end", **common)
        return
    size = int(data["size_gib"])
    name = str(data["name"]) if data.get("name") else metering.meter_label(session, volume_id)
    description = f"volume {name} ({size} GiB)" if name else f"volume ({size} GiB)"
    if kind == "volume.resized":
        metering.record_edge(session, edge_id=metering.edge_id(event_id, "stop"), kind="stop", **common)
    metering.record_edge(
        session,
        edge_id=metering.edge_id(event_id, "start"),
        kind="start",
        rate=size * price,
        description=description,
        label=name,
        currency=published.CURRENCY,
        **common,
    )
