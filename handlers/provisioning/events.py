"""The provisioning events' `data`, built in one place from the rows (specs/asyncapi/provisioning.yaml).

Each function records its event in the session's outbox, in the caller's transaction, at
the caller's `now`; `instance.state_changed` is the state machine's own (states.transition).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from handlers.provisioning.tables import Action, Instance
from hangar import outbox


def instance_requested(session: Session, instance: Instance, action: Action, now: datetime) -> None:
    outbox.record(
        session,
        "instance.requested",
        instance.organization_id,
        {
            "instance_id": str(instance.id),
            "action_id": str(action.id),
            "name": instance.name,
            "region": instance.region,
            "instance_type": instance.instance_type,
            "image": instance.image,
            "vcpus": instance.vcpus,
            "memory_mb": instance.memory_mb,
            "disk_gb": instance.disk_gb,
            "gpus": instance.gpus,
            "price_per_hour": instance.price_per_hour,
            "currency": instance.currency,
        },
        occurred_at=now,
    )


def instance_running(session: Session, instance: Instance, now: datetime) -> None:
    """Metering starts (or continues) here, so it carries what billing prices by."""
    if instance.zone is None or instance.host_id is None:
        raise ValueError(f"instance {instance.id} is running without a placement")
    outbox.record(
        session,
        "instance.running",
        instance.organization_id,
        {
            "instance_id": str(instance.id),
            "region": instance.region,
            "zone": instance.zone,
            "host_id": str(instance.host_id),
            "instance_type": instance.instance_type,
            "vcpus": instance.vcpus,
            "memory_mb": instance.memory_mb,
            "disk_gb": instance.disk_gb,
            "gpus": instance.gpus,
            "price_per_hour": instance.price_per_hour,
            "currency": instance.currency,
        },
        occurred_at=now,
    )


def instance_stopped(session: Session, instance: Instance, now: datetime, reason: str | None = None) -> None:
    outbox.record(
        session,
        "instance.stopped",
        instance.organization_id,
        {"instance_id": str(instance.id), "reason": reason},
        occurred_at=now,
    )


def instance_terminated(session: Session, instance: Instance, now: datetime, reason: str | None = None) -> None:
    outbox.record(
        session,
        "instance.terminated",
        instance.organization_id,
        {"instance_id": str(instance.id), "reason": reason},
        occurred_at=now,
    )


def instance_failed(session: Session, instance: Instance, now: datetime, *, code: str, message: str) -> None:
    outbox.record(
        session,
        "instance.failed",
        instance.organization_id,
        {"instance_id": str(instance.id), "error_code": code, "message": message},
        occurred_at=now,
    )


def action_completed(session: Session, action: Action, now: datetime) -> None:
    outbox.record(
        session,
        "action.completed",
        action.organization_id,
        {
            "action_id": str(action.id),
            "instance_id": str(action.instance_id),
            "type": action.type,
            "status": action.status,
            "error_code": action.error_code,
            "error_message": action.error_message,
        },
        occurred_at=now,
    )
