"""Idempotency-Key: replay, reuse with another body, problems replayed, failures released,
validation failures stored nowhere, and never two side effects under concurrency.

Database-facing: runs on SQLite and again on PostgreSQL (`-m postgres`)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import timedelta
from typing import Any

import pytest
from runtime_widgets import TOKENS, assert_problem, side_effects
from sqlalchemy import update

from hangar.db import utcnow
from hangar.idempotency import STALE_CLAIM, Claim, IdempotencyKey, fingerprint

pytestmark = pytest.mark.postgres


def create(client: Any, body: Any, key: str | None, token: str = "tok-full") -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/v1/widgets", headers=headers, json=body)


def new_key() -> str:
    return str(uuid.uuid4())


def test_replay_returns_the_first_response(widgets: Any) -> None:
    key = new_key()
    first = create(widgets, {"name": "a", "size": 1}, key)
    again = create(widgets, {"size": 1, "name": "a"}, key)  # same request, keys reordered
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["content-type"] == "application/json"
    assert side_effects(widgets) == 1


def test_without_a_key_every_request_runs(widgets: Any) -> None:
    create(widgets, {"name": "a", "size": 1}, None)
    create(widgets, {"name": "a", "size": 1}, None)
    assert side_effects(widgets) == 2


def test_same_key_different_body_is_a_422(widgets: Any) -> None:
    key = new_key()
    assert create(widgets, {"name": "a", "size": 1}, key).status_code == 201
    assert_problem(create(widgets, {"name": "a", "size": 2}, key), 422, "idempotency-key-reused")
    assert side_effects(widgets) == 1


def test_keys_belong_to_the_api_key_that_sent_them(widgets: Any) -> None:
    key = new_key()
    first = create(widgets, {"name": "a", "size": 1}, key, token="tok-full")
    other = create(widgets, {"name": "a", "size": 1}, key, token="tok-full-2")
    assert first.status_code == other.status_code == 201
    assert first.json()["id"] != other.json()["id"]
    assert "idempotent-replayed" not in other.headers


def test_a_problem_is_stored_and_replayed(widgets: Any, handlers: Any) -> None:
    key = new_key()
    first = assert_problem(create(widgets, {"name": "conflict", "size": 1}, key), 409, "conflict")
    again = create(widgets, {"name": "conflict", "size": 1}, key)
    assert_problem(again, 409)
    assert again.headers["idempotent-replayed"] == "true"
    # Replayed as stored: the body names the request that produced it.
    assert again.json() == first
    assert again.headers["x-request-id"] != first["request_id"]
    assert handlers.calls["createWidget"] == 1


def test_an_unexpected_error_releases_the_key(widgets: Any, handlers: Any) -> None:
    key = new_key()
    assert_problem(create(widgets, {"name": "crash", "size": 1}, key), 500)
    assert_problem(create(widgets, {"name": "crash", "size": 1}, key), 500)
    assert handlers.calls["createWidget"] == 2  # the retry ran again: nothing was stored


def test_a_constraint_race_at_commit_is_a_409_and_not_stored(widgets: Any, handlers: Any) -> None:
    assert create(widgets, {"name": "dup", "size": 1}, None).status_code == 201
    key = new_key()
    assert_problem(create(widgets, {"name": "dup", "size": 1}, key), 409, "conflict")
    assert_problem(create(widgets, {"name": "dup", "size": 1}, key), 409, "conflict")
    assert handlers.calls["createWidget"] == 3  # released, so the retry ran again
    assert_problem(create(widgets, {"name": "dup", "size": 1}, None), 409, "conflict")


def test_nothing_is_stored_when_validation_fails(widgets: Any) -> None:
    key = new_key()
    assert_problem(create(widgets, {"name": "a"}, key), 400)
    assert create(widgets, {"name": "a", "size": 1}, key).status_code == 201


def test_an_expired_record_is_forgotten(widgets: Any) -> None:
    key = new_key()
    first = create(widgets, {"name": "a", "size": 1}, key)
    with widgets.app.runtime.sessions() as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    again = create(widgets, {"name": "a", "size": 1}, key)
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    assert side_effects(widgets) == 2


def test_public_operations_are_keyed_by_client_address(widgets: Any) -> None:
    key = new_key()
    first = widgets.post("/v1/echo", headers={"Idempotency-Key": key}, json={"message": "hi"})
    again = widgets.post("/v1/echo", headers={"Idempotency-Key": key}, json={"message": "hi"})
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert side_effects(widgets, "echo.said") == 1


def test_an_abandoned_claim_is_taken_over(widgets: Any) -> None:
    """A claim whose owner died (never completed) stops blocking the key after a while."""
    key = new_key()
    body = {"name": "a", "size": 1}
    scope = f"key:{TOKENS['tok-full'].api_key_id}"
    long_ago = utcnow() - STALE_CLAIM - timedelta(seconds=1)
    claim = widgets.app.runtime.idempotency.begin(scope, "createWidget", key, fingerprint({}, body), long_ago)
    assert isinstance(claim, Claim)
    response = create(widgets, body, key)
    assert response.status_code == 201, response.text
    assert side_effects(widgets) == 1


def test_a_fresh_claim_blocks_with_409(widgets: Any) -> None:
    key = new_key()
    body = {"name": "a", "size": 1}
    scope = f"key:{TOKENS['tok-full'].api_key_id}"
    widgets.app.runtime.idempotency.begin(scope, "createWidget", key, fingerprint({}, body), utcnow())
    assert_problem(create(widgets, body, key), 409, "idempotency-key-in-flight")
    assert_problem(create(widgets, {**body, "size": 2}, key), 422, "idempotency-key-reused")


def test_concurrent_duplicates_have_one_effect(widgets: Any, handlers: Any) -> None:
    """N requests with one key at once: the first holds the handler (blocked), every other
    is told 409 while it is in flight; once it finishes, a retry replays it."""
    key = new_key()
    body = {"name": "block", "size": 7}
    duplicates = 8
    start = threading.Barrier(duplicates)

    def fire(_: int) -> Any:
        start.wait()
        return create(widgets, body, key)

    with ThreadPoolExecutor(duplicates) as pool:
        futures = [pool.submit(fire, i) for i in range(duplicates)]
        assert handlers.entered.wait(30), "no request reached the handler"
        # The owner is held inside the handler, so the first N-1 to finish are the others:
        # they were answered while it was in flight. (The timeout only stops a hang.)
        finished = []
        for future in as_completed(futures, timeout=60):
            finished.append(future.result())
            if len(finished) == duplicates - 1:
                break
        assert sorted(r.status_code for r in finished) == [409] * (duplicates - 1)
        handlers.release.set()
        responses = [f.result(timeout=30) for f in futures]

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * (duplicates - 1), statuses
    for response in responses:
        if response.status_code == 409:
            assert_problem(response, 409, "idempotency-key-in-flight")
    assert handlers.calls["createWidget"] == 1
    assert side_effects(widgets) == 1
    replay = create(widgets, body, key)
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert side_effects(widgets) == 1
