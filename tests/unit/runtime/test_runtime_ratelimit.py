"""Rate limits: the limiter's arithmetic with a fake clock, and the headers and 429s the
server sends."""

from __future__ import annotations

from typing import Any

import pytest
from runtime_widgets import FULL, assert_problem

from hangar.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestLimiter:
    def test_counts_down_then_refuses_until_the_window_ends(self) -> None:
        clock = Clock()
        limiter = RateLimiter(3, 60, clock)
        assert [limiter.hit("k").remaining for _ in range(3)] == [2, 1, 0]
        clock.now += 20
        refused = limiter.hit("k")
        assert not refused.allowed and refused.remaining == 0 and refused.reset_seconds == 40
        clock.now += 40
        assert limiter.hit("k").allowed

    def test_keys_are_independent(self) -> None:
        limiter = RateLimiter(1, 60, Clock())
        assert limiter.hit("a").allowed and limiter.hit("b").allowed
        assert not limiter.hit("a").allowed

    def test_reset_is_never_zero_while_refusing(self) -> None:
        clock = Clock()
        limiter = RateLimiter(1, 60, clock)
        limiter.hit("k")
        clock.now += 59.99
        assert limiter.hit("k").reset_seconds == 1

    def test_expired_windows_are_forgotten(self) -> None:
        clock = Clock()
        limiter = RateLimiter(5, 60, clock)
        for n in range(100):
            limiter.hit(f"client-{n}")
        clock.now += 61
        limiter.hit("late")
        assert len(limiter._windows) == 1

    def test_rejects_a_zero_limit(self) -> None:
        with pytest.raises(ValueError):
            RateLimiter(0)


def test_headers_on_every_response_of_a_limited_route(make_widget_client: Any) -> None:
    client = make_widget_client(rate_limit_per_minute=5)
    ok = client.get("/v1/widgets", headers=FULL)
    invalid = client.get("/v1/widgets?limit=0", headers=FULL)
    missing = client.get("/v1/widgets/0b9f3a52-6c5e-4d8e-9a0e-0d3c8e2f7a11", headers=FULL)
    for response, remaining in ((ok, "4"), (invalid, "3"), (missing, "2")):
        assert response.headers["ratelimit-limit"] == "5"
        assert response.headers["ratelimit-remaining"] == remaining
        assert 0 < int(response.headers["ratelimit-reset"]) <= 60


def test_429_with_retry_after_per_key(make_widget_client: Any) -> None:
    client = make_widget_client(rate_limit_per_minute=2)
    assert client.get("/v1/widgets", headers=FULL).status_code == 200
    assert client.get("/v1/widgets", headers=FULL).status_code == 200
    limited = client.get("/v1/widgets", headers=FULL)
    assert_problem(limited, 429, "rate-limited")
    assert 0 < int(limited.headers["retry-after"]) <= 60
    assert limited.headers["ratelimit-remaining"] == "0"
    # Another key has its own budget.
    assert client.get("/v1/widgets", headers={"Authorization": "Bearer tok-other"}).status_code == 200


def test_public_operations_are_limited_per_address(make_widget_client: Any) -> None:
    client = make_widget_client(public_rate_limit_per_minute=1)
    first = client.post("/v1/echo", json={"message": "hi"})
    assert first.status_code == 200 and first.headers["ratelimit-limit"] == "1"
    limited = client.post("/v1/echo", json={"message": "hi"})
    assert_problem(limited, 429)
    assert "retry-after" in limited.headers
    # An invalid request is counted and refused the same way.
    assert_problem(client.post("/v1/echo", json={}), 429)


def test_failed_authentication_is_limited_per_address(make_widget_client: Any) -> None:
    client = make_widget_client(rate_limit_per_minute=2)
    assert_problem(client.get("/v1/widgets", headers={"Authorization": "Bearer guess-1"}), 401)
    assert_problem(client.get("/v1/widgets"), 401)
    assert_problem(client.get("/v1/widgets", headers={"Authorization": "Bearer guess-3"}), 429)
