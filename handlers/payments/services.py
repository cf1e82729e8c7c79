"""Payments: payment methods, the top-up state machine, refunds, and applying the provider's
verified webhook events. Every function works in the caller's transaction and never commits.

Top-up states (Stripe's PaymentIntent, reduced to what the sandbox provider needs):

    requires_confirmation ──confirm──► processing ──webhook succeeded──► succeeded
            │                              └──────webhook failed─────► failed
            ├──confirm, card declined──────────────────────────────► failed
            └──cancel──────────────────────────────────────────────► canceled

Anything else is a 409 `invalid-top-up-state`. Only `processing → succeeded` moves money:
one ledger transfer platform:psp_clearing → the organization's wallet, code `top_up`, whose id
is derived from the top-up's, so it can happen once whatever is replayed. A refund moves it
back (wallet → psp_clearing, code `refund`) and never more than was paid minus what was
refunded, nor more than the wallet holds without its credit limit.

Concurrency: every change to a top-up first takes its row's write lock with a no-op UPDATE
(`_lock`) — a row lock on PostgreSQL, the database's write lock on SQLite — so two webhooks
for one top-up, or two refunds of it, run one after the other and the second sees the first.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from handlers.billing import published as ledger
from handlers.payments import sandbox
from handlers.payments.tables import PaymentMethod, Refund, TopUp, WebhookEvent
from hangar import outbox
from hangar.config import Settings
from hangar.pagination import Page, paginate
from hangar.problems import Conflict, NotFound, Unprocessable

log = logging.getLogger(__name__)

# The namespace of ids derived from a top-up's (its ledger transfer).
_NAMESPACE = uuid.UUID("2b0c6f4e-8d1a-5e3b-9a7c-4f5e6d7c8b9a")
TRANSITIONS: dict[str, frozenset[str]] = {
    "requires_confirmation": frozenset({"processing", "failed", "canceled"}),
    "processing": frozenset({"succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "canceled": frozenset(),
}
TERMINAL = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


class InvalidState(Conflict):
    slug = "invalid-top-up-state"


class WebhookReplayed(Conflict):
    slug = "webhook-event-replayed"


class WebhookRejected(Unprocessable):
    slug = "webhook-event-rejected"


def top_up_transfer_id(top_up_id: uuid.UUID) -> uuid.UUID:
    """The ledger transfer that credits a top-up: one per top-up, ever."""
    return uuid.uuid5(_NAMESPACE, f"top_up:{top_up_id}")


def _transition(top_up: TopUp, status: str, now: datetime) -> None:
    if status not in TRANSITIONS[top_up.status]:
        raise InvalidState(f"A top-up that is {top_up.status} cannot become {status}.")
    top_up.status = status
    top_up.updated_at = now
    if status in TERMINAL:
        top_up.completed_at = now


def _lock(session: Session, top_up_id: uuid.UUID) -> None:
    session.execute(update(TopUp).where(TopUp.id == top_up_id).values(updated_at=TopUp.updated_at))


def _emit(session: Session, event_type: str, organization_id: uuid.UUID, data: dict[str, Any], now: datetime) -> None:
    outbox.record(session, event_type, organization_id, data, occurred_at=now)


# --- payment methods --------------------------------------------------------------------------


def _refused(exc: sandbox.CardRefused) -> Unprocessable:
    return Unprocessable(exc.message, slug=exc.code)


def create_payment_method(
    session: Session, organization_id: uuid.UUID, *, number: str, exp_month: int, exp_year: int, now: datetime
) -> PaymentMethod:
    try:
        card = sandbox.tokenize(session, number=number, exp_month=exp_month, exp_year=exp_year, now=now)
    except sandbox.CardRefused as exc:
        raise _refused(exc) from None
    method = PaymentMethod(
        id=uuid.uuid4(),
        organization_id=organization_id,
        provider=sandbox.PROVIDER,
        token=card.token,
        brand=card.brand,
        last4=card.last4,
        exp_month=card.exp_month,
        exp_year=card.exp_year,
        created_at=now,
        deleted_at=None,
    )
    session.add(method)
    session.flush()
    return method


def get_payment_method(session: Session, organization_id: uuid.UUID, method_id: uuid.UUID) -> PaymentMethod:
    method = session.scalar(
        select(PaymentMethod).where(
            PaymentMethod.id == method_id,
            PaymentMethod.organization_id == organization_id,
            PaymentMethod.deleted_at.is_(None),
        )
    )
    if method is None:
        raise NotFound(f"No payment method with id {method_id} exists.")
    return method


def list_payment_methods(
    session: Session, organization_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[PaymentMethod]:
    stmt = select(PaymentMethod).where(
        PaymentMethod.organization_id == organization_id, PaymentMethod.deleted_at.is_(None)
    )
    return paginate(
        session, stmt, (PaymentMethod.created_at, PaymentMethod.id), limit=limit, cursor=cursor, descending=True
    )


def delete_payment_method(session: Session, organization_id: uuid.UUID, method_id: uuid.UUID, now: datetime) -> None:
    get_payment_method(session, organization_id, method_id).deleted_at = now


# --- top-ups -----------------------------------------------------------------------------------


def create_top_up(
    session: Session,
    organization_id: uuid.UUID,
    *,
    amount: int,
    currency: str,
    payment_method_id: uuid.UUID | None,
    card: str | None,
    confirm: bool,
    settings: Settings,
    now: datetime,
) -> TopUp:
    if (payment_method_id is None) == (card is None):
        raise Unprocessable(
            "Give exactly one of `payment_method` (a saved card's id) and `card` (a test card number).",
            slug="payment-source-required",
        )
    if payment_method_id is not None:
        method = get_payment_method(session, organization_id, payment_method_id)
        token, brand, last4 = method.token, method.brand, method.last4
    else:
        assert card is not None
        try:
            # A raw card has no expiry in the request: the sandbox takes it as valid this year.
            vaulted = sandbox.tokenize(session, number=card, exp_month=12, exp_year=now.year, now=now)
        except sandbox.CardRefused as exc:
            raise _refused(exc) from None
        token, brand, last4 = vaulted.token, vaulted.brand, vaulted.last4
    top_up = TopUp(
        id=uuid.uuid4(),
        organization_id=organization_id,
        amount=amount,
        amount_refunded=0,
        currency=currency,
        status="requires_confirmation",
        payment_method_id=payment_method_id,
        provider=sandbox.PROVIDER,
        provider_token=token,
        card_brand=brand,
        card_last4=last4,
        failure_code=None,
        failure_message=None,
        transfer_id=None,
        balance_after=None,
        created_at=now,
        updated_at=now,
        completed_at=None,
    )
    session.add(top_up)
    session.flush()
    if confirm:
        _confirm(session, top_up, settings=settings, now=now)
    return top_up


def get_top_up(session: Session, organization_id: uuid.UUID, top_up_id: uuid.UUID) -> TopUp:
    top_up = session.scalar(select(TopUp).where(TopUp.id == top_up_id, TopUp.organization_id == organization_id))
    if top_up is None:
        raise NotFound(f"No top-up with id {top_up_id} exists.")
    return top_up


def _locked(session: Session, organization_id: uuid.UUID, top_up_id: uuid.UUID) -> TopUp:
    _lock(session, top_up_id)
    top_up = get_top_up(session, organization_id, top_up_id)
    session.refresh(top_up)
    return top_up


def list_top_ups(
    session: Session, organization_id: uuid.UUID, *, limit: int, cursor: str | None, status: str | None
) -> Page[TopUp]:
    stmt = select(TopUp).where(TopUp.organization_id == organization_id)
    if status is not None:
        stmt = stmt.where(TopUp.status == status)
    return paginate(session, stmt, (TopUp.created_at, TopUp.id), limit=limit, cursor=cursor, descending=True)


def _confirm(session: Session, top_up: TopUp, *, settings: Settings, now: datetime) -> None:
    if top_up.status != "requires_confirmation":
        raise InvalidState(f"Only a top-up that requires confirmation can be confirmed; this one is {top_up.status}.")
    result = sandbox.charge(
        session,
        token=top_up.provider_token,
        top_up_id=top_up.id,
        amount=top_up.amount,
        currency=top_up.currency,
        delay_ms=settings.payments_sandbox_delay_ms,
        now=now,
    )
    if result.declined:
        _fail(session, top_up, result.failure_code or "card_declined", result.failure_message or "", now)
    else:
        _transition(top_up, "processing", now)


def confirm_top_up(
    session: Session, organization_id: uuid.UUID, top_up_id: uuid.UUID, *, settings: Settings, now: datetime
) -> TopUp:
    top_up = _locked(session, organization_id, top_up_id)
    _confirm(session, top_up, settings=settings, now=now)
    return top_up


def cancel_top_up(session: Session, organization_id: uuid.UUID, top_up_id: uuid.UUID, now: datetime) -> TopUp:
    top_up = _locked(session, organization_id, top_up_id)
    if top_up.status != "requires_confirmation":
        raise InvalidState(
            f"Only a top-up that requires confirmation can be canceled; this one is {top_up.status}"
            + (" (the card is being charged)." if top_up.status == "processing" else ".")
        )
    _transition(top_up, "canceled", now)
    _emit(
        session,
        "top_up.canceled",
        top_up.organization_id,
        {"top_up_id": str(top_up.id), "amount": top_up.amount, "currency": top_up.currency},
        now,
    )
    return top_up


def _fail(session: Session, top_up: TopUp, code: str, message: str, now: datetime) -> None:
    _transition(top_up, "failed", now)
    top_up.failure_code = code
    top_up.failure_message = message or None
    _emit(
        session,
        "top_up.failed",
        top_up.organization_id,
        {
            "top_up_id": str(top_up.id),
            "amount": top_up.amount,
            "currency": top_up.currency,
            "failure_code": code,
            "failure_message": message or code,
        },
        now,
    )


def _succeed(session: Session, top_up: TopUp, settings: Settings, now: datetime) -> None:
    _transition(top_up, "succeeded", now)
    wallet = ledger.wallet(
        session,
        top_up.organization_id,
        now=now,
        currency=top_up.currency,
        # Whoever creates the wallet first grants the signup credit (billing's setting).
        signup_credit=getattr(settings, "billing_signup_credit", 0),
    )
    clearing = ledger.platform_account(session, "psp_clearing", currency=top_up.currency, now=now)
    moved = ledger.transfer(
        session,
        id=top_up_transfer_id(top_up.id),
        debit=clearing,
        credit=wallet,
        amount=top_up.amount,
        code="top_up",
        reference=f"top_up:{top_up.id}",
        organization_id=top_up.organization_id,
        now=now,
    )
    top_up.transfer_id = moved.id
    top_up.balance_after = ledger.balance(session, wallet).posted
    _emit(
        session,
        "top_up.succeeded",
        top_up.organization_id,
        {
            "top_up_id": str(top_up.id),
            "amount": top_up.amount,
            "currency": top_up.currency,
            "balance_after": top_up.balance_after,
        },
        now,
    )


# --- webhook events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    event_id: str
    type: str
    top_up_id: uuid.UUID
    applied: bool
    status: str


def apply_event(session: Session, event: Any, *, provider: str, settings: Settings, now: datetime) -> Receipt:
    """Apply one verified provider event (a models.SandboxEvent) exactly once.

    - an event id already recorded: WebhookReplayed (409), nothing changes;
    - an unknown top-up, or an amount/currency other than the top-up's: WebhookRejected (422);
    - a top-up not processing yet: InvalidState (409), not recorded, so the provider retries;
    - a top-up that already ended: recorded, ignored (`applied` False) — a `failed` after a
      `succeeded` never takes the credit back;
    - otherwise the transition (and for `succeeded` the ledger credit), recorded with it."""
    top_up_id = uuid.UUID(str(event.data.top_up_id))
    kind = str(getattr(event.type, "value", event.type))
    _lock(session, top_up_id)
    if session.get(WebhookEvent, event.id) is not None:
        raise WebhookReplayed(f"Event {event.id} was already received; it changes nothing again.")
    top_up = session.scalar(select(TopUp).where(TopUp.id == top_up_id).execution_options(populate_existing=True))
    if top_up is None:
        raise WebhookRejected(f"Event {event.id} is about top-up {top_up_id}, which does not exist.")
    if event.data.amount != top_up.amount or event.data.currency != top_up.currency:
        raise WebhookRejected(
            f"Event {event.id} reports {ledger.format_money(event.data.amount, event.data.currency)}; "
            f"top-up {top_up_id} is {ledger.format_money(top_up.amount, top_up.currency)}."
        )
    if top_up.status == "requires_confirmation":
        raise InvalidState(f"Top-up {top_up_id} has not been confirmed; an outcome cannot precede it.")
    applied = top_up.status == "processing"
    if applied and kind == "top_up.succeeded":
        _succeed(session, top_up, settings, now)
    elif applied:
        _fail(
            session,
            top_up,
            event.data.failure_code or "processing_error",
            event.data.failure_message or "The payment failed.",
            now,
        )
    else:
        log.warning(
            "payments: event %s (%s) for top-up %s, already %s: ignored", event.id, kind, top_up_id, top_up.status
        )
    session.add(
        WebhookEvent(id=event.id, provider=provider, type=kind, top_up_id=top_up_id, applied=applied, received_at=now)
    )
    try:
        session.flush()
    except IntegrityError:  # the same id recorded concurrently (only without a row lock)
        raise WebhookReplayed(f"Event {event.id} was already received; it changes nothing again.") from None
    return Receipt(event.id, kind, top_up_id, applied, top_up.status)


# --- refunds ----------------------------------------------------------------------------------------


def create_refund(
    session: Session,
    organization_id: uuid.UUID,
    top_up_id: uuid.UUID,
    *,
    amount: int | None,
    reason: str | None,
    now: datetime,
) -> Refund:
    top_up = _locked(session, organization_id, top_up_id)
    if top_up.status != "succeeded":
        raise InvalidState(f"Only a succeeded top-up can be refunded; this one is {top_up.status}.")
    remaining = top_up.amount - top_up.amount_refunded
    wanted = remaining if amount is None else amount

    def money(minor: int) -> str:
        return ledger.format_money(minor, top_up.currency)

    if wanted <= 0 or wanted > remaining:
        raise Conflict(
            f"The top-up was {money(top_up.amount)} of which {money(top_up.amount_refunded)} is refunded "
            f"already: at most {money(remaining)} can be refunded.",
            slug="refund-exceeds-top-up",
        )
    wallet = ledger.account_id(ledger.wallet_code(organization_id), top_up.currency)
    clearing = ledger.platform_account(session, "psp_clearing", currency=top_up.currency, now=now)
    held = ledger.lock_accounts(session, [wallet, clearing])[wallet]
    # Credits already spent (or held for running work) cannot be refunded, and a refund never
    # draws on the operator's credit limit.
    spendable = held.credits_posted - held.debits_posted - held.debits_pending
    if wanted > spendable:
        raise Conflict(
            f"The wallet holds {money(max(spendable, 0))} that can be refunded; {money(wanted)} was asked.",
            slug="insufficient-funds",
        )
    refund_id = uuid.uuid4()
    try:
        moved = ledger.transfer(
            session,
            id=refund_id,
            debit=wallet,
            credit=clearing,
            amount=wanted,
            code="refund",
            reference=f"refund:{refund_id} top_up:{top_up.id}",
            organization_id=organization_id,
            now=now,
        )
    except ledger.InsufficientFunds as exc:
        raise Conflict(str(exc), slug="insufficient-funds") from None
    sandbox.refund(session, token=top_up.provider_token, amount=wanted, currency=top_up.currency)
    top_up.amount_refunded += wanted
    top_up.updated_at = now
    refund = Refund(
        id=refund_id,
        top_up_id=top_up.id,
        organization_id=organization_id,
        amount=wanted,
        currency=top_up.currency,
        status="succeeded",
        reason=reason,
        transfer_id=moved.id,
        balance_after=ledger.balance(session, wallet).posted,
        created_at=now,
    )
    session.add(refund)
    session.flush()
    _emit(
        session,
        "refund.succeeded",
        organization_id,
        {
            "refund_id": str(refund.id),
            "top_up_id": str(top_up.id),
            "amount": wanted,
            "currency": top_up.currency,
            "balance_after": refund.balance_after,
        },
        now,
    )
    return refund


def list_refunds(
    session: Session, organization_id: uuid.UUID, top_up_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[Refund]:
    get_top_up(session, organization_id, top_up_id)
    stmt = select(Refund).where(Refund.top_up_id == top_up_id, Refund.organization_id == organization_id)
    return paginate(session, stmt, (Refund.created_at, Refund.id), limit=limit, cursor=cursor, descending=True)
