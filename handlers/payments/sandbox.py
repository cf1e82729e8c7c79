"""The built-in `sandbox` payment provider: what a PSP does, in-process and deterministic.

- Tokenization: a card number is checked (digits, Luhn) and must be one of the test cards;
  the provider's vault (`sandbox_cards`) keeps a token, the card's behaviour, brand, last 4
  and expiry — never the number, which goes no further than this module's stack.
- Charges: `charge` at confirmation. 4000000000000002 is declined synchronously; every other
  test card is accepted (`processing`) and the outcome is queued as a webhook event due
  `payments_sandbox_delay_ms` later (`sandbox_webhook_outbox`, in the confirmation's
  transaction): `top_up.succeeded` for 4242424242424242, `top_up.failed` (processing_error)
  for 4000000000000341. background.py delivers them, signed (signing.py).
- Refunds succeed synchronously (nothing is owed back to Hangar by a webhook).
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from handlers.payments.tables import SandboxCard, SandboxWebhook

PROVIDER = "sandbox"
# Test card → behaviour. Any other Luhn-valid number is refused as an unknown test card.
TEST_CARDS: dict[str, str] = {
    "4242424242424242": "succeed",
    "4000000000000002": "decline",
    "4000000000000341": "fail_later",
}
DECLINED = ("card_declined", "The card was declined.")
FAILED_LATER = ("processing_error", "The card issuer reported a processing error.")


class CardRefused(Exception):  # noqa: N818 - the provider's answer, not a Python error type
    """The provider refuses to tokenize the card. `code` is a problem slug; the message never
    contains the number."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Charge:
    declined: bool
    failure_code: str | None = None
    failure_message: str | None = None


def luhn_valid(number: str) -> bool:
    if not number.isdigit() or not 12 <= len(number) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        digit = int(ch)
        if i % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def brand_of(number: str) -> str:
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("51", "52", "53", "54", "55") or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number[:2] in ("34", "37"):
        return "amex"
    if number.startswith("6011") or number.startswith("65"):
        return "discover"
    return "unknown"


def tokenize(session: Session, *, number: str, exp_month: int, exp_year: int, now: datetime) -> SandboxCard:
    """The provider's token for a test card, stored in its vault (without the number)."""
    if not luhn_valid(number):
        raise CardRefused("invalid-card-number", "The card number is not valid (its check digit is wrong).")
    behaviour = TEST_CARDS.get(number)
    if behaviour is None:
        raise CardRefused(
            "unknown-test-card",
            "The sandbox provider accepts only its test cards: 4242424242424242 (succeeds), "
            "4000000000000002 (declined), 4000000000000341 (fails after processing).",
        )
    if (exp_year, exp_month) < (now.year, now.month):
        raise CardRefused("card-expired", f"The card expired at the end of {exp_month:02d}/{exp_year}.")
    card = SandboxCard(
        token="tok_" + secrets.token_hex(16),
        behaviour=behaviour,
        brand=brand_of(number),
        last4=number[-4:],
        exp_month=exp_month,
        exp_year=exp_year,
        created_at=now,
    )
    session.add(card)
    session.flush()
    return card


def charge(
    session: Session,
    *,
    token: str,
    top_up_id: uuid.UUID,
    amount: int,
    currency: str,
    delay_ms: int,
    now: datetime,
) -> Charge:
    """Charge a tokenized card for a top-up. Declined now, or accepted with the outcome queued
    as a webhook event due `delay_ms` from now."""
    card = session.get(SandboxCard, token)
    if card is None:  # a token this provider never issued: treat as a decline, never as money
        return Charge(True, *DECLINED)
    if card.behaviour == "decline":
        return Charge(True, *DECLINED)
    event_id = "evt_" + secrets.token_hex(16)
    data: dict[str, object] = {"top_up_id": str(top_up_id), "amount": amount, "currency": currency}
    if card.behaviour == "succeed":
        kind = "top_up.succeeded"
    else:
        kind = "top_up.failed"
        data["failure_code"], data["failure_message"] = FAILED_LATER
    payload = json.dumps(
        {"id": event_id, "type": kind, "created": int(now.timestamp()), "data": data}, separators=(",", ":")
    )
    session.add(
        SandboxWebhook(
            id=event_id,
            top_up_id=top_up_id,
            payload=payload,
            due_at=now + timedelta(milliseconds=delay_ms),
            delivered_at=None,
            attempts=0,
            last_error=None,
            created_at=now,
        )
    )
    return Charge(False)


def refund(session: Session, *, token: str, amount: int, currency: str) -> None:
    """Give `amount` back to the card. The sandbox's refunds always succeed at once."""
    if amount <= 0:
        raise ValueError("a refund is a positive amount")
