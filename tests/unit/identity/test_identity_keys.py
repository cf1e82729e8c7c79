"""API key format: shape, checksum, tampering, hashing."""

from __future__ import annotations

import re
import zlib

import pytest

from handlers.identity import keys

SPEC_SECRET = re.compile(r"^hgr_[A-Za-z0-9]+_[A-Za-z0-9]+$")  # ApiKeySecret.pattern
SPEC_PREFIX = re.compile(r"^hgr_[A-Za-z0-9]+$")  # ApiKey.prefix.pattern


def test_generated_key_matches_the_contract_shapes() -> None:
    new = keys.generate()
    assert SPEC_SECRET.match(new.token)
    assert 40 <= len(new.token) <= 80
    assert SPEC_PREFIX.match(new.prefix) and len(new.prefix) <= 32
    assert new.token.startswith(new.prefix + "_")
    # Only the hash is stored, and it is SHA-256 hex of the full key.
    assert re.fullmatch(r"[0-9a-f]{64}", new.key_hash)
    assert new.key_hash == keys.hash_key(new.token)
    assert new.token not in new.key_hash


def test_keys_are_unique_and_high_entropy() -> None:
    made = [keys.generate() for _ in range(200)]
    assert len({k.token for k in made}) == 200
    assert len({k.prefix for k in made}) == 200
    secret = made[0].token[len(made[0].prefix) + 1 : -keys.CHECKSUM_LENGTH]
    assert len(secret) == keys.SECRET_LENGTH == 32


def test_checksum_is_crc32_of_the_body_in_base62() -> None:
    token = keys.generate().token
    body, check = token[: -keys.CHECKSUM_LENGTH], token[-keys.CHECKSUM_LENGTH :]
    value = 0
    for char in check:
        value = value * 62 + keys.ALPHABET.index(char)
    assert value == zlib.crc32(body.encode())


def test_a_valid_key_parses_to_its_prefix() -> None:
    new = keys.generate()
    assert keys.parse_prefix(new.token) == new.prefix
    assert keys.matches(new.token, new.key_hash)


@pytest.mark.parametrize("position", [5, 10, 20, 40, -1])
def test_tampering_with_any_character_is_detected(position: int) -> None:
    token = keys.generate().token
    original = token[position]
    replacement = "A" if original != "A" else "B"
    tampered = token[:position] + replacement + token[position + 1 :] if position != -1 else token[:-1] + replacement
    assert keys.parse_prefix(tampered) is None


@pytest.mark.parametrize(
    "garbage",
    ["", "hgr_", "Bearer hgr_x", "hgr_short_short", "ghp_" + "a" * 51, "hgr_" + "a" * 12 + "_" + "b" * 38 + "!"],
)
def test_malformed_tokens_do_not_parse(garbage: str) -> None:
    assert keys.parse_prefix(garbage) is None


def test_a_different_key_with_the_same_prefix_does_not_match_the_hash() -> None:
    real = keys.generate()
    body = f"{real.prefix}_{'x' * keys.SECRET_LENGTH}"
    forged = body + keys.checksum(body)
    assert keys.parse_prefix(forged) == real.prefix  # well-formed, so it reaches the lookup…
    assert not keys.matches(forged, real.key_hash)  # …where the hash rejects it
