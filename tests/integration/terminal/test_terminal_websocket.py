"""The terminal websocket contract, against a live server on the `sim` driver: every frame
sent and received is checked against specs/asyncapi/terminal.yaml (terminal_support.py);
every refusal gets its documented close code and runs nothing (each refused session's command
would create a file; a later, valid session proves the file does not exist)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import jsonschema_rs
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from terminal_support import Tenant, Terminal, frame, run
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from generated.events.catalog import CATALOG
from handlers.terminal.tables import TerminalSession
from hangar.db import make_engine, utcnow
from hangar.drivers.terminal import SIM_UNAME
from hangar.outbox import OutboxEvent

pytestmark = pytest.mark.postgres


def ws_url(server: Any, session: dict[str, Any]) -> str:
    url: str = session["url"]
    assert url.startswith("ws://127.0.0.1:") and "hgt_" not in url and session["ticket"] not in url
    return url


async def one_command(server: Any, tenant: Tenant, instance_id: str, command: list[str]) -> Any:
    created = tenant.open_session(instance_id, command=command)
    term = await Terminal.open(ws_url(server, created), created["ticket"])
    return await term.finish()


def file_exists(server: Any, tenant: Tenant, instance_id: str, name: str) -> bool:
    """Ask the instance itself, through a fresh valid session (sim: `cat`)."""
    outcome = run(one_command(server, tenant, instance_id, ["cat", name]))
    assert outcome.close_code == 1000, outcome
    return bool(outcome.exit["exit_code"] == 0)


def events(server: Any, session_id: str) -> list[dict[str, Any]]:
    engine = make_engine(server.database_url)
    try:
        with Session(engine) as db:
            rows = db.scalars(
                select(OutboxEvent).where(OutboxEvent.type.like("terminal.%")).order_by(OutboxEvent.seq)
            ).all()
            payloads = [row.payload for row in rows if row.payload["data"]["session_id"] == session_id]
    finally:
        engine.dispose()
    for payload in payloads:
        errors = list(
            jsonschema_rs.validator_for(dict(CATALOG[payload["type"]].json_schema), validate_formats=True).iter_errors(
                payload
            )
        )
        assert not errors, errors
    return payloads


def db_update(server: Any, session_id: str, **values: Any) -> None:
    engine = make_engine(server.database_url)
    try:
        with Session(engine) as db, db.begin():
            db.execute(update(TerminalSession).where(TerminalSession.id == uuid.UUID(session_id)).values(**values))
    finally:
        engine.dispose()


# --- the happy paths ------------------------------------------------------------------------


def test_interactive_shell_echo_exit_code_events_and_counters(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance)
    assert created["status"] == "pending" and created["ticket"].startswith("hgt_")

    async def scenario() -> Any:
        term = await Terminal.open(ws_url(server, created), created["ticket"])
        await term.expect("$ ")
        await term.type("echo hello-terminal\r")
        await term.expect("hello-terminal\r\n$ ")
        await term.type("exit 3\r")
        return await term.finish()

    outcome = run(scenario())
    assert outcome.exit == {"exit_code": 3, "reason": "exited"} and outcome.close_code == 1000
    assert outcome.frames[-1] == "exit"
    got = tenant.session(created["id"])
    assert got["status"] == "ended" and got["end_reason"] == "exited" and got["exit_code"] == 3
    assert got["bytes_in"] == len("echo hello-terminal\rexit 3\r") and got["bytes_out"] == len(outcome.output)
    assert got["started_at"] and got["ended_at"]
    listed = tenant.get(f"/v1/terminal-sessions?instance_id={instance}&status=ended")["data"]
    assert [s["id"] for s in listed] == [created["id"]]
    kinds = [e["type"] for e in events(server, created["id"])]
    assert kinds == ["terminal.session_started", "terminal.session_ended"]
    ended = events(server, created["id"])[1]["data"]
    assert ended["reason"] == "exited" and ended["exit_code"] == 3 and ended["bytes_in"] == got["bytes_in"]
    # No content in the server's log: neither what was typed nor the ticket.
    log = server.output()
    assert "hello-terminal" not in log and created["ticket"] not in log
    assert f"terminal.session_ended session={created['id']}" in log


@pytest.mark.parametrize(
    ("command", "code", "shown"),
    [(["uname", "-a"], 0, SIM_UNAME), (["false"], 1, ""), (["no-such-program"], 127, "command not found")],
)
def test_a_command_ends_the_session_with_its_exit_code(
    server: Any, tenant: Tenant, command: list[str], code: int, shown: str
) -> None:
    instance = tenant.launch()
    outcome = run(one_command(server, tenant, instance, command))
    assert outcome.exit == {"exit_code": code, "reason": "exited"} and outcome.close_code == 1000
    assert shown in outcome.text


def test_resize_reaches_the_terminal(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance, cols=90, rows=20)

    async def scenario() -> tuple[str, str, str]:
        term = await Terminal.open(ws_url(server, created), created["ticket"])
        await term.type("stty size\r")
        first = await term.expect("20 90")
        await term.ws.close()
        created2 = tenant.open_session(instance, cols=90, rows=20)
        term = await Terminal.open(ws_url(server, created2), created2["ticket"], cols=100, rows=30)
        await term.type("stty size\r")
        second = await term.expect("30 100")
        await term.send("resize", {"cols": 132, "rows": 43})
        await term.type("stty size\r")
        third = await term.expect("43 132")
        return first, second, third

    first, second, third = run(scenario())
    assert "20 90" in first and "30 100" in second and "43 132" in third


# --- refusals: close code, nothing executed -----------------------------------------------


def _touch(tenant: Tenant, instance: str, name: str) -> dict[str, Any]:
    return tenant.open_session(instance, command=["touch", name])


async def _refused(url: str, ticket: str | None, **kwargs: Any) -> Any:
    term = await Terminal.open(url, ticket, **kwargs)
    return await term.finish()


def test_bad_ticket_is_4401_and_runs_nothing(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = _touch(tenant, instance, "bad-ticket")
    outcome = run(_refused(ws_url(server, created), "hgt_" + "A" * 43))
    assert outcome.close_code == 4401 and outcome.frames == []
    assert not file_exists(server, tenant, instance, "bad-ticket")


def test_a_replayed_ticket_is_4401_and_two_racing_clients_get_one_session(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = tenant.open_session(instance, command=["echo", "once"])
    url = ws_url(server, created)

    async def race() -> list[Any]:
        return list(await asyncio.gather(*(_refused(url, created["ticket"]) for _ in range(5))))

    outcomes = run(race())
    codes = sorted(o.close_code for o in outcomes)
    assert codes == [1000, 4401, 4401, 4401, 4401], codes
    assert sum("once" in o.text for o in outcomes) == 1
    again = run(_refused(url, created["ticket"]))
    assert again.close_code == 4401 and again.frames == []
    assert [e["type"] for e in events(server, created["id"])] == ["terminal.session_started", "terminal.session_ended"]


def test_an_expired_ticket_is_4401_and_runs_nothing(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = _touch(tenant, instance, "expired")
    db_update(server, created["id"], ticket_expires_at=TerminalSession.created_at)  # as if 60 s had passed
    assert tenant.session(created["id"])["end_reason"] == "ticket_expired"
    outcome = run(_refused(ws_url(server, created), created["ticket"]))
    assert outcome.close_code == 4401 and outcome.frames == []
    assert not file_exists(server, tenant, instance, "expired")


def test_another_organizations_session_and_instance(server: Any, tenant: Tenant, make_tenant: Any) -> None:
    ours = tenant.launch()
    other = make_tenant()
    theirs = other.launch()
    # Their ticket on our session: 4404, and it runs neither session's command.
    our_session = _touch(tenant, ours, "ours-untouched")
    their_session = _touch(other, theirs, "theirs-untouched")
    outcome = run(_refused(ws_url(server, our_session), their_session["ticket"]))
    assert outcome.close_code == 4404 and outcome.frames == []
    assert other.session(their_session["id"])["end_reason"] == "ticket_refused"
    assert not file_exists(server, tenant, ours, "ours-untouched")
    assert not file_exists(server, other, theirs, "theirs-untouched")
    # Our ticket still works on our session (theirs was the one burnt).
    assert run(_refused(ws_url(server, our_session), our_session["ticket"])).close_code == 1000
    # REST: another tenant's instance and session are 404s.
    response = tenant.http.post(f"/v1/instances/{theirs}/terminal-sessions", json={}, headers=tenant.headers)
    assert response.status_code == 404 and response.headers["content-type"].startswith("application/problem+json")
    for method in ("GET", "DELETE"):
        response = tenant.http.request(method, f"/v1/terminal-sessions/{their_session['id']}", headers=tenant.headers)
        assert response.status_code == 404


def test_a_stopped_instance_cannot_be_opened(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = _touch(tenant, instance, "after-stop")
    tenant.act(instance, "stop")
    tenant.wait_instance(instance, "stopped")
    outcome = run(_refused(ws_url(server, created), created["ticket"]))
    assert outcome.close_code == 4409 and outcome.frames == []
    response = tenant.http.post(f"/v1/instances/{instance}/terminal-sessions", json={}, headers=tenant.headers)
    assert response.status_code == 409 and response.json()["type"].endswith("/instance-not-running")
    tenant.act(instance, "start")
    tenant.wait_instance(instance, "running")
    assert not file_exists(server, tenant, instance, "after-stop")


def test_a_missing_or_late_auth_frame_is_4401(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    silent = _touch(tenant, instance, "silent")
    outcome = run(_refused(ws_url(server, silent), None))  # says nothing: the 1 s auth timeout
    assert outcome.close_code == 4401
    stdin_first = _touch(tenant, instance, "stdin-first")

    async def stdin_before_auth() -> Any:
        term = await Terminal.open(ws_url(server, stdin_first), None)
        await term.type("touch typed\r")
        return await term.finish()

    assert run(stdin_before_auth()).close_code == 4401
    for name in ("silent", "stdin-first", "typed"):
        assert not file_exists(server, tenant, instance, name)


def test_malformed_frames_are_4400(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()

    async def raw(url: str, payload: bytes | str, subprotocols: list[str] | None = None) -> int | None:
        async with connect(
            url, subprotocols=subprotocols if subprotocols is not None else ["hangar.terminal.v1"]
        ) as ws:  # type: ignore[arg-type]
            try:
                await ws.send(payload)  # the server may already have closed (no subprotocol)
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    cases: list[tuple[str, bytes | str, list[str] | None]] = [
        ("text", json.dumps({"ticket": "x"}), None),
        ("empty", b"", None),
        ("bad-json", b"\x05{not json", None),
        ("not-an-object", b"\x05[1,2]", None),
        ("bad-size", b'\x05{"ticket": "hgt_x", "cols": 0}', None),
        ("another-subprotocol", b"\x05{}", ["other.v1"]),
    ]
    for name, payload, protocols in cases:
        created = _touch(tenant, instance, f"malformed-{name}")
        assert run(raw(ws_url(server, created), payload, protocols)) == 4400, name
        # A malformed frame is no ticket presentation: the session still waits; close it.
        assert tenant.http.delete(f"/v1/terminal-sessions/{created['id']}", headers=tenant.headers).status_code == 204
        assert not file_exists(server, tenant, instance, f"malformed-{name}"), name

    created = tenant.open_session(instance)

    async def bad_channel_after_auth() -> Any:
        term = await Terminal.open(ws_url(server, created), created["ticket"])
        await term.expect("$ ")
        await term.ws.send(b"\x09hello")  # no such channel
        return await term.finish()

    outcome = run(bad_channel_after_auth())
    assert outcome.close_code == 4400 and outcome.exit == {"exit_code": None, "reason": "malformed_frame"}


def test_unknown_session_id_is_4404(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    created = _touch(tenant, instance, "unknown-id")
    url = ws_url(server, created).replace(created["id"], str(uuid.uuid4()))
    assert run(_refused(url, created["ticket"])).close_code == 4404
    assert not file_exists(server, tenant, instance, "unknown-id")


def test_a_revoked_keys_ticket_stops_working_and_its_sessions_close(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    key_id, secret = tenant.create_key(["instances:console", "instances:read"])
    holder = Tenant(tenant.http, tenant.organization_id, secret, key_id)
    pending = _touch(holder, instance, "revoked")
    attached = holder.open_session(instance)

    async def scenario() -> tuple[Any, Any]:
        term = await Terminal.open(ws_url(server, attached), attached["ticket"])
        await term.expect("$ ")
        response = tenant.http.delete(f"/v1/api-keys/{key_id}", headers=tenant.headers)
        assert response.status_code == 204, response.text
        closed = await term.finish()
        refused = await _refused(ws_url(server, pending), pending["ticket"])
        return closed, refused

    closed, refused = run(scenario())
    assert closed.close_code == 4401 and closed.exit == {"exit_code": None, "reason": "key_revoked"}
    assert refused.close_code == 4401 and refused.frames == []
    assert not file_exists(server, tenant, instance, "revoked")


# --- closing: the API, the instance, another process -------------------------------------


def test_delete_closes_a_pending_and_an_attached_session(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    pending = _touch(tenant, instance, "deleted")
    assert tenant.http.delete(f"/v1/terminal-sessions/{pending['id']}", headers=tenant.headers).status_code == 204
    assert tenant.session(pending["id"])["end_reason"] == "closed"
    assert run(_refused(ws_url(server, pending), pending["ticket"])).close_code == 4401
    assert not file_exists(server, tenant, instance, "deleted")
    attached = tenant.open_session(instance)

    async def scenario() -> Any:
        term = await Terminal.open(ws_url(server, attached), attached["ticket"])
        await term.expect("$ ")
        response = tenant.http.delete(f"/v1/terminal-sessions/{attached['id']}", headers=tenant.headers)
        assert response.status_code == 204
        return await term.finish()

    outcome = run(scenario())
    assert outcome.close_code == 1000 and outcome.exit == {"exit_code": None, "reason": "closed"}
    assert tenant.session(attached["id"])["end_reason"] == "closed"


def test_a_close_requested_by_another_process_is_seen_at_the_recheck(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    attached = tenant.open_session(instance)

    async def scenario() -> Any:
        term = await Terminal.open(ws_url(server, attached), attached["ticket"])
        await term.expect("$ ")
        # What a consumer or deleteTerminalSession in another process leaves behind: only the row.
        db_update(server, attached["id"], close_requested="instance_stopped")
        return await term.finish(timeout=5)

    outcome = run(scenario())
    assert outcome.close_code == 4499 and outcome.exit == {"exit_code": None, "reason": "instance_stopped"}


def test_stopping_the_instance_closes_its_sessions_4499(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    attached = tenant.open_session(instance)

    async def scenario() -> Any:
        term = await Terminal.open(ws_url(server, attached), attached["ticket"])
        await term.expect("$ ")
        tenant.act(instance, "stop")
        return await term.finish()

    outcome = run(scenario())
    assert outcome.close_code == 4499 and outcome.exit == {"exit_code": None, "reason": "instance_stopped"}
    assert tenant.session(attached["id"])["end_reason"] == "instance_stopped"


# --- the per-organization cap --------------------------------------------------------------


def test_the_per_organization_cap_at_creation_and_at_attach(server: Any, tenant: Tenant) -> None:
    instance = tenant.launch()
    held = [tenant.open_session(instance) for _ in range(4)]  # HANGAR_TERMINAL_MAX_SESSIONS_PER_ORG=4
    response = tenant.http.post(f"/v1/instances/{instance}/terminal-sessions", json={}, headers=tenant.headers)
    assert response.status_code == 409 and response.json()["type"].endswith("/terminal-session-limit")
    for created in held[1:]:
        assert tenant.http.delete(f"/v1/terminal-sessions/{created['id']}", headers=tenant.headers).status_code == 204
    # At attach the cap counts attached sessions: another gateway's, here written directly.
    engine = make_engine(server.database_url)
    try:
        with Session(engine) as db, db.begin():
            for _ in range(4):
                db.add(
                    TerminalSession(
                        id=uuid.uuid4(),
                        organization_id=uuid.UUID(tenant.organization_id),
                        instance_id=uuid.UUID(instance),
                        api_key_id=uuid.UUID(tenant.api_key_id),
                        cols=80,
                        rows=24,
                        status="active",
                        ticket_hash=uuid.uuid4().hex,
                        ticket_expires_at=utcnow(),
                        created_at=utcnow(),
                        started_at=None,
                        heartbeat_at=None,
                        bytes_in=0,
                        bytes_out=0,
                    )
                )
    finally:
        engine.dispose()
    outcome = run(_refused(ws_url(server, held[0]), held[0]["ticket"]))
    assert outcome.close_code == 4429 and outcome.frames == []
    assert tenant.session(held[0]["id"])["end_reason"] == "session_limit"


def test_frames_are_checked_by_the_contract_helper() -> None:
    # The checker itself must refuse what the contract does not allow (a test that cannot fail proves nothing).
    with pytest.raises(AssertionError):
        frame("stdout", b"x")  # a server channel, sent by a client
    with pytest.raises(Exception, match="cols"):
        frame("resize", {"cols": 0, "rows": 10})
