"""Builders shared by the event tests."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

import hangar.outbox


def api_key_data(**overrides: Any) -> dict[str, Any]:
    """The `data` of a valid api_key.created event."""
    data: dict[str, Any] = {
        "api_key_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "prefix": "hgr_abc123",
        "scopes": ["instances:read"],
    }
    data.update(overrides)
    return data


def record_event(
    session_factory: sessionmaker[Session],
    event_type: str = "api_key.created",
    data: dict[str, Any] | None = None,
    organization_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Commit one outbox row the way a handler's unit of work does."""
    with session_factory() as session, session.begin():
        return hangar.outbox.record(
            session, event_type, organization_id or uuid.uuid4(), api_key_data() if data is None else data
        )


def sample_data(event_type: str) -> dict[str, Any]:
    """A valid `data` for every event type in the contract (tests cover them all)."""
    ids = {name: str(uuid.uuid4()) for name in ("member_id", "user_id", "api_key_id", "owner_user_id")}
    samples: dict[str, dict[str, Any]] = {
        "organization.created": {"name": "Acme", "owner_user_id": ids["owner_user_id"], "owner_email": "a@b.example"},
        "organization.updated": {"changed": ["name", "billing_email"]},
        "member.invited": {
            "member_id": ids["member_id"],
            "user_id": ids["user_id"],
            "email": "c@d.example",
            "role": "admin",
        },
        "member.joined": {"member_id": ids["member_id"], "user_id": ids["user_id"], "role": "member"},
        "member.role_changed": {
            "member_id": ids["member_id"],
            "user_id": ids["user_id"],
            "old_role": "member",
            "new_role": "billing",
        },
        "member.removed": {"member_id": ids["member_id"], "user_id": ids["user_id"], "role": "viewer"},
        "api_key.created": api_key_data(expires_at="2030-01-02T03:04:05Z"),
        "api_key.revoked": {"api_key_id": ids["api_key_id"], "user_id": ids["user_id"], "reason": "member_removed"},
    }
    if event_type in samples:
        return samples[event_type]
    # Every other event: the `data` of its message example in the AsyncAPI contract (the
    # spec lint requires one per message), so a new event is covered without editing this.
    return _contract_example(event_type)


def _contract_example(event_type: str) -> dict[str, Any]:
    import json

    from hangar.config import ROOT

    spec = json.loads((ROOT / "generated" / "asyncapi.json").read_text(encoding="utf-8"))
    for message in spec["components"]["messages"].values():
        if message.get("name") == event_type:
            data: dict[str, Any] = message["examples"][0]["payload"]["data"]
            return data
    raise KeyError(event_type)
