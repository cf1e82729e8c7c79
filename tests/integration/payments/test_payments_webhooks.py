"""The sandbox webhook: only a verified, fresh, first-seen `succeeded` credits the wallet."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import OLD_SECRET, SECRET, Payments
from sqlalchemy import func, select

from handlers.billing import published as ledger
from handlers.payments import signing
from handlers.payments.tables import WebhookEvent

pytestmark = pytest.mark.postgres

PROBLEMS = "https://docs.hangar.dev/problems/"


def _processing(payments: Payments) -> dict[str, Any]:
    top_up = payments.top_up(5000)
    assert top_up["status"] == "processing"
    return top_up


def _events(payments: Payments) -> int:
    with payments.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(WebhookEvent)) or 0)


def _unchanged(payments: Payments, top_up: dict[str, Any]) -> None:
    assert payments.get(top_up["id"])["status"] == "processing"
    assert payments.balance() == 0
    assert _events(payments) == 0


def test_a_verified_succeeded_event_credits_the_wallet_once(payments: Payments) -> None:
    top_up = _processing(payments)
    raw = payments.event(top_up)
    response = payments.post(raw)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "event_id": response.json()["event_id"],
        "type": "top_up.succeeded",
        "top_up_id": top_up["id"],
        "applied": True,
        "status": "succeeded",
    }
    after = payments.get(top_up["id"])
    assert after["status"] == "succeeded" and after["balance_after"] == 5000 and after["processing"] is False
    assert payments.balance() == 5000
    with payments.sessions() as session:
        assert ledger.check_invariants(session) == []


def test_bad_signature_changes_nothing(payments: Payments) -> None:
    top_up = _processing(payments)
    raw = payments.event(top_up)
    forged = payments.post(raw, secret="whsec_attacker_guess_0000000000")
    assert forged.status_code == 400
    assert forged.json()["type"] == PROBLEMS + "webhook-signature-invalid"
    # A signature of other bytes (the amount changed after signing) fails the same way.
    tampered = raw.replace(b'"amount":5000', b'"amount":5001')
    header = signing.sign(raw, SECRET, int(time.time()))
    assert payments.post(tampered, header).status_code == 400
    _unchanged(payments, top_up)


def test_timestamps_beyond_the_tolerance_are_refused(payments: Payments) -> None:
    top_up = _processing(payments)
    for offset in (-301, 301, -10_000_000):  # stale, from the future, ancient
        response = payments.post(payments.event(top_up), at=int(time.time()) + offset)  # correctly signed
        assert response.status_code == 400, offset
        assert response.json()["type"] == PROBLEMS + "webhook-timestamp-out-of-tolerance"
    _unchanged(payments, top_up)


def test_a_timestamp_within_the_tolerance_is_accepted(payments: Payments) -> None:
    top_up = _processing(payments)
    assert payments.post(payments.event(top_up), at=int(time.time()) - 290).status_code == 200


MALFORMED = [
    "",  # missing
    "garbage",
    "t=abc,v1=" + "0" * 64,
    "v1=" + "0" * 64,  # no timestamp
    "t=1795860000",  # no signature
    "t=1795860000,v1=xyz",
    "t=1,t=2,v1=" + "0" * 64,
    "t=1795860000,v1=" + "A" * 64,  # hex must be lower case
]


def test_missing_or_malformed_headers_are_refused(payments: Payments) -> None:
    top_up = _processing(payments)
    for header in MALFORMED:
        response = payments.post(payments.event(top_up), header)
        assert response.status_code == 400, header
        assert response.json()["type"] == PROBLEMS + "webhook-signature-invalid", header
    _unchanged(payments, top_up)


def test_a_replayed_event_is_a_409_and_changes_nothing(payments: Payments) -> None:
    top_up = _processing(payments)
    raw = payments.event(top_up)
    header = signing.sign(raw, SECRET, int(time.time()))
    assert payments.post(raw, header).status_code == 200
    replay = payments.post(raw, header)  # the same bytes and signature, within the tolerance
    assert replay.status_code == 409
    assert replay.json()["type"] == PROBLEMS + "webhook-event-replayed"
    assert payments.balance() == 5000
    assert _events(payments) == 1


def test_failed_after_succeeded_does_not_uncredit(payments: Payments) -> None:
    top_up = _processing(payments)
    assert payments.post(payments.event(top_up)).status_code == 200
    late = payments.post(payments.event(top_up, "top_up.failed", failure_code="processing_error"))
    assert late.status_code == 200
    assert late.json()["applied"] is False and late.json()["status"] == "succeeded"
    assert payments.get(top_up["id"])["status"] == "succeeded"
    assert payments.balance() == 5000


def test_succeeded_after_failed_does_not_credit(payments: Payments) -> None:
    top_up = _processing(payments)
    assert payments.post(payments.event(top_up, "top_up.failed", failure_code="processing_error")).status_code == 200
    late = payments.post(payments.event(top_up))
    assert late.status_code == 200 and late.json()["applied"] is False
    assert payments.get(top_up["id"])["status"] == "failed"
    assert payments.balance() == 0


def test_an_outcome_before_confirmation_is_a_409_and_not_recorded(payments: Payments) -> None:
    top_up = payments.top_up(5000, confirm=False)
    raw = payments.event(top_up)
    header = signing.sign(raw, SECRET, int(time.time()))
    early = payments.post(raw, header)
    assert early.status_code == 409 and early.json()["type"] == PROBLEMS + "invalid-top-up-state"
    assert _events(payments) == 0
    # Once confirmed, the same event (the provider's retry) applies.
    assert payments.client.post(f"/v1/top-ups/{top_up['id']}/confirm", headers=payments.headers).status_code == 200
    assert payments.post(raw, header).status_code == 200
    assert payments.balance() == 5000


def test_events_for_unknown_top_ups_or_other_amounts_are_rejected(payments: Payments) -> None:
    top_up = _processing(payments)
    unknown = payments.post(payments.event({**top_up, "id": "00000000-0000-4000-8000-000000000000"}))
    assert unknown.status_code == 422 and unknown.json()["type"] == PROBLEMS + "webhook-event-rejected"
    more = payments.post(payments.event({**top_up, "amount": 999_999}))
    assert more.status_code == 422 and more.json()["type"] == PROBLEMS + "webhook-event-rejected"
    _unchanged(payments, top_up)


def test_rotation_accepts_every_configured_secret(payments: Payments) -> None:
    first, second, third = _processing(payments), _processing(payments), _processing(payments)
    assert payments.post(payments.event(first), secret=SECRET).status_code == 200
    assert payments.post(payments.event(second), secret=OLD_SECRET).status_code == 200
    # Several v1 signatures (the provider signs with old and new during a rotation): one match is enough.
    raw, now = payments.event(third), int(time.time())
    unknown = signing.signature("whsec_retired_secret_000000000000", now, raw)
    header = f"t={now},v1={unknown},v1={signing.signature(OLD_SECRET, now, raw)}"
    assert payments.post(raw, header).status_code == 200
    assert payments.balance() == 15000


def test_the_provider_delivers_through_the_same_verification(
    payments: Payments, monkeypatch: pytest.MonkeyPatch
) -> None:
    top_up = _processing(payments)
    # The in-process delivery goes through the signature check too: a wrong signature is refused.
    real_sign = signing.sign
    monkeypatch.setattr(signing, "sign", lambda raw, secret, at: real_sign(raw, "whsec_not_the_receivers_0000", at))
    assert payments.deliver() == 0
    queued = payments.queued(top_up["id"])
    assert "webhook-signature-invalid" in (queued.last_error or "") and queued.delivered_at is None
    assert payments.get(top_up["id"])["status"] == "processing"
    # With the real signature (the retry, once its backoff is over) it applies.
    monkeypatch.setattr(signing, "sign", real_sign)
    with payments.sessions() as session:
        row = session.get(type(queued), queued.id)
        assert row is not None
        row.due_at = row.created_at
        session.commit()
    assert payments.deliver() == 1
    assert payments.get(top_up["id"])["status"] == "succeeded"
    assert payments.queued(top_up["id"]).delivered_at is not None
    assert payments.balance() == 5000


def test_http_delivery_treats_a_replay_as_delivered(
    payments: Payments, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handlers.payments import background

    top_up = _processing(payments)
    sent: list[int] = []

    def post(url: str, *, content: bytes, headers: dict[str, str], timeout: float) -> Any:
        response = payments.client.post(url.removeprefix("http://testserver"), content=content, headers=headers)
        sent.append(response.status_code)
        return response

    monkeypatch.setattr(background.httpx, "post", post)
    over_http = settings.__class__(
        **{**settings.__dict__, "payments_webhook_url": "http://testserver/v1/payments/webhooks/sandbox"}
    )
    deliverer = background.WebhookDeliverer(over_http, payments.sessions)
    assert deliverer.run_once() == 1
    assert payments.get(top_up["id"])["status"] == "succeeded"
    # The provider loses our 200 and sends again: a 409 replay, which it counts as delivered.
    deliverer._send_http(
        payments.queued(top_up["id"]).payload.encode(),
        signing.sign(payments.queued(top_up["id"]).payload.encode(), SECRET, int(time.time())),
    )
    assert sent == [200, 409]
    assert payments.balance() == 5000
