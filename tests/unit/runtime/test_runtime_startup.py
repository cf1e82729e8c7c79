"""Start-up refuses to serve a contract it cannot honour; the bundled specs are served as is."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from runtime_widgets import OPERATIONS

from hangar.app import StartupError, Wiring, create_app, migration_problem


def test_a_missing_handler_stops_start_up_naming_it(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers.identity import operations

    monkeypatch.delattr(operations, "get_me")
    with pytest.raises(StartupError) as caught:
        create_app(settings)
    assert "getMe" in str(caught.value) and "get_me" in str(caught.value)


def test_an_endpoint_missing_from_bind_stops_start_up(settings: Any, widget_wiring: Wiring) -> None:
    def partial_bind(invoke: Any) -> dict[str, Any]:
        endpoints = dict(widget_wiring.bind(invoke))
        del endpoints["getWidget"], endpoints["echo"]
        return endpoints

    with pytest.raises(StartupError) as caught:
        create_app(settings, dataclasses.replace(widget_wiring, bind=partial_bind))
    assert "getWidget" in str(caught.value) and "echo" in str(caught.value)


def test_an_operation_missing_from_the_registry_stops_start_up(settings: Any, widget_wiring: Wiring) -> None:
    """It would otherwise be served without the security gate knowing its scopes."""
    registry = {k: v for k, v in OPERATIONS.items() if k != "deleteWidget"}
    with pytest.raises(StartupError, match="deleteWidget: in the spec but not in the operation registry"):
        create_app(settings, dataclasses.replace(widget_wiring, operations=registry))


def test_an_unmigrated_database_is_refused(tmp_path: Path) -> None:
    problem = migration_problem(f"sqlite:///{tmp_path / 'empty.db'}")
    assert problem is not None and "not migrated" in problem and "make migrate" in problem


def test_a_migrated_database_is_accepted(database_url: str) -> None:
    assert migration_problem(database_url) is None


def test_bundles_are_served_byte_for_byte(widgets: Any, widget_spec: Path) -> None:
    response = widgets.get("/v1/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.content == widget_spec.read_bytes()
    assert widgets.get("/v1/asyncapi.json").status_code == 404  # this wiring has none
    refused = widgets.post("/v1/openapi.json")
    assert refused.status_code == 405 and refused.headers["allow"] == "GET"


def test_swagger_ui_is_at_docs(widgets: Any) -> None:
    page = widgets.get("/docs/")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "/docs/openapi.json" in page.text
    assert widgets.get("/docs/openapi.json").json()["paths"].keys() == {
        "/v1/widgets",
        "/v1/widgets/{widgetId}",
        "/v1/echo",
        "/v1/fail",
    }
