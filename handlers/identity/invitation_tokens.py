"""Invitation token format, generation and hashing.

A token looks like ``hgi_<secret><checksum>``: ``hgi_`` tells people and secret scanners
what it is, ``<secret>`` is 32 base62 characters from ``secrets`` (~190 bits) and
``<checksum>`` is the CRC32 of everything before it (6 base62 characters), as in API keys
(see keys.py), so a malformed or mistyped token is rejected without a database round trip.

Only SHA-256 of the token is stored and looked up: like an API key secret, the token has far
too much entropy for a fast hash to be brute-forced, and it is single use.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import timedelta

from handlers.identity.keys import CHECKSUM_LENGTH, SECRET_LENGTH, checksum, hash_key, random_base62

TOKEN_PREFIX = "hgi"  # noqa: S105 - the public prefix, not a secret
# How long an invitation can be accepted; afterwards the owner removes and re-invites.
VALIDITY = timedelta(days=7)

_TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}_[0-9A-Za-z]{{{SECRET_LENGTH + CHECKSUM_LENGTH}}}$")


@dataclass(frozen=True)
class NewToken:
    """A freshly generated token: `token` is shown once, `token_hash` is stored."""

    token: str
    token_hash: str


def generate() -> NewToken:
    body = f"{TOKEN_PREFIX}_{random_base62(SECRET_LENGTH)}"
    token = body + checksum(body)
    return NewToken(token=token, token_hash=hash_token(token))


def hash_token(token: str) -> str:
    """SHA-256 hex digest of the token: what the database holds."""
    return hash_key(token)


def is_well_formed(token: str) -> bool:
    """The token has the `hgi_` shape and its checksum matches."""
    if _TOKEN_RE.match(token) is None:
        return False
    body = token[:-CHECKSUM_LENGTH]
    return hmac.compare_digest(checksum(body), token[-CHECKSUM_LENGTH:])
