"""Every error is application/problem+json with type/title/status/detail/request_id, and
every response carries X-Request-Id."""

from __future__ import annotations

from typing import Any

import pytest
from runtime_widgets import FULL, READ, assert_problem


def test_unknown_path_is_a_404_problem(widgets: Any) -> None:
    body = assert_problem(widgets.get("/v1/nowhere"), 404, "not-found")
    assert body["instance"] == "/v1/nowhere"


def test_405_lists_every_method_of_the_path(widgets: Any) -> None:
    response = widgets.put("/v1/widgets", headers=FULL, json={})
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET, POST"
    templated = widgets.patch("/v1/widgets/0b9f3a52-6c5e-4d8e-9a0e-0d3c8e2f7a11", headers=FULL)
    assert_problem(templated, 405)
    assert templated.headers["allow"] == "DELETE, GET"


def test_415_for_an_undeclared_content_type(widgets: Any) -> None:
    response = widgets.post("/v1/widgets", headers={**FULL, "Content-Type": "text/plain"}, content=b"name=x")
    assert_problem(response, 415, "unsupported-media-type")


def test_401_without_credentials_names_the_scheme(widgets: Any) -> None:
    response = widgets.get("/v1/widgets")
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer nope", "Basic dXNlcjpwYXNz", "Bearer", "tok-full"])
def test_401_with_bad_credentials(widgets: Any, header: str) -> None:
    assert_problem(widgets.get("/v1/widgets", headers={"Authorization": header}), 401, "unauthorized")


def test_403_names_the_missing_scope(widgets: Any) -> None:
    body = assert_problem(
        widgets.post("/v1/widgets", headers=READ, json={"name": "a", "size": 1}), 403, "missing-scope"
    )
    assert "widgets:write" in body["detail"]


def test_400_lists_field_errors(widgets: Any) -> None:
    response = widgets.post("/v1/widgets", headers=FULL, json={"name": "", "size": "big", "extra": 1})
    body = assert_problem(response, 400, "validation-error")
    locations = {e["location"] for e in body["errors"]}
    assert {"body.name", "body.size", "body"} <= locations, body["errors"]


def test_missing_required_property_points_at_it(widgets: Any) -> None:
    body = assert_problem(widgets.post("/v1/widgets", headers=FULL, json={"name": "a"}), 400)
    assert body["errors"] == [{"location": "body.size", "message": '"size" is a required property'}]


def test_password_values_are_never_echoed(widgets: Any) -> None:
    body = assert_problem(
        widgets.post("/v1/widgets", headers=FULL, json={"name": "a", "size": 1, "secret": "hunter2"}), 400
    )
    assert "hunter2" not in str(body)
    assert body["errors"] == [{"location": "body.secret", "message": "is shorter than 8 characters"}]


def test_unhandled_exception_is_a_500_without_internals(widgets: Any, caplog: pytest.LogCaptureFixture) -> None:
    response = widgets.get("/v1/fail?mode=crash", headers=FULL)
    body = assert_problem(response, 500, "internal-error")
    assert "hunter2" not in response.text and "db.internal" not in response.text
    # The log keeps what the client is not told, under the same request id.
    assert any(body["request_id"] in r.getMessage() and r.exc_info for r in caplog.records)


def test_response_that_breaks_the_contract_is_a_500(widgets: Any) -> None:
    response = widgets.get("/v1/fail?mode=bad-response", headers=FULL)
    assert_problem(response, 500)
    assert "surprise" not in response.text


def test_problem_instance_is_a_uri_reference(widgets: Any) -> None:
    body = assert_problem(widgets.get("/v1/widgets/not a uuid\u00e9", headers=FULL), 400)
    assert body["instance"] == "/v1/widgets/not%20a%20uuid%C3%A9"


def test_control_characters_never_reach_a_problem(widgets: Any) -> None:
    response = widgets.post("/v1/widgets", headers=FULL, json={"name": "a", "size": 1, "bad\u0007key": 1})
    body = assert_problem(response, 400)
    texts = [body["detail"], body["title"]] + [e["location"] + e["message"] for e in body["errors"]]
    assert "bad?key" in "".join(texts)
    assert not any(ord(c) < 32 for text in texts for c in text)


class TestRequestId:
    def test_generated_when_absent(self, widgets: Any) -> None:
        response = widgets.get("/v1/widgets", headers=FULL)
        assert response.status_code == 200
        assert response.headers["x-request-id"].startswith("req_")

    def test_client_supplied_id_is_kept(self, widgets: Any) -> None:
        response = widgets.get("/v1/nowhere", headers={"X-Request-Id": "trace_ABC-123"})
        assert response.headers["x-request-id"] == "trace_ABC-123"
        assert response.json()["request_id"] == "trace_ABC-123"

    @pytest.mark.parametrize("supplied", ["has space", "x" * 65, "semi;colon", "ünï"])
    def test_unsafe_client_id_is_replaced(self, widgets: Any, supplied: str) -> None:
        response = widgets.get("/v1/widgets", headers={**FULL, "X-Request-Id": supplied.encode()})
        assert response.headers["x-request-id"] != supplied
        assert response.headers["x-request-id"].startswith("req_")

    def test_on_the_bundled_specs_too(self, widgets: Any) -> None:
        response = widgets.get("/v1/openapi.json")
        assert response.status_code == 200 and "x-request-id" in response.headers


def test_cors_preflight_and_headers(widgets: Any) -> None:
    preflight = widgets.options(
        "/v1/widgets", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-methods"] == "GET, POST"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    assert widgets.get("/v1/widgets", headers=FULL).headers["access-control-allow-origin"] == "*"


def test_plain_options_is_a_405_with_allow(widgets: Any) -> None:
    response = widgets.options("/v1/widgets/0b9f3a52-6c5e-4d8e-9a0e-0d3c8e2f7a11")
    assert_problem(response, 405)
    assert response.headers["allow"] == "DELETE, GET"
