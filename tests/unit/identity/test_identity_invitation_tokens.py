"""Invitation token format: the contract's shape, checksum, tampering, hashing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from handlers.identity import invitation_tokens, keys

ROOT = Path(__file__).resolve().parents[3]
CONTRACT = json.loads((ROOT / "generated" / "openapi.json").read_text())["components"]["schemas"]["InvitationToken"]


def test_generated_tokens_match_the_contract() -> None:
    new = invitation_tokens.generate()
    assert re.fullmatch(CONTRACT["pattern"], new.token)
    assert CONTRACT["minLength"] <= len(new.token) <= CONTRACT["maxLength"]
    assert new.token.startswith("hgi_") and not new.token.startswith(keys.KEY_PREFIX)
    assert re.fullmatch(CONTRACT["pattern"], CONTRACT["example"])
    # Only SHA-256 of the whole token is stored.
    assert new.token_hash == hashlib.sha256(new.token.encode()).hexdigest()
    assert invitation_tokens.hash_token(new.token) == new.token_hash


def test_tokens_are_unique_and_well_formed() -> None:
    made = [invitation_tokens.generate() for _ in range(200)]
    assert len({t.token for t in made}) == 200
    assert all(invitation_tokens.is_well_formed(t.token) for t in made)


def test_seven_days_to_accept() -> None:
    assert invitation_tokens.VALIDITY.total_seconds() == 7 * 24 * 3600


@pytest.mark.parametrize("position", [4, 20, -1])
def test_tampering_is_detected_offline(position: int) -> None:
    token = invitation_tokens.generate().token
    swapped = "A" if token[position] != "A" else "B"
    tampered = token[:position] + swapped + (token[position + 1 :] if position != -1 else "")
    assert not invitation_tokens.is_well_formed(tampered)


@pytest.mark.parametrize(
    "garbage",
    ["", "hgi_", "hgi_short", "hgr_" + "A" * 38, "hgi_" + "A" * 39, "hgi_" + "!" * 38, keys.generate().token],
)
def test_malformed_tokens_are_rejected(garbage: str) -> None:
    assert not invitation_tokens.is_well_formed(garbage)
