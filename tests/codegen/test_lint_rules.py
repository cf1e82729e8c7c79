"""The Spectral lint gate: each house rule fires where a fixture breaks it, nowhere else, and
the real specs pass with zero errors.

Runs the real Spectral (installed once into .tooling/ by pipeline/node_tooling.py) on two
fixture documents, tests/codegen/fixtures/lint/{openapi,asyncapi}.yaml, which break every
house rule at places marked in comments and also hold fully compliant operations/channels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import lint as lint_module
from pipeline.lint import ASYNCAPI, OPENAPI, Finding, check_emits, format_findings, run_spectral
from pipeline.node_tooling import STAMP, NodeTooling, ToolingError, ensure_installed

FIXTURES = Path(__file__).parent / "fixtures" / "lint"
FIXTURE_OPENAPI = FIXTURES / "openapi.yaml"
FIXTURE_ASYNCAPI = FIXTURES / "asyncapi.yaml"


@pytest.fixture(scope="module")
def tooling() -> NodeTooling:
    try:
        return ensure_installed(log=False)
    except ToolingError as exc:
        pytest.skip(f"!!! SPECTRAL LINT TESTS SKIPPED: Node tooling cannot be installed: {exc}")


@pytest.fixture(scope="module")
def openapi_findings(tooling: NodeTooling) -> list[Finding]:
    return run_spectral(FIXTURE_OPENAPI, OPENAPI.ruleset, tooling)


@pytest.fixture(scope="module")
def asyncapi_findings(tooling: NodeTooling) -> list[Finding]:
    return run_spectral(FIXTURE_ASYNCAPI, ASYNCAPI.ruleset, tooling)


def house(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.code.startswith("hangar-")]


# (rule, the dotted document path it must be reported at, a fragment of its message)
OPENAPI_EXPECTED = [
    ("hangar-paths-v1", "paths./widgets/legacy", "/widgets/legacy is not under /v1/"),
    ("hangar-operation-id", "paths./widgets/legacy.get.operationId", '"get_legacy_widgets" is not camelCase'),
    ("hangar-operation-id", "paths./v1/gadgets.post.operationId", '"listWidgets" is already used by GET /v1/widgets'),
    ("hangar-operation-tag", "paths./widgets/legacy.get.tags", "exactly one tag (has 2)"),
    ("hangar-operation-tag", "paths./v1/gadgets/{gadgetId}.delete.tags.0", 'tag "sprockets" is not declared'),
    (
        "hangar-operation-context",
        "paths./widgets/legacy.get.x-context",
        'x-context "warehouse" is not a bounded context',
    ),
    ("hangar-operation-context", "paths./v1/gadgets.post", "has no `x-context`"),
    ("hangar-secured-errors", "paths./widgets/legacy.get.responses", "does not declare 401 and 403"),
    ("hangar-security-scopes", "paths./v1/gadgets.post.security.0.bearer.0", 'scope "gadgets:fly" is not declared'),
    ("hangar-rate-limits", "paths./widgets/legacy.get.responses", "does not declare a 429"),
    ("hangar-rate-limits", "paths./v1/gadgets.post.responses.201", "201 lacks header(s) RateLimit-Limit"),
    ("hangar-rate-limits", "components.responses.Problem", "POST /v1/gadgets: 429 lacks header(s) Retry-After"),
    ("hangar-list-pagination", "paths./widgets/legacy.get", "lacks query parameter(s) limit, cursor"),
    ("hangar-list-pagination", "paths./widgets/legacy.get.responses.200", "has no `next_cursor`"),
    ("hangar-idempotent-create", "paths./v1/gadgets.post", "not marked `x-idempotency: true`"),
    ("hangar-idempotent-create", "paths./v1/gadgets.post", "POST /v1/gadgets must accept the Idempotency-Key"),
    ("hangar-idempotent-create", "paths./v1/gadgets/{gadgetId}.delete", "DELETE /v1/gadgets/{gadgetId} must accept"),
    ("hangar-problem-responses", "paths./v1/gadgets.post.responses.400", "has application/json"),
    ("hangar-parameter-examples", "paths./v1/gadgets.post.parameters.0", 'parameter "color" (query) has no example'),
    ("hangar-parameter-examples", "paths./v1/gadgets/{gadgetId}.parameters.0", 'parameter "gadgetId" (path)'),
    (
        "hangar-property-examples",
        "components.schemas.Gadget.properties.color",
        'Property "color" (string) has no example',
    ),
    ("hangar-emits-format", "paths./v1/gadgets.post.x-emits.0", '"GadgetCreated" is not an event type'),
]

ASYNCAPI_EXPECTED = [
    (
        "hangar-event-address",
        "channels.badAddress.address",
        'address "Widgets/Created" is not <context>.<entity>.<verb>',
    ),
    ("hangar-event-address", "components.messages.WidgetRemoved", 'expected "inventory.widget.removed"'),
    ("hangar-event-binding", "channels.widgetRemoved", 'topic exchange "hangar.events"'),
    ("hangar-event-binding", "channels.widgetPainted.bindings", 'topic exchange "hangar.events"'),
    ("hangar-event-envelope", "components.messages.WidgetRemoved.payload", "must be closed"),
    ("hangar-event-envelope", "components.messages.WidgetRemoved.payload", "organization_id missing or not required"),
    (
        "hangar-event-envelope",
        "components.messages.WidgetRemoved.payload.properties.type",
        'pinned (enum of one or const) to the message name "widget.removed"',
    ),
    ("hangar-event-envelope", "components.messages.WidgetRemoved.payload.properties.data", "`data` must be an object"),
    ("hangar-event-examples", "components.messages.WidgetRemoved", "has no examples"),
    ("hangar-event-examples", "components.messages.WidgetPainted.examples.0.payload", 'required property "type"'),
    ("hangar-event-examples", "components.messages.WidgetPainted.examples.0.payload.data.color", "allowed values"),
]


def _assert_exactly(findings: list[Finding], expected: list[tuple[str, str, str]]) -> None:
    found = house(findings)
    for code, path, fragment in expected:
        hits = [f for f in found if f.code == code and f.path == path and fragment in f.message]
        assert hits, f"{code} did not fire at {path} with {fragment!r}; house findings were:\n" + "\n".join(
            f"  {f.code} {f.path}: {f.message}" for f in found
        )
        assert all(f.severity == "error" and f.line > 0 for f in hits)
    # Nothing beyond what the fixture's comments announce: the compliant operations and
    # channels (and everything else) stay clean.
    unexpected = [
        f for f in found if not any(f.code == c and f.path == p and frag in f.message for c, p, frag in expected)
    ]
    assert not unexpected, "unexpected house findings:\n" + "\n".join(
        f"  {f.code} {f.path}: {f.message}" for f in unexpected
    )


def test_openapi_house_rules_fire_where_the_fixture_breaks_them(openapi_findings: list[Finding]) -> None:
    _assert_exactly(openapi_findings, OPENAPI_EXPECTED)


def test_every_openapi_house_rule_is_exercised() -> None:
    ruleset = OPENAPI.ruleset.read_text()
    declared = {line.strip().rstrip(":") for line in ruleset.splitlines() if line.startswith("  hangar-")}
    assert declared == {code for code, _, _ in OPENAPI_EXPECTED}


def test_compliant_operations_see_merged_responses(openapi_findings: list[Finding]) -> None:
    # listWidgets/createWidget get 401/403/429 only through a YAML `<<:` merge key: if Spectral
    # dropped merge keys, hangar-secured-errors and hangar-rate-limits would fire on them.
    assert not [f for f in house(openapi_findings) if "/v1/widgets" in f.path or "/v1/widgets " in f.message]


def test_asyncapi_house_rules_fire_where_the_fixture_breaks_them(asyncapi_findings: list[Finding]) -> None:
    _assert_exactly(asyncapi_findings, ASYNCAPI_EXPECTED)


def test_every_asyncapi_house_rule_is_exercised() -> None:
    ruleset = ASYNCAPI.ruleset.read_text()
    declared = {line.strip().rstrip(":") for line in ruleset.splitlines() if line.startswith("  hangar-")}
    assert declared == {code for code, _, _ in ASYNCAPI_EXPECTED}


def test_owasp_ruleset_is_active(openapi_findings: list[Finding]) -> None:
    # The extends only resolves with NODE_PATH set; without it Spectral would fail outright,
    # but make sure the OWASP rules really ran (the fixture lacks CORS headers on purpose).
    assert any(f.code == "owasp:api8:2023-define-cors-origin" for f in openapi_findings)


def test_emits_must_name_asyncapi_messages() -> None:
    findings = check_emits(FIXTURE_OPENAPI, FIXTURE_ASYNCAPI)
    flagged = {f.path: f for f in findings}
    assert set(flagged) == {"paths./v1/gadgets.post.x-emits.0", "paths./v1/gadgets/{gadgetId}.delete.x-emits.0"}
    deleted = flagged["paths./v1/gadgets/{gadgetId}.delete.x-emits.0"]
    assert "'gadget.deleted'" in deleted.message and "widget.created" in deleted.message
    assert deleted.code == "hangar-emits-known" and deleted.severity == "error"
    lines = FIXTURE_OPENAPI.read_text().splitlines()
    assert "gadget.deleted" in lines[deleted.line - 1]


def test_format_groups_identical_findings() -> None:
    one = Finding("specs/a.yaml", 3, 5, "error", "hangar-x", "Broken.", "paths./v1/a.get")
    same_elsewhere = Finding("specs/a.yaml", 3, 5, "error", "hangar-x", "Broken.", "paths./v1/b.get")
    warning = Finding("specs/a.yaml", 1, 1, "warning", "w", "Meh.", "info")
    lines = format_findings([one, same_elsewhere, warning])
    assert lines[0] == "specs/a.yaml"
    assert lines[1].startswith("  1:1") and "warning" in lines[1]
    assert "hangar-x  Broken.  (×2)" in lines[3]
    assert lines[4].strip() == "at paths./v1/a.get"


def test_real_specs_lint_with_zero_errors(tooling: NodeTooling, capsys: pytest.CaptureFixture[str]) -> None:
    assert lint_module.lint() == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "OpenAPI: 0 error(s)" in out and "AsyncAPI: 0 error(s)" in out


def test_install_is_stamped_and_runs_once(tooling: NodeTooling) -> None:
    before = STAMP.stat().st_mtime_ns
    again = ensure_installed(log=False)
    assert again == tooling and STAMP.stat().st_mtime_ns == before
    assert (tooling.node_modules / "@stoplight" / "spectral-owasp-ruleset").is_dir()


def test_declared_scopes_match_the_scope_enum() -> None:
    # hangar-security-scopes checks operations against the bearer scheme's x-scopes; the API's
    # `Scope` enum (what a key can be created with) must offer exactly the same scopes.
    specs = OPENAPI.spec.parent
    scheme = yaml.safe_load((specs / "common.yaml").read_text())["components"]["securitySchemes"]["apiKey"]
    scope_enum = yaml.safe_load((specs / "identity.yaml").read_text())["components"]["schemas"]["Scope"]["enum"]
    assert sorted(scheme["x-scopes"]) == sorted(scope_enum)
