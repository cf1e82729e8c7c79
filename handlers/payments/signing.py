"""Webhook signatures, Stripe's scheme: `Hangar-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, each
v1 = HMAC-SHA256(secret, f"{t}.{raw_body}").

Verification accepts the header when its timestamp is within the tolerance of now (either
way: a timestamp from the future is as suspect as a stale one) and any v1 matches any
configured secret, compared with hmac.compare_digest (constant time). Several secrets are
accepted so a secret can be rotated without losing events: configure the new one first (it
signs from then on), keep the old one until nothing signed with it can still arrive.

The secrets: settings.payments_webhook_secrets, else one random secret generated for the
database on first use (`payments_provider_secrets`), so `make run` works with nothing
configured and no secret is ever written in the source.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from handlers.payments.tables import ProviderSecret
from hangar.config import Settings
from hangar.problems import BadRequest

HEADER = "Hangar-Signature"
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_SIGNATURES = 8


class SignatureInvalid(BadRequest):
    slug = "webhook-signature-invalid"
    title = "Webhook Signature Invalid"


class TimestampOutOfTolerance(BadRequest):
    slug = "webhook-timestamp-out-of-tolerance"
    title = "Webhook Timestamp Out Of Tolerance"


def signature(secret: str, timestamp: int, raw_body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()


def sign(raw_body: bytes, secret: str, timestamp: int) -> str:
    """The header value for `raw_body` signed with `secret` at `timestamp`."""
    return f"t={timestamp},v1={signature(secret, timestamp, raw_body)}"


def parse(header: str | None) -> tuple[int, list[str]]:
    """(t, [v1 …]) of a header; SignatureInvalid when it is missing or malformed. Unknown
    schemes (v0=…) are ignored, as Stripe's libraries do."""
    if not header:
        raise SignatureInvalid(f"The {HEADER} header is missing: every sandbox webhook is signed.")
    timestamp: int | None = None
    found: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureInvalid(f"The {HEADER} header is malformed: expected t=<unix>,v1=<hex>.")
        if key == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                raise SignatureInvalid(f"The {HEADER} header's timestamp is malformed.")
            timestamp = int(value)
        elif key == "v1":
            if not _HEX64.fullmatch(value):
                raise SignatureInvalid(f"The {HEADER} header has a malformed v1 signature.")
            found.append(value)
    if timestamp is None or not found:
        raise SignatureInvalid(f"The {HEADER} header needs a timestamp t and at least one v1 signature.")
    if len(found) > MAX_SIGNATURES:
        raise SignatureInvalid(f"The {HEADER} header carries more than {MAX_SIGNATURES} signatures.")
    return timestamp, found


def verify(header: str | None, raw_body: bytes, secrets_: Sequence[str], *, now: datetime, tolerance: int) -> int:
    """Check a signed body; returns its timestamp. Raises SignatureInvalid or
    TimestampOutOfTolerance (400 problems that say nothing about the expected signature)."""
    timestamp, candidates = parse(header)
    if abs(now.timestamp() - timestamp) > tolerance:
        raise TimestampOutOfTolerance(
            f"The signature's timestamp is more than {tolerance} s away from now; a replay or a clock problem."
        )
    matched = False
    for secret in secrets_:
        expected = signature(secret, timestamp, raw_body)
        for candidate in candidates:
            # No early exit: every comparison runs, each in constant time.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureInvalid("No signature in the Hangar-Signature header matches the body.")
    return timestamp


def signing_secrets(session: Session, settings: Settings, *, now: datetime) -> list[str]:
    """The secrets that verify (the first one signs)."""
    if settings.payments_webhook_secrets:
        return list(settings.payments_webhook_secrets)
    row = session.get(ProviderSecret, 1)
    if row is None:  # background.prepare makes it at start-up; a script or test may come first
        try:
            with session.begin_nested():
                session.add(ProviderSecret(id=1, secret=_new_secret(), created_at=now))
        except IntegrityError:
            pass
        row = session.get(ProviderSecret, 1, populate_existing=True)
        assert row is not None
    return [row.secret]


def _new_secret() -> str:
    return "whsec_" + secrets.token_hex(32)


def ensure_database_secret(sessions: sessionmaker[Session], now: datetime) -> None:
    """Create the database's generated secret once (safe when several processes start)."""
    with sessions() as session:
        if session.get(ProviderSecret, 1) is not None:
            return
        session.add(ProviderSecret(id=1, secret=_new_secret(), created_at=now))
        try:
            session.commit()
        except IntegrityError:  # another process made it first
            session.rollback()
