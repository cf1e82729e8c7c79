"""Request validation: formats enforced, integers as JSON Schema 2020-12 sees them, bad
bytes and bad JSON are 400s, and 401/403/429 win over 400."""

from __future__ import annotations

from typing import Any

import pytest
from runtime_widgets import FULL, READ, assert_problem

from hangar.validators import CompiledSchema, to_json_schema

WIDGET = "/v1/widgets/0b9f3a52-6c5e-4d8e-9a0e-0d3c8e2f7a11"


def create(client: Any, body: Any, **headers: str) -> Any:
    return client.post("/v1/widgets", headers={**FULL, **headers}, json=body)


class TestFormats:
    def test_non_uuid_path_id_is_a_400(self, widgets: Any, handlers: Any) -> None:
        body = assert_problem(widgets.get("/v1/widgets/12345", headers=FULL), 400)
        assert body["errors"][0]["location"] == "path.widgetId"
        assert "uuid" in body["errors"][0]["message"]

    def test_uuid_path_id_reaches_the_handler(self, widgets: Any) -> None:
        assert_problem(widgets.get(WIDGET, headers=FULL), 404, "not-found")

    @pytest.mark.parametrize("due", ["2026-13-01T00:00:00Z", "yesterday", "2026-11-28"])
    def test_bad_date_time_is_a_400(self, widgets: Any, due: str) -> None:
        body = assert_problem(create(widgets, {"name": "a", "size": 1, "due": due}), 400)
        assert body["errors"][0]["location"] == "body.due"

    def test_bad_email_is_a_400(self, widgets: Any) -> None:
        body = assert_problem(create(widgets, {"name": "a", "size": 1, "email": "not-an-email"}), 400)
        assert body["errors"][0]["location"] == "body.email"

    def test_good_formats_pass(self, widgets: Any) -> None:
        response = create(widgets, {"name": "a", "size": 1, "email": "ada@example.com", "due": "2026-11-28T10:00:00Z"})
        assert response.status_code == 201, response.text

    def test_integral_float_is_an_integer(self, widgets: Any) -> None:
        assert create(widgets, {"name": "a", "size": 2764.0}).status_code == 201
        assert_problem(create(widgets, {"name": "a", "size": 2764.5}), 400)

    def test_nullable_is_understood(self, widgets: Any) -> None:
        assert create(widgets, {"name": "a", "size": 1, "note": None}).status_code == 201


class TestBodies:
    def test_invalid_utf8_is_a_400(self, widgets: Any) -> None:
        response = widgets.post(
            "/v1/widgets", headers={**FULL, "Content-Type": "application/json"}, content=b'{"name": "\xff\xfe"}'
        )
        body = assert_problem(response, 400)
        assert body["errors"] == [{"location": "body", "message": "is not valid utf-8"}]

    @pytest.mark.parametrize("raw", [b"{", b"[1,", b'{"name": NaN, "size": 1}', b"\x00"])
    def test_invalid_json_is_a_400(self, widgets: Any, raw: bytes) -> None:
        response = widgets.post("/v1/widgets", headers={**FULL, "Content-Type": "application/json"}, content=raw)
        assert_problem(response, 400)

    def test_deeply_nested_json_is_a_400_not_a_crash(self, widgets: Any) -> None:
        raw = b"[" * 100_000 + b"]" * 100_000
        response = widgets.post("/v1/widgets", headers={**FULL, "Content-Type": "application/json"}, content=raw)
        assert_problem(response, 400)

    def test_missing_required_body_is_a_400(self, widgets: Any) -> None:
        body = assert_problem(widgets.post("/v1/widgets", headers=FULL), 400)
        assert body["errors"] == [{"location": "body", "message": "is required"}]

    def test_oversized_body_is_a_413(self, widgets: Any) -> None:
        raw = b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'", "size": 1}'
        response = widgets.post("/v1/widgets", headers={**FULL, "Content-Type": "application/json"}, content=raw)
        assert_problem(response, 413, "payload-too-large")

    def test_charset_parameter_is_honoured(self, widgets: Any) -> None:
        raw = '{"name": "caf\u00e9", "size": 1}'.encode("latin-1")
        response = widgets.post(
            "/v1/widgets", headers={**FULL, "Content-Type": "application/json; charset=latin-1"}, content=raw
        )
        assert response.status_code == 201, response.text
        assert response.json()["name"] == "caf\u00e9"


class TestParameters:
    def test_query_integer_is_coerced_and_defaulted(self, widgets: Any) -> None:
        assert widgets.get("/v1/widgets?limit=3", headers=FULL).status_code == 200
        assert widgets.get("/v1/widgets", headers=FULL).status_code == 200  # default 50

    @pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=201", "limit=1.5", "cursor=bad*cursor"])
    def test_bad_query_values_are_400s(self, widgets: Any, query: str) -> None:
        body = assert_problem(widgets.get(f"/v1/widgets?{query}", headers=FULL), 400)
        assert body["errors"][0]["location"] == "query." + query.split("=")[0]

    def test_required_query_parameter(self, widgets: Any) -> None:
        body = assert_problem(widgets.get("/v1/fail", headers=FULL), 400)
        assert body["errors"] == [{"location": "query.mode", "message": "is required"}]

    def test_header_parameter_is_validated(self, widgets: Any) -> None:
        body = assert_problem(create(widgets, {"name": "a", "size": 1}, **{"Idempotency-Key": "has space"}), 400)
        assert body["errors"][0]["location"] == "header.Idempotency-Key"


class TestSecurityComesFirst:
    def test_no_credentials_and_a_bad_body_is_a_401(self, widgets: Any) -> None:
        assert_problem(widgets.post("/v1/widgets", json={"bad": True}), 401)

    def test_unknown_key_and_a_bad_body_is_a_401(self, widgets: Any) -> None:
        response = widgets.post("/v1/widgets", headers={"Authorization": "Bearer nope"}, content=b"\xff")
        assert_problem(response, 401)

    def test_missing_scope_and_a_bad_body_is_a_403(self, widgets: Any) -> None:
        assert_problem(widgets.post("/v1/widgets", headers=READ, json={"bad": True}), 403)

    def test_bad_path_id_without_credentials_is_a_401(self, widgets: Any) -> None:
        assert_problem(widgets.get("/v1/widgets/not-a-uuid"), 401)

    def test_over_the_limit_and_a_bad_body_is_a_429(self, make_widget_client: Any) -> None:
        client = make_widget_client(rate_limit_per_minute=1)
        assert client.get("/v1/widgets", headers=FULL).status_code == 200
        assert_problem(client.post("/v1/widgets", headers=FULL, json={"bad": True}), 429)


class TestSchemaTranslation:
    def test_nullable_enum(self) -> None:
        schema = to_json_schema({"type": "string", "enum": ["a"], "nullable": True})
        assert schema == {"type": ["string", "null"], "enum": ["a", None]}

    def test_draft4_exclusive_bounds(self) -> None:
        assert to_json_schema({"type": "integer", "minimum": 1, "exclusiveMinimum": True}) == {
            "type": "integer",
            "exclusiveMinimum": 1,
        }

    def test_openapi_only_keywords_are_dropped(self) -> None:
        assert to_json_schema({"type": "string", "example": "x", "x-cli": {}, "readOnly": True}) == {"type": "string"}

    def test_nullable_without_type(self) -> None:
        compiled = CompiledSchema({"allOf": [{"type": "string"}], "nullable": True})
        assert compiled.is_valid(None) and compiled.is_valid("x") and not compiled.is_valid(1)
