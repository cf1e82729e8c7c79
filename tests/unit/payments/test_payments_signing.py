"""The signature scheme, the test cards, and the runtime's treatment of `x-sensitive` fields."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from handlers.payments import sandbox, signing
from hangar.validators import CompiledSchema, mask

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
T = int(NOW.timestamp())
BODY = b'{"id":"evt_1","type":"top_up.succeeded"}'
A, B = "whsec_aaaaaaaaaaaaaaaa", "whsec_bbbbbbbbbbbbbbbb"


def test_the_signature_is_hmac_sha256_over_t_dot_body() -> None:
    expected = hmac.new(A.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signing.sign(BODY, A, T) == f"t={T},v1={expected}"
    assert signing.verify(signing.sign(BODY, A, T), BODY, [A], now=NOW, tolerance=300) == T


def test_any_secret_and_any_v1_verify_during_a_rotation() -> None:
    header = f"t={T},v1={signing.signature(B, T, BODY)},v1={signing.signature(A, T, BODY)}"
    assert signing.verify(header, BODY, [A], now=NOW, tolerance=300) == T
    assert signing.verify(signing.sign(BODY, B, T), BODY, [A, B], now=NOW, tolerance=300) == T
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(signing.sign(BODY, B, T), BODY, [A], now=NOW, tolerance=300)


@pytest.mark.parametrize("offset", [-301, 301])
def test_the_tolerance_applies_both_ways(offset: int) -> None:
    header = signing.sign(BODY, A, T + offset)
    with pytest.raises(signing.TimestampOutOfTolerance):
        signing.verify(header, BODY, [A], now=NOW, tolerance=300)
    assert signing.verify(signing.sign(BODY, A, T + offset), BODY, [A], now=NOW, tolerance=301)


@pytest.mark.parametrize(
    "header", [None, "", "t=1", "v1=" + "a" * 64, "t=x,v1=" + "a" * 64, "t=1,v1=ab", f"t={T},v0={'a' * 64}", "nonsense"]
)
def test_malformed_headers(header: str | None) -> None:
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(header, BODY, [A], now=NOW, tolerance=300)


def test_an_unknown_scheme_is_ignored_beside_v1() -> None:
    header = f"t={T},v0=whatever,v1={signing.signature(A, T, BODY)}"
    assert signing.verify(header, BODY, [A], now=NOW, tolerance=300) == T


def test_luhn_and_brands() -> None:
    assert all(sandbox.luhn_valid(n) for n in sandbox.TEST_CARDS)
    assert sandbox.luhn_valid("4111111111111111") and not sandbox.luhn_valid("4242424242424241")
    assert not sandbox.luhn_valid("42424242x2424242") and not sandbox.luhn_valid("0")
    assert [sandbox.brand_of(n) for n in ("4242", "5555555555554444", "378282246310005", "6011111111111117", "9")] == [
        "visa",
        "mastercard",
        "amex",
        "discover",
        "unknown",
    ]


SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "amount": {"type": "integer"},
        "card": {"type": "string", "writeOnly": True, "x-sensitive": True, "pattern": "^[0-9]+$", "maxLength": 19},
        "password": {"type": "string", "format": "password", "minLength": 8},
    },
}


def test_sensitive_values_never_appear_in_field_errors() -> None:
    compiled = CompiledSchema(SCHEMA)
    for body in ({"card": "4242x42424242424"}, {"card": "42424242424242424242424"}):
        errors = compiled.errors(body, "body")
        assert errors and all(body["card"] not in e["message"] for e in errors), errors
    # A message about the enclosing object that would quote the value is redacted too.
    root = CompiledSchema({**SCHEMA, "not": {"required": ["card"]}})
    errors = root.errors({"card": "4242424242424242"}, "body")
    assert errors and all("4242424242424242" not in e["message"] for e in errors), errors
    # Plain fields keep their messages.
    assert (
        "'x'" in compiled.errors({"amount": "x"}, "body")[0]["message"]
        or '"x"' in compiled.errors({"amount": "x"}, "body")[0]["message"]
    )


def test_fingerprints_see_sensitive_values_masked() -> None:
    compiled = CompiledSchema(SCHEMA)
    assert compiled.has_masked
    body = {"amount": 5000, "card": "4242424242424242", "password": "correct-horse"}
    assert compiled.masked(body) == {"amount": 5000, "card": "************4242", "password": "correct-horse"}
    assert body["card"] == "4242424242424242", "the body itself is untouched"
    assert mask("123") == "***" and mask("4000000000000002") == "************0002"
    assert not CompiledSchema({"type": "object", "properties": {"a": {"type": "string"}}}).has_masked
