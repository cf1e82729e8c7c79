"""Identity & Access over HTTP: every rule, through the real app (generated routing, runtime,
handlers) on a migrated database; outbox rows are checked against the AsyncAPI schemas."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from identity_support import Backdoor
from sqlalchemy import update

from handlers.identity import keys, policy
from handlers.identity.tables import ApiKey

pytestmark = pytest.mark.postgres

PROBLEM = "application/problem+json"
FUTURE = (datetime.now(UTC) + timedelta(days=30)).isoformat().replace("+00:00", "Z")


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def assert_problem(response: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["request_id"] == response.headers["x-request-id"]
    if slug:
        assert body["type"] == f"https://docs.hangar.dev/problems/{slug}"
    return body


def invitation(client: Any, owner: Any, email: str, role: str) -> dict[str, Any]:
    """inviteMember's whole response: the membership and its one-time invitation token."""
    response = client.post(
        f"/v1/organizations/{owner.organization_id}/members", headers=owner.headers, json={"email": email, "role": role}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["invitation_token"].startswith("hgi_")
    return body


def invite(client: Any, owner: Any, email: str, role: str) -> dict[str, Any]:
    """The new membership."""
    member: dict[str, Any] = invitation(client, owner, email, role)["member"]
    return member


def member_with_key(client: Any, owner: Any, role: str) -> tuple[dict[str, Any], str]:
    """Invite someone with `role`; they accept, and get their first key (every scope of the role)."""
    invited = invitation(client, owner, f"{role}-{uuid.uuid4().hex[:8]}@example.com", role)
    accepted = client.post(
        "/v1/invitations/accept", json={"token": invited["invitation_token"], "password": "correct-horse-battery"}
    )
    assert accepted.status_code == 201, accepted.text
    member = {**invited["member"], "status": "active"}
    return member, accepted.json()["secret"]


# --- signup and me ----------------------------------------------------------------------


def test_signup_returns_the_secret_once_and_emits(client: Any, backdoor: Backdoor) -> None:
    response = client.post(
        "/v1/signup",
        json={"email": "Ada@Example.com", "password": "correct-horse-battery", "organization": "Acme", "name": "Ada"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    secret = body["secret"]
    assert keys.parse_prefix(secret) == body["api_key"]["prefix"]
    assert set(body["api_key"]["scopes"]) == policy.caps("owner")
    assert body["user"] == {
        "id": body["user"]["id"],
        "email": "Ada@Example.com",
        "name": "Ada",
        "created_at": body["user"]["created_at"],
    }
    assert body["organization"]["billing_email"] == "Ada@Example.com"
    assert "password" not in response.text and "key_hash" not in response.text

    events = backdoor.events()
    assert [e["type"] for e in events] == ["organization.created", "api_key.created"]
    assert events[0]["data"]["owner_user_id"] == body["user"]["id"]
    assert events[1]["data"]["api_key_id"] == body["api_key"]["id"]
    assert all(e["organization_id"] == body["organization"]["id"] for e in events)
    assert secret not in str(events)

    # The secret is never shown again.
    key = client.get(f"/v1/api-keys/{body['api_key']['id']}", headers=auth(secret))
    assert key.status_code == 200 and secret not in key.text and "secret" not in key.json()


def test_signup_with_a_taken_email_is_409_whatever_its_case(client: Any, signup: Any) -> None:
    signup("grace@example.com")
    response = client.post(
        "/v1/signup", json={"email": "GRACE@Example.com", "password": "correct-horse-battery", "organization": "X"}
    )
    assert_problem(response, 409, "email-taken")


def test_me(client: Any, signup: Any) -> None:
    tenant = signup()
    body = client.get("/v1/me", headers=tenant.headers).json()
    assert body["user"]["id"] == tenant.user_id and body["user"]["email"] == tenant.email
    assert body["organization"]["id"] == tenant.organization_id
    assert body["role"] == "owner"
    assert body["api_key"]["id"] == tenant.api_key_id and body["api_key"]["status"] == "active"
    assert body["api_key"]["last_used_at"]  # this request used it


def test_bad_keys_are_401(client: Any, signup: Any, backdoor: Backdoor) -> None:
    tenant = signup()
    forged = keys.generate().token  # well-formed, valid checksum, unknown
    for token in ("nonsense", tenant.secret[:-1] + ("A" if tenant.secret[-1] != "A" else "B"), forged):
        assert_problem(client.get("/v1/me", headers=auth(token)), 401)
    # Expired: move the expiry into the past behind the app's back.
    created = client.post(
        "/v1/api-keys", headers=tenant.headers, json={"name": "soon", "scopes": ["api-keys:read"], "expires_at": FUTURE}
    ).json()
    assert client.get("/v1/me", headers=auth(created["secret"])).status_code == 200
    backdoor.execute(
        update(ApiKey)
        .where(ApiKey.id == uuid.UUID(created["api_key"]["id"]))
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    assert_problem(client.get("/v1/me", headers=auth(created["secret"])), 401)
    listed = client.get(f"/v1/api-keys/{created['api_key']['id']}", headers=tenant.headers).json()
    assert listed["status"] == "expired"


# --- organizations ----------------------------------------------------------------------


def test_organization_get_and_update(client: Any, signup: Any, backdoor: Backdoor) -> None:
    tenant = signup()
    path = f"/v1/organizations/{tenant.organization_id}"
    assert client.get(path, headers=tenant.headers).json()["name"] == "Acme"
    response = client.patch(
        path, headers=tenant.headers, json={"name": "Acme Robotics", "billing_email": "b@example.com"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Acme Robotics" and response.json()["billing_email"] == "b@example.com"
    assert [e["data"] for e in backdoor.events("organization.updated")] == [{"changed": ["name", "billing_email"]}]


def test_another_organization_is_404_with_no_data(client: Any, signup: Any) -> None:
    a = signup(organization="Alpha")
    b = signup(organization="Bravo Secret Name")
    for org_id in (b.organization_id, str(uuid.uuid4())):
        for response in (
            client.get(f"/v1/organizations/{org_id}", headers=a.headers),
            client.patch(f"/v1/organizations/{org_id}", headers=a.headers, json={"name": "pwned"}),
            client.get(f"/v1/organizations/{org_id}/members", headers=a.headers),
            client.post(
                f"/v1/organizations/{org_id}/members",
                headers=a.headers,
                json={"email": "x@example.com", "role": "owner"},
            ),
        ):
            body = assert_problem(response, 404, "not-found")
            assert "Bravo" not in response.text and b.email not in response.text, body
    assert client.get(f"/v1/organizations/{b.organization_id}", headers=b.headers).json()["name"] == "Bravo Secret Name"


# --- scopes and roles -------------------------------------------------------------------


def test_scopes_are_enforced(client: Any, signup: Any) -> None:
    tenant = signup()
    read_only = client.post(
        "/v1/api-keys", headers=tenant.headers, json={"name": "ro", "scopes": ["api-keys:read"]}
    ).json()["secret"]
    assert client.get("/v1/api-keys", headers=auth(read_only)).status_code == 200
    body = assert_problem(
        client.post("/v1/api-keys", headers=auth(read_only), json={"name": "x", "scopes": ["api-keys:read"]}), 403
    )
    assert "api-keys:write" in body["detail"]
    assert_problem(client.get(f"/v1/organizations/{tenant.organization_id}", headers=auth(read_only)), 403)


def test_a_key_cannot_mint_a_stronger_key(client: Any, signup: Any) -> None:
    tenant = signup()
    weak = client.post(
        "/v1/api-keys", headers=tenant.headers, json={"name": "weak", "scopes": ["api-keys:write", "instances:read"]}
    ).json()["secret"]
    body = assert_problem(
        client.post(
            "/v1/api-keys", headers=auth(weak), json={"name": "x", "scopes": ["instances:read", "instances:write"]}
        ),
        403,
        "scope-escalation",
    )
    assert "instances:write" in body["detail"] and "instances:read" not in body["detail"]
    ok = client.post("/v1/api-keys", headers=auth(weak), json={"name": "x", "scopes": ["instances:read"]})
    assert ok.status_code == 201, ok.text


def test_a_role_caps_the_scopes_of_new_keys(client: Any, signup: Any) -> None:
    owner = signup()
    _member, secret = member_with_key(client, owner, "viewer")
    body = assert_problem(
        client.post(
            "/v1/api-keys", headers=auth(secret), json={"name": "x", "scopes": ["volumes:read", "volumes:write"]}
        ),
        403,
        "scope-escalation",
    )
    assert "volumes:write" in body["detail"] and "volumes:read" not in body["detail"]
    assert (
        client.post("/v1/api-keys", headers=auth(secret), json={"name": "x", "scopes": ["volumes:read"]}).status_code
        == 201
    )


def test_demotion_weakens_existing_keys_at_once(client: Any, signup: Any, backdoor: Backdoor) -> None:
    owner = signup()
    member, secret = member_with_key(client, owner, "admin")
    invite_path = f"/v1/organizations/{owner.organization_id}/members"
    assert client.get(invite_path, headers=auth(secret)).status_code == 200
    response = client.patch(f"{invite_path}/{member['id']}", headers=owner.headers, json={"role": "billing"})
    assert response.status_code == 200 and response.json()["role"] == "billing"
    assert client.get("/v1/me", headers=auth(secret)).json()["role"] == "billing"
    assert_problem(
        client.post(invite_path, headers=auth(secret), json={"email": "z@example.com", "role": "viewer"}), 403
    )
    assert_problem(client.get("/v1/organizations/" + owner.organization_id + "/members", headers=auth("x")), 401)
    [event] = backdoor.events("member.role_changed")
    assert event["data"] == {
        "member_id": member["id"],
        "user_id": member["user_id"],
        "old_role": "admin",
        "new_role": "billing",
    }


# --- API keys ---------------------------------------------------------------------------


def test_create_key_with_expiry_and_use_it(client: Any, signup: Any, backdoor: Backdoor) -> None:
    tenant = signup()
    response = client.post(
        "/v1/api-keys",
        headers=tenant.headers,
        json={"name": "ci", "scopes": ["api-keys:read", "instances:read"], "expires_at": FUTURE},
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["api_key"]["expires_at"] and created["api_key"]["status"] == "active"
    assert created["secret"].startswith(created["api_key"]["prefix"] + "_")
    me = client.get("/v1/me", headers=auth(created["secret"])).json()
    assert me["api_key"]["id"] == created["api_key"]["id"]
    assert me["api_key"]["scopes"] == ["api-keys:read", "instances:read"]
    event = backdoor.events("api_key.created")[-1]
    assert event["data"]["api_key_id"] == created["api_key"]["id"] and "expires_at" in event["data"]


@pytest.mark.parametrize("when", ["2000-01-01T00:00:00Z", "now"])
def test_expiry_must_be_in_the_future(client: Any, signup: Any, when: str) -> None:
    tenant = signup()
    if when == "now":
        when = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    body = assert_problem(
        client.post(
            "/v1/api-keys", headers=tenant.headers, json={"name": "x", "scopes": ["api-keys:read"], "expires_at": when}
        ),
        422,
        "invalid-expiry",
    )
    assert body["errors"] == [{"location": "body.expires_at", "message": "must be in the future"}]


def test_list_keys_newest_first_in_pages(client: Any, signup: Any) -> None:
    tenant = signup()
    made = [
        client.post("/v1/api-keys", headers=tenant.headers, json={"name": f"k{i}", "scopes": ["api-keys:read"]}).json()
        for i in range(4)
    ]
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/api-keys", headers=tenant.headers, params=params).json()
        ids += [k["id"] for k in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Keys made in one request share no timestamp here, but the id breaks any tie anyway.
    assert ids[-1] == tenant.api_key_id and len(ids) == 5
    assert set(ids[:4]) == {m["api_key"]["id"] for m in made}
    created_at = [client.get(f"/v1/api-keys/{i}", headers=tenant.headers).json()["created_at"] for i in ids]
    assert created_at == sorted(created_at, reverse=True)
    assert_problem(client.get("/v1/api-keys", headers=tenant.headers, params={"cursor": "bm90LWEtY3Vyc29y"}), 400)


def test_others_see_only_their_own_keys(client: Any, signup: Any) -> None:
    owner = signup()
    member, member_secret = member_with_key(client, owner, "member")
    _admin, admin_secret = member_with_key(client, owner, "admin")

    listed = client.get("/v1/api-keys", headers=auth(member_secret)).json()["data"]
    assert {k["user_id"] for k in listed} == {member["user_id"]}
    assert_problem(client.get(f"/v1/api-keys/{owner.api_key_id}", headers=auth(member_secret)), 404)
    assert_problem(client.delete(f"/v1/api-keys/{owner.api_key_id}", headers=auth(member_secret)), 404)
    assert client.get("/v1/me", headers=owner.headers).status_code == 200  # untouched

    assert len(client.get("/v1/api-keys", headers=auth(admin_secret)).json()["data"]) == 3
    member_key_id = listed[0]["id"]
    assert client.get(f"/v1/api-keys/{member_key_id}", headers=auth(admin_secret)).status_code == 200
    assert client.delete(f"/v1/api-keys/{member_key_id}", headers=auth(admin_secret)).status_code == 204
    assert_problem(client.get("/v1/me", headers=auth(member_secret)), 401)


def test_revoke_is_idempotent(client: Any, signup: Any, backdoor: Backdoor) -> None:
    tenant = signup()
    created = client.post(
        "/v1/api-keys", headers=tenant.headers, json={"name": "x", "scopes": ["api-keys:read"]}
    ).json()
    key_id = created["api_key"]["id"]
    for _ in range(2):
        response = client.delete(f"/v1/api-keys/{key_id}", headers=tenant.headers)
        assert response.status_code == 204 and response.content == b""
    assert_problem(client.get("/v1/me", headers=auth(created["secret"])), 401)
    body = client.get(f"/v1/api-keys/{key_id}", headers=tenant.headers).json()
    assert body["status"] == "revoked" and body["revoked_at"]
    events = backdoor.events("api_key.revoked")
    assert [e["data"] for e in events] == [{"api_key_id": key_id, "user_id": tenant.user_id, "reason": "revoked"}]


def test_create_key_replays_with_the_same_idempotency_key(client: Any, signup: Any, backdoor: Backdoor) -> None:
    tenant = signup()
    request = {"name": "ci", "scopes": ["api-keys:read"]}
    headers = {**tenant.headers, "Idempotency-Key": "k-123"}
    first = client.post("/v1/api-keys", headers=headers, json=request)
    second = client.post("/v1/api-keys", headers=headers, json=request)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert len(backdoor.events("api_key.created")) == 2  # signup's key + this one, once


# --- members ----------------------------------------------------------------------------


def test_invite_list_get_members(client: Any, signup: Any, backdoor: Backdoor) -> None:
    owner = signup()
    base = f"/v1/organizations/{owner.organization_id}/members"
    invited = invite(client, owner, "Bo@Example.com", "viewer")
    assert invited["status"] == "invited" and invited["role"] == "viewer" and invited["email"] == "Bo@Example.com"
    assert_problem(
        client.post(base, headers=owner.headers, json={"email": "bo@example.com", "role": "member"}),
        409,
        "already-member",
    )
    assert_problem(
        client.post(base, headers=owner.headers, json={"email": owner.email.upper(), "role": "member"}),
        409,
        "already-member",
    )
    for i in range(2):
        invite(client, owner, f"p{i}@example.com", "member")
    first = client.get(base, headers=owner.headers, params={"limit": 2}).json()
    rest = client.get(base, headers=owner.headers, params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert rest["next_cursor"] is None
    emails = [m["email"] for m in first["data"] + rest["data"]]
    assert emails == [owner.email, "Bo@Example.com", "p0@example.com", "p1@example.com"]  # oldest first
    assert [m["status"] for m in first["data"]] == ["active", "invited"]
    assert client.get(f"{base}/{invited['id']}", headers=owner.headers).json() == invited
    [event] = backdoor.events("member.invited")[:1]
    assert event["data"] == {
        "member_id": invited["id"],
        "user_id": invited["user_id"],
        "email": "Bo@Example.com",
        "role": "viewer",
    }


def test_only_owners_make_owners(client: Any, signup: Any) -> None:
    owner = signup()
    base = f"/v1/organizations/{owner.organization_id}/members"
    _admin, admin_secret = member_with_key(client, owner, "admin")
    assert_problem(client.post(base, headers=auth(admin_secret), json={"email": "o@example.com", "role": "owner"}), 403)
    viewer = invite(client, owner, "v@example.com", "viewer")
    assert_problem(client.patch(f"{base}/{viewer['id']}", headers=auth(admin_secret), json={"role": "owner"}), 403)
    me_member = next(m for m in client.get(base, headers=owner.headers).json()["data"] if m["user_id"] == owner.user_id)
    assert_problem(client.patch(f"{base}/{me_member['id']}", headers=auth(admin_secret), json={"role": "viewer"}), 403)
    assert_problem(client.delete(f"{base}/{me_member['id']}", headers=auth(admin_secret)), 403)
    response = client.patch(f"{base}/{viewer['id']}", headers=owner.headers, json={"role": "owner"})
    assert response.status_code == 200 and response.json()["role"] == "owner"


def test_the_last_owner_stays(client: Any, signup: Any) -> None:
    owner = signup()
    base = f"/v1/organizations/{owner.organization_id}/members"
    me_member = client.get(base, headers=owner.headers).json()["data"][0]
    body = assert_problem(
        client.patch(f"{base}/{me_member['id']}", headers=owner.headers, json={"role": "admin"}), 409, "last-owner"
    )
    assert "last owner" in body["detail"]
    assert_problem(client.delete(f"{base}/{me_member['id']}", headers=owner.headers), 409, "last-owner")
    co = invite(client, owner, "co@example.com", "owner")
    assert client.patch(f"{base}/{me_member['id']}", headers=owner.headers, json={"role": "admin"}).status_code == 200
    # Now `co` is the last owner; the demoted caller (admin) cannot touch them anyway.
    assert_problem(client.delete(f"{base}/{co['id']}", headers=owner.headers), 403)


def test_removing_a_member_revokes_their_keys(client: Any, signup: Any, backdoor: Backdoor) -> None:
    owner = signup()
    member, secret = member_with_key(client, owner, "member")
    second = client.post(
        "/v1/api-keys", headers=auth(secret), json={"name": "two", "scopes": ["instances:read"]}
    ).json()
    base = f"/v1/organizations/{owner.organization_id}/members"
    response = client.delete(f"{base}/{member['id']}", headers=owner.headers)
    assert response.status_code == 204, response.text
    assert_problem(client.get("/v1/me", headers=auth(secret)), 401)
    assert_problem(client.get("/v1/me", headers=auth(second["secret"])), 401)
    assert_problem(client.get(f"{base}/{member['id']}", headers=owner.headers), 404)
    revoked = backdoor.events("api_key.revoked")
    assert {e["data"]["api_key_id"] for e in revoked} == {
        second["api_key"]["id"],
        *[
            k["id"]
            for k in client.get("/v1/api-keys", headers=owner.headers).json()["data"]
            if k["user_id"] == member["user_id"]
        ],
    }
    assert {e["data"]["reason"] for e in revoked} == {"member_removed"} and len(revoked) == 2
    [removed] = backdoor.events("member.removed")
    assert removed["data"] == {"member_id": member["id"], "user_id": member["user_id"], "role": "member"}


# --- tenant isolation -------------------------------------------------------------------


def test_another_tenants_members_and_keys_are_404(client: Any, signup: Any, backdoor: Backdoor) -> None:
    a = signup(organization="Alpha")
    b = signup(organization="Bravo")
    b_member = client.get(f"/v1/organizations/{b.organization_id}/members", headers=b.headers).json()["data"][0]
    a_base = f"/v1/organizations/{a.organization_id}/members"
    b_base = f"/v1/organizations/{b.organization_id}/members"
    for response in (
        client.get(f"{a_base}/{b_member['id']}", headers=a.headers),
        client.patch(f"{a_base}/{b_member['id']}", headers=a.headers, json={"role": "viewer"}),
        client.delete(f"{a_base}/{b_member['id']}", headers=a.headers),
        client.get(f"{b_base}/{b_member['id']}", headers=a.headers),
        client.delete(f"{b_base}/{b_member['id']}", headers=a.headers),
        client.get(f"/v1/api-keys/{b.api_key_id}", headers=a.headers),
        client.delete(f"/v1/api-keys/{b.api_key_id}", headers=a.headers),
    ):
        assert_problem(response, 404, "not-found")
        assert b.email not in response.text and "Bravo" not in response.text
    assert b.api_key_id not in client.get("/v1/api-keys", headers=a.headers).text
    assert client.get("/v1/me", headers=b.headers).json()["role"] == "owner"  # nothing changed for B
    assert backdoor.events("api_key.revoked") == [] and backdoor.events("member.removed") == []
