"""The browser console's page and files (hangar/console): what is served, with which headers,
what is not, and that the page's protocol constants are the AsyncAPI contract's. The page
working in a browser is tests/browser/test_console.py."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from hangar import console

ROOT = Path(__file__).resolve().parents[3]
CONTRACT = yaml.safe_load((ROOT / "specs" / "asyncapi" / "terminal.yaml").read_text(encoding="utf-8"))
SCRIPT = (ROOT / "hangar" / "console" / "static" / "terminal.js").read_text(encoding="utf-8")

needs_assets = pytest.mark.skipif(
    bool(console.missing_assets()),
    reason=f"xterm.js is not installed: run {console.INSTALL}",
)


def _js_object(name: str) -> dict[str, Any]:
    """`const NAME = {...};` from terminal.js, as a dict (keys quoted for JSON)."""
    found = re.search(rf"const {name} = (\{{.*?\}});", SCRIPT, re.S)
    assert found, f"terminal.js has no const {name}"
    text = re.sub(r"(\w+):", r'"\1":', found.group(1))
    return dict(json.loads(re.sub(r",\s*}", "}", text)))


# --- the page ----------------------------------------------------------------------------------


@needs_assets
def test_the_page_is_html_with_a_strict_policy(client: Any) -> None:
    instance = str(uuid.uuid4())
    response = client.get(f"/console/instances/{instance}/terminal")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-request-id"]
    page = response.text
    assert f'data-instance-id="{instance}"' in page
    for asset in ("vendor/xterm.js", "vendor/addon-fit.js", "vendor/xterm.css", "terminal.js", "terminal.css"):
        assert f"/console/static/{asset}" in page
    assert not re.search(r"""(src|href)=["']https?:""", page), "nothing comes from another origin (no CDN)"


@needs_assets
def test_the_key_form_submits_nothing(client: Any) -> None:
    page = client.get(f"/console/instances/{uuid.uuid4()}/terminal").text
    form = re.search(r"<form.*?</form>", page, re.S)
    assert form is not None
    # No name on any input and no action: even without the script the key never reaches a URL.
    assert " name=" not in form.group(0) and "action=" not in form.group(0)
    assert 'type="password"' in form.group(0)


def test_a_path_that_is_not_an_instance_id_is_a_404_problem(client: Any) -> None:
    for path in ("/console/instances/not-a-uuid/terminal", "/console", "/console/instances", "/console/nope"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 404


def test_only_get_and_head(client: Any) -> None:
    response = client.post(f"/console/instances/{uuid.uuid4()}/terminal")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


@needs_assets
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("terminal.js", "text/javascript"),
        ("terminal.css", "text/css"),
        ("vendor/xterm.js", "text/javascript"),
        ("vendor/xterm.css", "text/css"),
        ("vendor/addon-fit.js", "text/javascript"),
    ],
)
def test_static_files_are_served_from_the_list(client: Any, name: str, kind: str) -> None:
    response = client.get(f"/console/static/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert len(response.content) > 100


@pytest.mark.parametrize(
    "name",
    ["vendor/xterm.js.map", "terminal.html", "../__init__.py", "vendor/../../package.json", "node_modules/x"],
)
def test_nothing_else_is_reachable(client: Any, name: str) -> None:
    assert client.get(f"/console/static/{name}").status_code == 404


def test_without_the_npm_install_the_page_says_what_to_run(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(console.VENDOR, "vendor/xterm.js", Path("/nonexistent/xterm.js"))
    response = client.get(f"/console/instances/{uuid.uuid4()}/terminal")
    assert response.status_code == 503
    assert "npm ci --ignore-scripts --prefix hangar/console" in response.json()["detail"]


def test_the_console_is_not_an_api_operation() -> None:
    spec = json.loads((ROOT / "generated" / "openapi.json").read_text(encoding="utf-8"))
    assert not [path for path in spec["paths"] if path.startswith("/console")]


# --- the page speaks the contract ------------------------------------------------------------------


def test_the_script_uses_the_contracts_channel_bytes_and_subprotocol() -> None:
    messages = CONTRACT["components"]["messages"]
    contract = {m["name"]: m["x-channel-byte"] for m in messages.values()}
    assert _js_object("CHANNEL") == contract
    assert f'const SUBPROTOCOL = "{CONTRACT["x-subprotocol"]}";' in SCRIPT


def test_the_script_explains_every_refusal_close_code() -> None:
    refusals = {int(code) for code in CONTRACT["x-close-codes"] if int(code) >= 4000}
    assert {int(code) for code in _js_object("CLOSE_MESSAGES")} == refusals
