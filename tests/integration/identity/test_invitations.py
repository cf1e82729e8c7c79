"""Invitations over HTTP: inviteMember hands out a one-time token, acceptInvitation turns it
into an active membership and a first API key holding exactly the role's scopes. Every way
an acceptance can fail is the same 404; outbox rows are checked against the AsyncAPI schemas."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from identity_support import Backdoor
from sqlalchemy import update

from handlers.identity import invitation_tokens, keys, policy
from handlers.identity.tables import Invitation

pytestmark = pytest.mark.postgres

ACCEPT = "/v1/invitations/accept"
PASSWORD = "correct-horse-battery-staple"  # the `signup` fixture's (tests/conftest.py)
NEW_PASSWORD = "a-brand-new-password"
# What one of these calls needs, by scope (a role lacking the scope gets a 403 from the runtime).
WRITES = {
    "organization:write": ("PATCH", "/v1/organizations/{org}", {"name": "Renamed"}),
    "members:write": ("POST", "/v1/organizations/{org}/members", {"email": "x@example.com", "role": "viewer"}),
}


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def invite(client: Any, owner: Any, role: str, email: str | None = None) -> dict[str, Any]:
    email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post(
        f"/v1/organizations/{owner.organization_id}/members", headers=owner.headers, json={"email": email, "role": role}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def accept(client: Any, token: str, password: str = NEW_PASSWORD, **extra: Any) -> Any:
    headers = extra.pop("headers", None)
    return client.post(ACCEPT, json={"token": token, "password": password, **extra}, headers=headers)


def not_found(response: Any) -> dict[str, Any]:
    """The one problem every failed acceptance gets; returned without its per-request fields."""
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == "https://docs.hangar.dev/problems/invitation-not-found"
    return {k: v for k, v in body.items() if k not in ("request_id", "instance")}


def members(client: Any, owner: Any) -> dict[str, dict[str, Any]]:
    listed = client.get(f"/v1/organizations/{owner.organization_id}/members", headers=owner.headers).json()
    return {m["email"]: m for m in listed["data"]}


# --- the happy path -----------------------------------------------------------------------


@pytest.mark.parametrize("role", ["owner", "admin", "member", "billing", "viewer"])
def test_an_accepted_invitation_gives_a_key_with_exactly_the_roles_scopes(
    client: Any, signup: Any, backdoor: Backdoor, role: str
) -> None:
    owner = signup()
    before = datetime.now(UTC)
    invitation = invite(client, owner, role, f"Grace-{role}@Example.com")
    member, token = invitation["member"], invitation["invitation_token"]
    assert member["status"] == "invited" and member["role"] == role
    assert invitation_tokens.is_well_formed(token)
    expires = datetime.fromisoformat(invitation["invitation_expires_at"])
    assert before + timedelta(days=7) - timedelta(minutes=1) <= expires <= datetime.now(UTC) + timedelta(days=7)

    response = accept(client, token, name="Grace Hopper")
    assert response.status_code == 201, response.text
    assert "ratelimit-limit" in response.headers  # public: limited per client address
    body = response.json()
    assert body["organization"]["id"] == owner.organization_id
    assert body["user"]["id"] == member["user_id"]
    assert body["user"]["email"] == f"Grace-{role}@Example.com" and body["user"]["name"] == "Grace Hopper"
    assert body["api_key"]["user_id"] == member["user_id"]
    assert body["api_key"]["organization_id"] == owner.organization_id
    assert set(body["api_key"]["scopes"]) == policy.caps(role)
    assert keys.parse_prefix(body["secret"]) == body["api_key"]["prefix"]
    assert "password" not in response.text and token not in response.text

    key = auth(body["secret"])
    me = client.get("/v1/me", headers=key).json()
    assert me["role"] == role and me["organization"]["id"] == owner.organization_id
    assert members(client, owner)[f"Grace-{role}@Example.com"]["status"] == "active"
    for scope, (method, path, payload) in WRITES.items():
        response = client.request(method, path.format(org=owner.organization_id), headers=key, json=payload)
        if scope in policy.caps(role):
            assert response.status_code in (200, 201), response.text
        else:
            assert response.status_code == 403, response.text
            assert scope in response.json()["detail"]

    events = backdoor.events()  # every one validated against generated/asyncapi.json
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["organization.created", "api_key.created", "member.invited", "member.joined"]
    joined = next(e for e in events if e["type"] == "member.joined")
    assert joined["organization_id"] == owner.organization_id
    assert joined["data"] == {"member_id": member["id"], "user_id": member["user_id"], "role": role}
    created = next(
        e for e in events if e["type"] == "api_key.created" and e["data"]["api_key_id"] == body["api_key"]["id"]
    )
    assert set(created["data"]["scopes"]) == policy.caps(role)
    assert token not in str(events) and body["secret"] not in str(events)


def test_a_viewer_cannot_write(client: Any, signup: Any) -> None:
    owner = signup()
    body = accept(client, invite(client, owner, "viewer")["invitation_token"]).json()
    key = auth(body["secret"])
    assert client.get(f"/v1/organizations/{owner.organization_id}", headers=key).status_code == 200
    response = client.patch(f"/v1/organizations/{owner.organization_id}", headers=key, json={"name": "Mine"})
    assert response.status_code == 403, response.text
    response = client.post("/v1/api-keys", headers=key, json={"name": "w", "scopes": ["instances:write"]})
    assert response.status_code == 403 and "instances:write" in response.json()["detail"]


# --- one indistinguishable 404 -------------------------------------------------------------


def test_a_token_is_single_use(client: Any, signup: Any, backdoor: Backdoor) -> None:
    owner = signup()
    token = invite(client, owner, "member")["invitation_token"]
    assert accept(client, token).status_code == 201
    unknown = not_found(accept(client, invitation_tokens.generate().token))
    assert not_found(accept(client, token)) == unknown
    assert not_found(accept(client, token, password="another-password-1")) == unknown
    assert len(backdoor.events("member.joined")) == 1
    assert len(backdoor.events("api_key.created")) == 2  # the owner's and the member's


def test_an_expired_token_is_the_same_404(client: Any, signup: Any, backdoor: Backdoor) -> None:
    owner = signup()
    invitation = invite(client, owner, "member")
    backdoor.execute(
        update(Invitation)
        .where(Invitation.membership_id == uuid.UUID(invitation["member"]["id"]))
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    unknown = not_found(accept(client, invitation_tokens.generate().token))
    assert not_found(accept(client, invitation["invitation_token"])) == unknown
    assert members(client, owner)[invitation["member"]["email"]]["status"] == "invited"
    assert backdoor.events("member.joined") == []


def test_a_malformed_token_is_a_400_and_a_short_password_too(client: Any, signup: Any) -> None:
    owner = signup()
    token = invite(client, owner, "member")["invitation_token"]
    assert accept(client, "not-a-token-at-all-not-a-token-at-all-xx").status_code == 400
    assert accept(client, token, password="short").status_code == 400
    # A tampered token fails its checksum offline: the same 404, no database lookup.
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert not_found(accept(client, tampered)) == not_found(accept(client, invitation_tokens.generate().token))
    assert accept(client, token).status_code == 201  # nothing above used the invitation up


def test_an_existing_user_must_give_their_password(client: Any, signup: Any, backdoor: Backdoor) -> None:
    elsewhere = signup(organization="Elsewhere")  # already has a password: PASSWORD
    owner = signup()
    invitation = invite(client, owner, "member", elsewhere.email.upper())
    assert invitation["member"]["user_id"] == elsewhere.user_id
    assert invitation["member"]["status"] == "invited"
    unknown = not_found(accept(client, invitation_tokens.generate().token))
    assert not_found(accept(client, invitation["invitation_token"], password="not-their-password")) == unknown
    assert members(client, owner)[elsewhere.email]["status"] == "invited"

    response = accept(client, invitation["invitation_token"], password=PASSWORD, name="Ignored")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user"]["id"] == elsewhere.user_id and "name" not in body["user"]  # an existing user keeps theirs
    assert body["organization"]["id"] == owner.organization_id
    # Both keys work, each in its own organization.
    assert client.get("/v1/me", headers=auth(body["secret"])).json()["organization"]["id"] == owner.organization_id
    assert client.get("/v1/me", headers=elsewhere.headers).json()["organization"]["id"] == elsewhere.organization_id
    assert len(backdoor.events("member.joined")) == 1


def test_an_invited_person_who_signed_up_meanwhile_uses_that_password(client: Any, signup: Any) -> None:
    owner = signup()
    invitation = invite(client, owner, "viewer")
    email = invitation["member"]["email"]
    theirs = signup(email=email, organization="Their own")  # claims the invited user, with PASSWORD
    assert theirs.user_id == invitation["member"]["user_id"]
    assert members(client, owner)[email]["status"] == "invited"  # Acme still waits for them
    not_found(accept(client, invitation["invitation_token"], password=NEW_PASSWORD))
    assert accept(client, invitation["invitation_token"], password=PASSWORD).status_code == 201


def test_a_token_joins_only_its_own_organization(client: Any, signup: Any) -> None:
    a = signup(organization="Alpha")
    b = signup(organization="Bravo")
    email = f"both-{uuid.uuid4().hex[:8]}@example.com"
    from_a = invite(client, a, "admin", email)
    from_b = invite(client, b, "viewer", email)

    joined = accept(client, from_a["invitation_token"]).json()
    assert joined["organization"]["id"] == a.organization_id
    assert set(joined["api_key"]["scopes"]) == policy.caps("admin")
    assert members(client, a)[email]["status"] == "active"
    assert members(client, b)[email]["status"] == "invited"  # A's token did nothing in B
    a_key = auth(joined["secret"])
    assert client.get(f"/v1/organizations/{b.organization_id}", headers=a_key).status_code == 404
    assert client.get(f"/v1/organizations/{b.organization_id}/members", headers=a_key).status_code == 404

    # B's token joins B, with B's role, and only with the password chosen when joining A.
    not_found(accept(client, from_b["invitation_token"], password="yet-another-password"))
    joined_b = accept(client, from_b["invitation_token"]).json()
    assert joined_b["organization"]["id"] == b.organization_id
    assert set(joined_b["api_key"]["scopes"]) == policy.caps("viewer")


def test_removing_the_membership_voids_the_token_and_reinviting_is_409(client: Any, signup: Any) -> None:
    owner = signup()
    base = f"/v1/organizations/{owner.organization_id}/members"
    invitation = invite(client, owner, "member")
    email = invitation["member"]["email"]
    again = client.post(base, headers=owner.headers, json={"email": email, "role": "viewer"})
    assert again.status_code == 409 and again.json()["type"].endswith("/already-member")
    assert client.delete(f"{base}/{invitation['member']['id']}", headers=owner.headers).status_code == 204
    not_found(accept(client, invitation["invitation_token"]))

    fresh = invite(client, owner, "viewer", email)
    assert fresh["invitation_token"] != invitation["invitation_token"]
    assert accept(client, fresh["invitation_token"]).status_code == 201
    again = client.post(base, headers=owner.headers, json={"email": email, "role": "viewer"})
    assert again.status_code == 409  # an active member, too


def test_an_invited_membership_grants_nothing_until_accepted(client: Any, signup: Any) -> None:
    owner = signup()
    invitation = invite(client, owner, "admin")
    # The only key that could act as them in this organization is the one acceptance creates.
    listed = client.get("/v1/api-keys", headers=owner.headers).json()["data"]
    assert {k["user_id"] for k in listed} == {owner.user_id}
    body = accept(client, invitation["invitation_token"]).json()
    listed = client.get("/v1/api-keys", headers=owner.headers).json()["data"]
    assert {k["id"] for k in listed if k["user_id"] == invitation["member"]["user_id"]} == {body["api_key"]["id"]}


# --- idempotency ----------------------------------------------------------------------------


def test_accept_replays_with_the_same_idempotency_key(client: Any, signup: Any, backdoor: Backdoor) -> None:
    owner = signup()
    token = invite(client, owner, "member")["invitation_token"]
    headers = {"Idempotency-Key": f"accept-{uuid.uuid4().hex}"}
    first = accept(client, token, headers=headers)
    second = accept(client, token, headers=headers)
    assert first.status_code == second.status_code == 201, second.text
    assert first.json() == second.json()  # the same key and secret, created once
    assert len(backdoor.events("member.joined")) == 1
    assert len(backdoor.events("api_key.created")) == 2
    reused = accept(client, token, password="a-different-password", headers=headers)
    assert reused.status_code == 422 and reused.json()["type"].endswith("/idempotency-key-reused")
    not_found(accept(client, token))  # without the key it is a new request: the token is used


def test_invite_replays_the_same_token(client: Any, signup: Any, backdoor: Backdoor) -> None:
    owner = signup()
    path = f"/v1/organizations/{owner.organization_id}/members"
    headers = {**owner.headers, "Idempotency-Key": f"invite-{uuid.uuid4().hex}"}
    payload = {"email": "once@example.com", "role": "viewer"}
    first = client.post(path, headers=headers, json=payload)
    second = client.post(path, headers=headers, json=payload)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert len(backdoor.events("member.invited")) == 1
    assert accept(client, first.json()["invitation_token"]).status_code == 201
