"""Fixtures for Payments end to end: the real app on the test's migrated database with two
configured webhook secrets (the first signs), a sandbox delay of 0 so an event is due at
once, and `Payments`, a small driver for the API and the provider's side (deliver the
provider's queued webhooks, sign and post events by hand)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from handlers.payments import configuration, signing
from handlers.payments.background import WebhookDeliverer
from handlers.payments.tables import SandboxWebhook
from hangar.db import make_engine

SECRET = "whsec_current_0123456789abcdef"
OLD_SECRET = "whsec_previous_fedcba9876543210"
WEBHOOK = "/v1/payments/webhooks/sandbox"
GOOD, DECLINED, FAILS_LATER = "4242424242424242", "4000000000000002", "4000000000000341"


@pytest.fixture(autouse=True)
def fresh_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings an earlier test's app recorded (background.prepare) do not leak in."""
    monkeypatch.setattr(configuration._holder, "_current", None)


@pytest.fixture
def settings(make_settings: Callable[..., Any]) -> Any:
    return make_settings(
        payments_webhook_secrets=(SECRET, OLD_SECRET), payments_sandbox_delay_ms=0, billing_signup_credit=0
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class Payments:
    def __init__(self, client: Any, tenant: Any, settings: Any, sessions: sessionmaker[Session]) -> None:
        self.client, self.tenant, self.settings, self.sessions = client, tenant, settings, sessions
        self.headers: dict[str, str] = tenant.headers

    def top_up(self, amount: int = 5000, card: str = GOOD, **extra: Any) -> Any:
        response = self.client.post("/v1/top-ups", json={"amount": amount, "card": card, **extra}, headers=self.headers)
        assert response.status_code == 201, response.text
        return response.json()

    def get(self, top_up_id: str) -> Any:
        response = self.client.get(f"/v1/top-ups/{top_up_id}", headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def deliver(self) -> int:
        """The provider's side: deliver every due webhook (in-process, signed)."""
        return WebhookDeliverer(self.settings, self.sessions).run_once()

    def queued(self, top_up_id: str) -> SandboxWebhook:
        with self.sessions() as session:
            row = session.scalar(select(SandboxWebhook).where(SandboxWebhook.top_up_id == uuid.UUID(top_up_id)))
            assert row is not None
            return row

    def event(self, top_up: dict[str, Any], kind: str = "top_up.succeeded", **data: Any) -> bytes:
        body = {
            "id": "evt_" + uuid.uuid4().hex,
            "type": kind,
            "created": int(time.time()),
            "data": {"top_up_id": top_up["id"], "amount": top_up["amount"], "currency": top_up["currency"], **data},
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def post(self, raw: bytes, header: str | None = None, *, secret: str = SECRET, at: int | None = None) -> Any:
        if header is None:
            header = signing.sign(raw, secret, int(time.time()) if at is None else at)
        headers = {"Content-Type": "application/json"}
        if header != "":
            headers[signing.HEADER] = header
        return self.client.post(WEBHOOK, content=raw, headers=headers)

    def balance(self) -> int:
        from handlers.billing import published as ledger

        with self.sessions() as session:
            return ledger.wallet_balance(session, uuid.UUID(self.tenant.organization_id)).posted


@pytest.fixture
def payments(client: Any, signup: Callable[..., Any], settings: Any, sessions: sessionmaker[Session]) -> Payments:
    return Payments(client, signup(), settings, sessions)
