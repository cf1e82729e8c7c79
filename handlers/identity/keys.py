"""API key format, generation and hashing.

A key looks like ``hgr_<public id>_<secret><checksum>``:

* ``hgr_<public id>`` is the *prefix*: stored in clear, unique, used to look the key up and
  safe to show in listings and logs.
* ``<secret>`` is 32 base62 characters from ``secrets`` (~190 bits), never stored.
* ``<checksum>`` is the CRC32 of everything before it, in 6 base62 characters, so a secret
  scanner (or our own parser) can tell a real key from a random string offline, without a
  database round trip. It is an integrity check, not a security control.

Only SHA-256 of the full key is stored. A fast hash is right here (unlike passwords): the
secret has enough entropy that brute force is hopeless, and every authenticated request pays
the hashing cost.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import zlib
from dataclasses import dataclass

KEY_PREFIX = "hgr"
PUBLIC_ID_LENGTH = 12  # ~71 bits: collisions are negligible, and prefix is unique in the DB anyway
SECRET_LENGTH = 32
CHECKSUM_LENGTH = 6  # 62**6 > 2**32, so every CRC32 fits

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase

_KEY_RE = re.compile(
    rf"^(?P<prefix>{KEY_PREFIX}_[0-9A-Za-z]{{{PUBLIC_ID_LENGTH}}})"
    rf"_(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})"
    rf"(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: `token` is shown to the caller once, the rest is stored."""

    token: str
    prefix: str
    key_hash: str


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, ALPHABET[0])


def random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def checksum(body: str) -> str:
    """CRC32 of the key body (`hgr_<public id>_<secret>`), as fixed-width base62."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def hash_key(token: str) -> str:
    """SHA-256 hex digest of the full key: what the database holds."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate() -> NewKey:
    prefix = f"{KEY_PREFIX}_{random_base62(PUBLIC_ID_LENGTH)}"
    body = f"{prefix}_{random_base62(SECRET_LENGTH)}"
    token = body + checksum(body)
    return NewKey(token=token, prefix=prefix, key_hash=hash_key(token))


def parse_prefix(token: str) -> str | None:
    """The key's prefix if `token` is well-formed and its checksum matches, else None.

    Rejecting malformed or tampered tokens here keeps garbage off the database.
    """
    match = _KEY_RE.match(token)
    if match is None:
        return None
    body = token[:-CHECKSUM_LENGTH]
    if not hmac.compare_digest(checksum(body), match["checksum"]):
        return None
    return match["prefix"]


def matches(token: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented key with the stored hash."""
    return hmac.compare_digest(hash_key(token), stored_hash)
