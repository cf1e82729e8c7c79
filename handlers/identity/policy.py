"""Roles and the scopes they allow: the authorization policy, as data.

A member's role caps the scopes any of their API keys can exercise. A key's effective scopes
are ``key.scopes ∩ ROLE_CAPS[current role]``, computed on every request, so demoting a member
takes power away from their existing keys at once (nothing to rewrite).

| role    | may hold                                                                   |
|---------|----------------------------------------------------------------------------|
| owner   | every tenant scope (+ `admin:*` in an operator organization)               |
| admin   | every tenant scope (but cannot grant, change or remove `owner`) (+ `admin:*` likewise) |
| member  | everything except organization:write, members:write, billing:write          |
| billing | billing:read/write, organization:read, members:read, api-keys:read/write    |
| viewer  | every `:read` scope, plus api-keys:read/write                               |

`api-keys:*` for billing, member and viewer means *their own* keys: only owners and admins see
and revoke other people's keys (`SEES_ALL_KEYS`). The list of scopes mirrors the `Scope` enum
in specs/openapi/identity.yaml; a unit test keeps the two equal.
"""

from __future__ import annotations

from typing import Final

ROLES: Final = ("owner", "admin", "member", "billing", "viewer")

SCOPES: Final = frozenset(
    {
        "organization:read",
        "organization:write",
        "members:read",
        "members:write",
        "api-keys:read",
        "api-keys:write",
        "instances:read",
        "instances:write",
        "instances:console",
        "volumes:read",
        "volumes:write",
        "billing:read",
        "billing:write",
        "admin:read",
        "admin:write",
    }
)

# The platform operator's scopes. No tenant role allows them: only members of an operator
# organization (Organization.is_operator, created by `hangar-admin create-operator`) hold them,
# on top of what their role allows.
OPERATOR_SCOPES: Final = frozenset({"admin:read", "admin:write"})
TENANT_SCOPES: Final = SCOPES - OPERATOR_SCOPES

_READS: Final = frozenset(s for s in TENANT_SCOPES if s.endswith(":read"))
_OWN_KEYS: Final = frozenset({"api-keys:read", "api-keys:write"})

ROLE_CAPS: Final[dict[str, frozenset[str]]] = {
    "owner": TENANT_SCOPES,
    "admin": TENANT_SCOPES,
    "member": TENANT_SCOPES - {"organization:write", "members:write", "billing:write"},
    "billing": frozenset({"billing:read", "billing:write", "organization:read", "members:read"}) | _OWN_KEYS,
    "viewer": _READS | _OWN_KEYS,
}

# Roles that see, read and revoke every key in the organization, not only their own.
SEES_ALL_KEYS: Final = frozenset({"owner", "admin"})


def caps(role: str, *, operator: bool = False) -> frozenset[str]:
    """Scopes the role allows; an unknown role allows nothing (fail closed). Owners and admins
    of an operator organization also hold the operator scopes."""
    allowed = ROLE_CAPS.get(role, frozenset())
    if operator and role in ("owner", "admin"):
        allowed = allowed | OPERATOR_SCOPES
    return allowed


def effective_scopes(
    key_scopes: frozenset[str] | set[str] | list[str], role: str, *, operator: bool = False
) -> frozenset[str]:
    return frozenset(key_scopes) & caps(role, operator=operator)


def sees_all_keys(role: str) -> bool:
    return role in SEES_ALL_KEYS


def may_grant(actor_role: str, role: str) -> bool:
    """Whether someone with `actor_role` may give `role` to a member (invite or promote)."""
    return role != "owner" or actor_role == "owner"


def may_manage(actor_role: str, target_role: str) -> bool:
    """Whether `actor_role` may change or remove a member who currently has `target_role`:
    only owners touch owners."""
    return target_role != "owner" or actor_role == "owner"
