"""Top-ups end to end: the state machine, payment methods, idempotency, refunds and their
bounds, tenant isolation, and card numbers that never reach the database, a log or a problem."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import pytest
from conftest import DECLINED, FAILS_LATER, GOOD, Payments
from sqlalchemy import Engine, func, inspect, select, text

from handlers.billing import published as ledger
from handlers.payments.tables import SandboxWebhook, TopUp
from hangar.db import utcnow

pytestmark = pytest.mark.postgres

PROBLEMS = "https://docs.hangar.dev/problems/"


def _post(payments: Payments, path: str, body: Any = None, **headers: str) -> Any:
    return payments.client.post(path, json=body, headers={**payments.headers, **headers})


def _settle(payments: Payments, top_up: dict[str, Any]) -> dict[str, Any]:
    assert payments.deliver() >= 1
    return payments.get(top_up["id"])


def _charge(payments: Payments, amount: int) -> None:
    """Spend `amount` of the wallet (as metering would): wallet → platform:revenue."""
    with payments.sessions() as session:
        now = utcnow()
        wallet = ledger.wallet(session, uuid.UUID(payments.tenant.organization_id), now=now)
        ledger.transfer(
            session,
            id=uuid.uuid4(),
            debit=wallet,
            credit=ledger.platform_account(session, "revenue", now=now),
            amount=amount,
            code="usage",
            now=now,
        )
        session.commit()


# --- the state machine ----------------------------------------------------------------------------


def test_a_good_card_processes_then_succeeds_with_the_new_balance(payments: Payments) -> None:
    top_up = payments.top_up(5000)
    assert (top_up["status"], top_up["processing"], top_up["balance_after"]) == ("processing", True, None)
    assert (top_up["card_brand"], top_up["card_last4"], top_up["currency"]) == ("visa", "4242", "USD")
    done = _settle(payments, top_up)
    assert (done["status"], done["balance_after"], done["processing"]) == ("succeeded", 5000, False)
    second = _settle(payments, payments.top_up(2500))
    assert second["balance_after"] == 7500
    with payments.sessions() as session:
        assert ledger.check_invariants(session) == []


def test_a_declined_card_fails_at_once_and_moves_no_money(payments: Payments) -> None:
    top_up = payments.top_up(5000, card=DECLINED)
    assert top_up["status"] == "failed" and top_up["failure_code"] == "card_declined"
    assert top_up["error"] == {"code": "card_declined", "message": "The card was declined."}
    assert payments.deliver() == 0, "nothing is queued for a decline"
    assert payments.balance() == 0


def test_the_late_failing_card_fails_through_the_webhook(payments: Payments) -> None:
    top_up = payments.top_up(5000, card=FAILS_LATER)
    assert top_up["status"] == "processing"
    done = _settle(payments, top_up)
    assert done["status"] == "failed" and done["failure_code"] == "processing_error"
    assert payments.balance() == 0


def test_confirm_and_cancel_follow_the_state_machine(payments: Payments) -> None:
    waiting = payments.top_up(5000, confirm=False)
    assert waiting["status"] == "requires_confirmation" and waiting["processing"] is False
    canceled = _post(payments, f"/v1/top-ups/{waiting['id']}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    for action in ("cancel", "confirm"):
        again = _post(payments, f"/v1/top-ups/{waiting['id']}/{action}")
        assert again.status_code == 409 and again.json()["type"] == PROBLEMS + "invalid-top-up-state"

    other = payments.top_up(5000, confirm=False)
    confirmed = _post(payments, f"/v1/top-ups/{other['id']}/confirm")
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "processing"
    for action in ("cancel", "confirm"):  # processing: the card is being charged
        refused = _post(payments, f"/v1/top-ups/{other['id']}/{action}")
        assert refused.status_code == 409 and refused.json()["type"] == PROBLEMS + "invalid-top-up-state"
    assert _settle(payments, other)["status"] == "succeeded"
    assert _post(payments, f"/v1/top-ups/{other['id']}/cancel").status_code == 409


def test_saved_payment_methods_pay_top_ups_and_never_show_the_number(payments: Payments) -> None:
    card = {"number": GOOD, "exp_month": 12, "exp_year": 2099, "cvc": "123"}
    created = _post(payments, "/v1/payment-methods", card)
    assert created.status_code == 201, created.text
    method = created.json()
    assert set(method) == {"id", "provider", "brand", "last4", "exp_month", "exp_year", "created_at"}
    assert GOOD not in created.text  # and no cvc: the keys above are all there is
    listed = payments.client.get("/v1/payment-methods", headers=payments.headers).json()["data"]
    assert [m["id"] for m in listed] == [method["id"]]
    top_up = _post(payments, "/v1/top-ups", {"amount": 1000, "payment_method": method["id"]})
    assert top_up.status_code == 201 and top_up.json()["payment_method"] == method["id"]
    assert _settle(payments, top_up.json())["status"] == "succeeded"
    removed = payments.client.delete(f"/v1/payment-methods/{method['id']}", headers=payments.headers)
    assert removed.status_code == 204
    assert payments.client.get(f"/v1/payment-methods/{method['id']}", headers=payments.headers).status_code == 404
    again = _post(payments, "/v1/top-ups", {"amount": 1000, "payment_method": method["id"]})
    assert again.status_code == 404
    expired = _post(payments, "/v1/payment-methods", {**card, "exp_year": 2001})
    assert expired.status_code == 422 and expired.json()["type"] == PROBLEMS + "card-expired"


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        ({"amount": 5000}, 422, "payment-source-required"),
        ({"amount": 5000, "card": GOOD, "payment_method": str(uuid.uuid4())}, 422, "payment-source-required"),
        ({"amount": 5000, "card": "4111111111111111"}, 422, "unknown-test-card"),  # Luhn-valid, not a test card
        ({"amount": 5000, "card": "4242424242424241"}, 422, "invalid-card-number"),  # check digit wrong
        ({"amount": 99, "card": GOOD}, 400, "validation-error"),  # below $1.00
        ({"amount": 1_000_001, "card": GOOD}, 400, "validation-error"),
        ({"amount": 5000, "card": GOOD, "currency": "EUR"}, 400, "validation-error"),
    ],
)
def test_bad_top_ups_are_clear_problems(payments: Payments, body: dict[str, Any], status: int, slug: str) -> None:
    response = _post(payments, "/v1/top-ups", body)
    assert response.status_code == status, response.text
    assert response.json()["type"] == PROBLEMS + slug
    card = body.get("card")
    if card:
        assert card not in response.text, "a card number is never echoed"


# --- idempotency -------------------------------------------------------------------------------------


def test_the_same_key_never_charges_twice_even_concurrently(payments: Payments, engine: Engine) -> None:
    key = "top-up-" + uuid.uuid4().hex
    body = {"amount": 5000, "card": GOOD}
    answers: list[Any] = []

    def send() -> None:
        answers.append(_post(payments, "/v1/top-ups", body, **{"Idempotency-Key": key}))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = [a for a in answers if a.status_code == 201]
    assert ok and all(a.status_code in (201, 409) for a in answers), [a.status_code for a in answers]
    assert len({a.json()["id"] for a in ok}) == 1
    replay = _post(payments, "/v1/top-ups", body, **{"Idempotency-Key": key})
    assert replay.status_code == 201 and replay.json()["id"] == ok[0].json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    with payments.sessions() as session:
        assert session.scalar(select(func.count()).select_from(TopUp)) == 1
        assert session.scalar(select(func.count()).select_from(SandboxWebhook)) == 1
    assert _settle(payments, ok[0].json())["balance_after"] == 5000
    other = _post(payments, "/v1/top-ups", {**body, "amount": 6000}, **{"Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["type"] == PROBLEMS + "idempotency-key-reused"
    # Another card with the same key is another request too (the fingerprint keeps the last 4).
    card = _post(payments, "/v1/top-ups", {**body, "card": DECLINED}, **{"Idempotency-Key": key})
    assert card.status_code == 422


# --- refunds -------------------------------------------------------------------------------------------


def test_refunds_are_partial_and_bounded(payments: Payments) -> None:
    top_up = _settle(payments, payments.top_up(5000))
    path = f"/v1/top-ups/{top_up['id']}/refunds"
    first = _post(payments, path, {"amount": 1000, "reason": "requested by customer"})
    assert first.status_code == 201, first.text
    assert (first.json()["amount"], first.json()["balance_after"]) == (1000, 4000)
    too_much = _post(payments, path, {"amount": 4001})
    assert too_much.status_code == 409 and too_much.json()["type"] == PROBLEMS + "refund-exceeds-top-up"
    assert "was 50.00 USD of which 10.00 USD is refunded already: at most 40.00 USD" in too_much.json()["detail"]
    rest = _post(payments, path, {})  # no amount: everything not refunded yet
    assert rest.status_code == 201 and rest.json()["amount"] == 4000 and rest.json()["balance_after"] == 0
    assert _post(payments, path, {"amount": 1}).status_code == 409
    assert payments.get(top_up["id"])["amount_refunded"] == 5000
    listed = payments.client.get(path, headers=payments.headers).json()["data"]
    assert sorted(r["amount"] for r in listed) == [1000, 4000]
    with payments.sessions() as session:
        assert ledger.check_invariants(session) == []


def test_spent_credits_cannot_be_refunded(payments: Payments) -> None:
    top_up = _settle(payments, payments.top_up(5000))
    _charge(payments, 3000)
    path = f"/v1/top-ups/{top_up['id']}/refunds"
    refused = _post(payments, path, {"amount": 2001})
    assert refused.status_code == 409 and refused.json()["type"] == PROBLEMS + "insufficient-funds"
    assert "holds 20.00 USD that can be refunded; 20.01 USD was asked" in refused.json()["detail"]
    assert _post(payments, path, {"amount": 2000}).status_code == 201
    assert payments.balance() == 0


def test_only_succeeded_top_ups_are_refunded(payments: Payments) -> None:
    for top_up in (payments.top_up(5000, card=DECLINED), payments.top_up(5000), payments.top_up(5000, confirm=False)):
        response = _post(payments, f"/v1/top-ups/{top_up['id']}/refunds", {"amount": 100})
        assert response.status_code == 409 and response.json()["type"] == PROBLEMS + "invalid-top-up-state"


# --- tenant isolation ---------------------------------------------------------------------------------


def test_another_tenants_ids_are_404s(payments: Payments, signup: Any) -> None:
    mine = _settle(payments, payments.top_up(5000))
    method = _post(payments, "/v1/payment-methods", {"number": GOOD, "exp_month": 1, "exp_year": 2099, "cvc": "999"})
    other = signup(organization="Other").headers
    client = payments.client
    for response in (
        client.get(f"/v1/top-ups/{mine['id']}", headers=other),
        client.post(f"/v1/top-ups/{mine['id']}/confirm", headers=other),
        client.post(f"/v1/top-ups/{mine['id']}/cancel", headers=other),
        client.post(f"/v1/top-ups/{mine['id']}/refunds", json={"amount": 100}, headers=other),
        client.get(f"/v1/top-ups/{mine['id']}/refunds", headers=other),
        client.get(f"/v1/payment-methods/{method.json()['id']}", headers=other),
        client.delete(f"/v1/payment-methods/{method.json()['id']}", headers=other),
        client.post("/v1/top-ups", json={"amount": 100, "payment_method": method.json()["id"]}, headers=other),
    ):
        assert response.status_code == 404, response.text
    assert client.get("/v1/top-ups", headers=other).json()["data"] == []
    assert payments.get(mine["id"])["amount_refunded"] == 0


# --- card numbers are never kept, logged or echoed ------------------------------------------------------


def _dump(engine: Engine) -> str:
    """Every row of every table, as text."""
    lines: list[str] = []
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                lines.append(f"{table}: {tuple(row)!r}")
    return "\n".join(lines)


def test_card_numbers_are_never_stored_logged_or_echoed(
    payments: Payments, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = {"Idempotency-Key": "k-" + uuid.uuid4().hex}
    for card in (GOOD, DECLINED, FAILS_LATER):
        _post(payments, "/v1/top-ups", {"amount": 5000, "card": card}, **key | {"Idempotency-Key": card[::-1]})
    _post(payments, "/v1/payment-methods", {"number": GOOD, "exp_month": 5, "exp_year": 2099, "cvc": "8731"}, **key)
    payments.deliver()
    # Refused numbers, and bodies that fail validation in ways that quote values.
    for body in (
        {"amount": 5000, "card": "4111111111111111"},
        {"amount": 5000, "card": "42424242424242x2"},
        {"amount": 5000, "card": "4242424242424242424242"},
        {"amount": "5000", "card": "4000000000000077"},
    ):
        response = _post(payments, "/v1/top-ups", body)
        assert response.status_code in (400, 422)
        assert body["card"] not in response.text, response.text
    refused = _post(
        payments, "/v1/payment-methods", {"number": "4000000000000077", "exp_month": 13, "exp_year": 1, "cvc": "1x"}
    )
    assert refused.status_code == 400 and "4000000000000077" not in refused.text
    everything = _dump(engine) + "\n" + caplog.text
    # (The cvc has no column at all; 4 digits would also match random hex by chance.)
    for number in (GOOD, DECLINED, FAILS_LATER, "4111111111111111", "4000000000000077"):
        assert number not in everything, f"{number} was kept somewhere"
    assert "4242" in _dump(engine), "the last 4 digits are kept (the dump does hold the rows)"
