"""Fixtures for the runtime tests: the widgets API (runtime_widgets) served by create_app."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_widgets import OPERATIONS, SPEC, Handlers, authenticate

from hangar.app import Wiring, create_app


@pytest.fixture(scope="session")
def widget_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("widgets") / "openapi.json"
    path.write_text(json.dumps(SPEC))
    return path


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def widget_wiring(widget_spec: Path, handlers: Handlers) -> Wiring:
    return Wiring(
        openapi=widget_spec, asyncapi=None, operations=OPERATIONS, bind=handlers.bind, authenticate=authenticate
    )


@pytest.fixture
def make_widget_client(make_settings: Callable[..., Any], widget_wiring: Wiring) -> Iterator[Callable[..., Any]]:
    """make_widget_client(**settings overrides) → a TestClient (lifespan running) on the
    widgets API; closed at the end of the test."""
    from starlette.testclient import TestClient

    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        app = create_app(make_settings(**overrides), widget_wiring)
        test_client = TestClient(app)
        test_client.__enter__()
        clients.append(test_client)
        return test_client

    yield make
    for test_client in clients:
        test_client.__exit__(None, None, None)


@pytest.fixture
def widgets(make_widget_client: Callable[..., Any]) -> Any:
    return make_widget_client()
