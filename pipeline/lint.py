"""The lint gate: Spectral over the OpenAPI and AsyncAPI specs, plus one cross-spec check.

`python codegen.py lint` calls `lint()`: it installs the Node tooling on first use
(pipeline/node_tooling.py), runs Spectral on each root spec with its ruleset from
specs/rules/ (`--fail-severity=error`), adds `hangar-emits-known` (every `x-emits` entry of
an operation is a message of the AsyncAPI document; Spectral lints one document at a time,
so this check lives here), prints the findings grouped by source file and returns non-zero
on any error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.bundle import BundleError, Bundler
from pipeline.node_tooling import NodeTooling, ToolingError, ensure_installed
from pipeline.stages import ROOT

RULES = ROOT / "specs" / "rules"
SEVERITIES = ("error", "warning", "info", "hint")  # Spectral's numeric severities 0..3


@dataclass(frozen=True)
class Target:
    name: str
    spec: Path
    ruleset: Path


OPENAPI = Target("OpenAPI", ROOT / "specs" / "openapi" / "hangar.yaml", RULES / "openapi.spectral.yaml")
ASYNCAPI = Target("AsyncAPI", ROOT / "specs" / "asyncapi" / "hangar.yaml", RULES / "asyncapi.spectral.yaml")
# The terminal websocket protocol: its own AsyncAPI document, not domain events (ADR 0013).
TERMINAL_WS = Target(
    "AsyncAPI terminal websocket", ROOT / "specs" / "asyncapi" / "terminal.yaml", RULES / "asyncapi-ws.spectral.yaml"
)


@dataclass(frozen=True, order=True)
class Finding:
    source: str  # file path, relative to the repository when inside it
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    severity: str  # error | warning | info | hint
    code: str  # the rule, e.g. "hangar-rate-limits" or "owasp:api4:2023-string-limit"
    message: str
    path: str  # where in the (resolved) document, dotted


class LintError(RuntimeError):
    """Spectral could not run (bad ruleset, unreadable spec): not a finding, a broken gate."""


def _relative(path: str | Path) -> str:
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def run_spectral(spec: Path, ruleset: Path, tooling: NodeTooling | None = None) -> list[Finding]:
    """Lint one document with one ruleset; every finding, whatever its severity."""
    tooling = tooling or ensure_installed()
    cmd = [
        *tooling.spectral(),
        "lint",
        str(spec),
        "--ruleset",
        str(ruleset),
        "--format",
        "json",
        "--quiet",
        "--fail-severity=error",
    ]
    done = subprocess.run(cmd, env=tooling.environ(), cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603
    try:
        raw = json.loads(done.stdout) if done.stdout.strip() else None
    except json.JSONDecodeError:
        raw = None
    if not isinstance(raw, list):
        detail = (done.stderr.strip() or done.stdout.strip() or "no output")[-3000:]
        raise LintError(
            f"Spectral failed on {_relative(spec)} with {_relative(ruleset)} (exit {done.returncode}):\n{detail}"
        )
    findings = [_finding(item) for item in raw]
    if done.returncode != 0 and not any(f.severity == "error" for f in findings):
        raise LintError(
            f"Spectral exited {done.returncode} on {_relative(spec)} without reporting an error:\n{done.stderr}"
        )
    return findings


def _finding(item: dict[str, Any]) -> Finding:
    start = item.get("range", {}).get("start", {})
    severity = item.get("severity", 0)
    return Finding(
        source=_relative(item.get("source") or "?"),
        line=int(start.get("line", -1)) + 1,
        column=int(start.get("character", -1)) + 1,
        severity=SEVERITIES[severity] if isinstance(severity, int) and 0 <= severity < len(SEVERITIES) else "error",
        code=str(item.get("code", "?")),
        message=str(item.get("message", "")).strip(),
        path=".".join(str(part) for part in item.get("path", [])),
    )


# --- hangar-emits-known -----------------------------------------------------------------

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def event_types(asyncapi_root: Path) -> set[str]:
    """Names of the messages the AsyncAPI document's channels carry (`api_key.created`, …)."""
    doc = Bundler(asyncapi_root).bundle()
    names: set[str] = set()
    for channel in (doc.get("channels") or {}).values():
        for message in ((channel or {}).get("messages") or {}).values():
            message = _deref(doc, message)
            if isinstance(message, dict) and isinstance(message.get("name"), str):
                names.add(message["name"])
    return names


def _deref(doc: dict[str, Any], node: Any) -> Any:
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/") and seen < 32:
        target: Any = doc
        for part in node["$ref"][2:].split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
        node, seen = target, seen + 1
    return node


def check_emits(openapi_root: Path, asyncapi_root: Path) -> list[Finding]:
    """hangar-emits-known: each x-emits entry names a message of the AsyncAPI document."""
    known = event_types(asyncapi_root)
    doc = Bundler(openapi_root).bundle()
    findings: list[Finding] = []
    sources = sorted(openapi_root.parent.glob("*.yaml"))
    for route, item in (doc.get("paths") or {}).items():
        for method in METHODS:
            op = (item or {}).get(method)
            if not isinstance(op, dict):
                continue
            for index, event in enumerate(op.get("x-emits") or []):
                if event in known:
                    continue
                path = ["paths", route, method, "x-emits", index]
                source, line, column = _locate(sources, path, fallback=openapi_root)
                findings.append(
                    Finding(
                        source=source,
                        line=line,
                        column=column,
                        severity="error",
                        code="hangar-emits-known",
                        message=(
                            f"{method.upper()} {route} emits {event!r}, which no channel of "
                            f"{_relative(asyncapi_root)} carries (known: {', '.join(sorted(known)) or 'none'})."
                        ),
                        path=".".join(str(p) for p in path),
                    )
                )
    return findings


def _locate(files: Iterable[Path], path: Sequence[str | int], fallback: Path) -> tuple[str, int, int]:
    """The first file holding `path` (context files keep the root's path keys), with position."""
    for file in files:
        try:
            node: Any = yaml.compose(file.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        except (OSError, yaml.YAMLError):
            continue
        for part in path:
            if isinstance(node, yaml.MappingNode):
                node = next((value for key, value in node.value if key.value == part), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                node = None
            if node is None:
                break
        if node is not None:
            return _relative(file), node.start_mark.line + 1, node.start_mark.column + 1
    return _relative(fallback), 0, 0


# --- reporting ----------------------------------------------------------------------------


def format_findings(findings: Sequence[Finding]) -> list[str]:
    """Readable lines: grouped by file, in position order; identical findings reached
    through different $ref paths (a shared response, say) are printed once with a count."""
    counts = Counter((f.source, f.line, f.column, f.severity, f.code, f.message) for f in findings)
    first_path: dict[tuple[str, int, int, str, str, str], str] = {}
    for f in findings:
        first_path.setdefault((f.source, f.line, f.column, f.severity, f.code, f.message), f.path)
    lines: list[str] = []
    current = None
    for key in sorted(counts, key=lambda k: (k[0], k[1], k[2], SEVERITIES.index(k[3]), k[4])):
        source, line, column, severity, code, message = key
        if source != current:
            lines.append(source)
            current = source
        times = f"  (×{counts[key]})" if counts[key] > 1 else ""
        lines.append(f"  {line}:{column:<4} {severity:<7} {code}  {message}{times}")
        lines.append(f"  {'':<12}at {first_path[key]}")
    return lines


def summarize(name: str, findings: Sequence[Finding]) -> str:
    tally = Counter(f.severity for f in findings)
    return f"{name}: {tally['error']} error(s), {tally['warning']} warning(s), {tally['info']} info, {tally['hint']} hint(s)"


def lint(
    targets: Sequence[Target] = (OPENAPI, ASYNCAPI, TERMINAL_WS),
    emits: tuple[Path, Path] | None = (OPENAPI.spec, ASYNCAPI.spec),
) -> int:
    """Lint every target and cross-check `emits` (OpenAPI root, AsyncAPI root); print the
    findings; 0 when there is no error, 1 otherwise, 2 when the gate itself cannot run."""
    try:
        tooling = ensure_installed()
    except ToolingError as exc:
        print(f"lint: cannot install Spectral: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results: list[tuple[str, list[Finding]]] = []
    try:
        for target in targets:
            results.append((target.name, run_spectral(target.spec, target.ruleset, tooling)))
        results.append(("x-emits vs AsyncAPI", check_emits(emits[0], emits[1]) if emits else []))
    except (LintError, BundleError) as exc:
        print(f"lint: {exc}", file=sys.stderr)
        return 2
    errors = 0
    for name, findings in results:
        for line in format_findings(findings):
            print(line)
        print(f"lint: {summarize(name, findings)}")
        errors += sum(f.severity == "error" for f in findings)
    elapsed = time.perf_counter() - started
    if errors:
        print(f"lint: FAILED with {errors} error(s) in {elapsed:.1f}s", file=sys.stderr)
        return 1
    print(f"lint: specs pass (no errors) in {elapsed:.1f}s")
    return 0
