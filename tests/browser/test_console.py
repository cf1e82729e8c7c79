"""The browser console end to end: a live server (the `local` driver: a real shell in the
instance's sandbox), a signup and a running instance made with the real `hangar` CLI, then
headless Chromium (Debian's `chromium` package at /usr/bin/chromium, started by this test and
driven with Playwright — no browser is downloaded) opens /console/instances/{id}/terminal,
enters the API key, and types into xterm.js; what the shell answers is read back from the
screen (xterm's buffer and the DOM rows), and a screenshot is taken.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hangar import console
from tests.cli.helpers import PASSWORD, hangar
from tests.conftest import LiveServer, start_server, stop_server

CHROMIUM = Path(os.environ.get("HANGAR_CHROMIUM", "/usr/bin/chromium"))
PNG = b"\x89PNG\r\n\x1a\n"

if not CHROMIUM.is_file():
    pytest.skip(
        f"NO BROWSER TEST: {CHROMIUM} is missing — install Debian's chromium (`apt-get install -y chromium`) "
        "or point HANGAR_CHROMIUM at a Chromium binary",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def live_server(databases: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`hangar-server` with the `local` driver: instances are sandboxed processes on this machine."""
    live = start_server(
        databases.dedicated(), tmp_path_factory.mktemp("browser-live") / "server.log",
        HANGAR_DRIVER="local", HANGAR_BILLING_SIGNUP_CREDIT="10000000",
    )  # fmt: skip
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture(scope="module")
def tenant(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A signup and a running instance, through the CLI: {config, secret, instance_id}."""
    missing = console.missing_assets()
    assert not missing, f"the console's xterm.js files are missing ({missing}): run {console.INSTALL}"
    config = tmp_path_factory.mktemp("browser") / "config.toml"
    email = f"web-{uuid.uuid4().hex[:10]}@example.com"
    signup = hangar(
        "signup", "--email", email, "--password", PASSWORD, "--organization", "Web", "--output", "json",
        config=config, url=live_server.url,
    )  # fmt: skip
    assert signup.code == 0, signup
    types = hangar("instance-types", "--output", "json", config=config).json()["data"]
    images = [i for i in hangar("images", "--output", "json", config=config).json()["data"] if i["status"] == "active"]
    kind = next(t for t in types if t["gpus"] == 0 and any(a["available"] for a in t["availability"]))
    region = next(a["region"] for a in kind["availability"] if a["available"])
    image = next(i for i in images if i["min_disk_gb"] <= kind["disk_gb"])
    created = hangar(
        "instances", "create", "--name", "web-1", "--region", region, "--instance-type", kind["slug"],
        "--image", image["slug"], "--wait", "--timeout", "120", "--output", "json", config=config,
    )  # fmt: skip
    assert created.code == 0, created
    return {"secret": signup.json()["secret"], "instance_id": created.json()["instance_id"]}


@pytest.fixture(scope="module")
def browser(tenant: dict[str, str]) -> Iterator[Any]:
    """Chromium, started after the server (a server started under Playwright's running event
    loop did not come up)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            # As root in a container Chromium's own sandbox cannot start; this browser only
            # ever loads our own page.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.errors = errors
    try:
        yield opened
    finally:
        context.close()


# Every script is a function, not a string to evaluate: the page's CSP has no 'unsafe-eval'.
SCREEN = """() => {
    const buffer = window.hangarConsole.term.buffer.active;
    const lines = [];
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
    return lines;
}"""


def _connect(page: Any, live_server: Any, tenant: dict[str, str], *, remember: bool = False) -> None:
    page.goto(f"{live_server.url}/console/instances/{tenant['instance_id']}/terminal")
    page.fill("#api-key", tenant["secret"])
    if remember:
        page.check("#remember")
    page.click("#connect")
    page.wait_for_function("() => window.hangarConsole.phase === 'attached'", timeout=20_000)


def test_type_a_command_read_it_back_and_take_a_screenshot(
    page: Any, live_server: Any, tenant: dict[str, str], tmp_path: Path
) -> None:
    _connect(page, live_server, tenant)
    a, b = random.randint(1000, 9999), random.randint(1000, 9999)
    expected = f"hello-{a + b}"
    # The shell must compute it: the echo of what was typed shows `$((a + b))`, not the sum.
    page.locator(".xterm-helper-textarea").focus()
    page.keyboard.type(f"echo hello-$(({a} + {b}))")
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => {{ const b = window.hangarConsole.term.buffer.active; for (let i = 0; i < b.length; i++) "
        f"{{ if (b.getLine(i).translateToString(true).trim() === {expected!r}) return true; }} return false; }}",
        timeout=20_000,
    )
    lines = page.evaluate(SCREEN)
    assert expected in [line.strip() for line in lines]
    assert any(f"echo hello-$(({a} + {b}))" in line for line in lines), "the typed line is echoed"
    assert expected in page.inner_text(".xterm-rows"), "and it is on the screen (the DOM rows)"

    shot = tmp_path / "console.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 2000

    page.keyboard.type("exit 7")
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.hangarConsole.phase === 'ended'", timeout=20_000)
    state = page.evaluate("() => ({exit: window.hangarConsole.exitCode, close: window.hangarConsole.closeCode})")
    assert state == {"exit": 7, "close": 1000}
    assert "exit code 7" in page.inner_text("#status")
    # The key was never in a URL, and without "keep it" it is not stored.
    assert tenant["secret"] not in page.url
    assert page.evaluate("() => sessionStorage.length") == 0
    assert page.errors == []


def test_a_resize_of_the_window_reaches_the_shell(page: Any, live_server: Any, tenant: dict[str, str]) -> None:
    _connect(page, live_server, tenant, remember=True)
    assert page.evaluate("() => sessionStorage.getItem('hangar.console.apiKey')") == tenant["secret"]
    page.locator(".xterm-helper-textarea").focus()
    page.set_viewport_size({"width": 700, "height": 420})
    page.wait_for_timeout(300)
    cols, rows = page.evaluate("() => [window.hangarConsole.term.cols, window.hangarConsole.term.rows]")
    page.keyboard.type("stty size")
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => {{ const b = window.hangarConsole.term.buffer.active; for (let i = 0; i < b.length; i++) "
        f"{{ if (b.getLine(i).translateToString(true).trim() === '{rows} {cols}') return true; }} return false; }}",
        timeout=20_000,
    )
    page.keyboard.type("exit")
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.hangarConsole.phase === 'ended'", timeout=20_000)


def test_a_wrong_key_is_a_clear_message(page: Any, live_server: Any, tenant: dict[str, str]) -> None:
    page.goto(f"{live_server.url}/console/instances/{tenant['instance_id']}/terminal")
    page.fill("#api-key", "hgr_AAAAAAAAAAAA_notarealsecretatallnotarealsecret")
    page.click("#connect")
    page.wait_for_function("() => window.hangarConsole.phase === 'failed'", timeout=20_000)
    assert "(401)" in page.inner_text("#status")
