"""Live `hangar-server`s for the terminal tests (uvicorn in a subprocess, like production),
each with the terminal settings its tests need: the `sim` driver with short re-checks for the
protocol tests, tiny idle/duration limits for the limit tests, the `local` driver (real bash
in a real PTY) for the local tests. One server per module; each test signs up its own tenant."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from terminal_support import Tenant, sign_up

_spec = importlib.util.spec_from_file_location(
    "hangar_root_conftest", Path(__file__).resolve().parents[2] / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_root = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _root
_spec.loader.exec_module(_root)
start_server, stop_server = _root.start_server, _root.stop_server

BASE_ENV = {
    "HANGAR_PUBLIC_RATE_LIMIT_PER_MINUTE": "100000",
    "HANGAR_RATE_LIMIT_PER_MINUTE": "100000",
    "HANGAR_BILLING_SIGNUP_CREDIT": "10000000",
    "HANGAR_TERMINAL_RECHECK_SECONDS": "0.2",
    "HANGAR_TERMINAL_AUTH_TIMEOUT_SECONDS": "1",
    "HANGAR_TERMINAL_MAX_SESSIONS_PER_ORG": "4",
}


@pytest.fixture(scope="module")
def server_env() -> dict[str, str]:
    """Overridden by a test module for other settings."""
    return {}


@pytest.fixture(scope="module")
def server(databases: Any, tmp_path_factory: pytest.TempPathFactory, server_env: dict[str, str]) -> Iterator[Any]:
    live = start_server(
        databases.dedicated(), tmp_path_factory.mktemp("terminal-live") / "server.log", **{**BASE_ENV, **server_env}
    )
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture(scope="module")
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def tenant(http: httpx.Client) -> Tenant:
    return sign_up(http)


@pytest.fixture
def make_tenant(http: httpx.Client) -> Callable[..., Tenant]:
    return lambda organization="Globex": sign_up(http, organization)
