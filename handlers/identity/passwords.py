"""Password hashing with argon2id (argon2-cffi's RFC 9106 low-memory defaults).

Passwords are low-entropy, so unlike API keys they get a deliberately slow, memory-hard hash.
Tests swap in a cheap hasher with `use_hasher` (each default hash costs ~0.1 s).
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def use_hasher(hasher: PasswordHasher) -> PasswordHasher:
    """Replace the hasher (tests use argon2.profiles.CHEAPEST); returns the previous one."""
    global _hasher
    previous, _hasher = _hasher, hasher
    return previous


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def burn(password: str) -> None:
    """Spend what checking a password costs, and nothing else: a request that fails before it
    has a password to check (an unknown token) takes as long as one that checks it, so the
    response time does not tell the two apart."""
    _hasher.hash(password)
