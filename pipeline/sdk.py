"""Stage: generated/openapi.json → generated/sdk/ (the `hangar-client` project).

openapi-python-client 0.29.1 runs in-process (its Python API, not its CLI: no second
interpreter start-up), with the settings in templates/sdk/config.yaml and the custom templates
beside it. Hangar's additions, all generated from templates/sdk/:
- retry.py: retries, and an Idempotency-Key per logical call for `x-idempotency` operations;
- pagination.py + `sync_all`/`asyncio_all` on list operations: walk every page;
- errors.ApiError; our own pyproject.toml (setuptools, PEP 621) and README.md.

Byte-for-byte determinism: the generator writes into a scratch directory; ruff (pinned, with
templates/sdk/ruff.toml and --no-cache) formats it there; every file gets the header line;
then the tree is synced into generated/sdk/ (unchanged files are not rewritten, stale ones
are removed; pip's *.egg-info is left alone).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pipeline.stages import HEADER, ROOT, Stage, write_text

TEMPLATES = ROOT / "templates" / "sdk"
PACKAGE = "hangar_client"
# Files rendered from templates/sdk/ into the package, beside what the generator writes.
EXTRA_MODULES = ("retry.py", "pagination.py")
SAFE_METHODS = frozenset({"get", "head", "options"})


def _route(method: str, path: str) -> tuple[str, str]:
    # The generator renames path parameters ({apiKeyId} → {api_key_id}); compare without them.
    return method.lower(), re.sub(r"\{[^}]*\}", "{}", path)


def operation_extensions(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """What the templates need from each operation beyond what the generator keeps, by route."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if isinstance(op, dict) and "operationId" in op:
                found[_route(method, path)] = {
                    "operation_id": op["operationId"],
                    "idempotent": bool(op.get("x-idempotency")),
                    "replayable": method in SAFE_METHODS or bool(op.get("x-idempotency")),
                }
    return found


def _untrusted(value: Any) -> str:
    return value.get_untrusted_value() if hasattr(value, "get_untrusted_value") else str(value)


def _page_item(endpoint: Any) -> tuple[str, str] | None:
    """(class, module) of the items when the 2xx response is a page (`data` + `next_cursor`)."""
    for response in endpoint.responses.patterns:
        low, _high = response.status_code.range
        if not 200 <= low < 300:
            continue
        props = {_untrusted(p.name): p for p in getattr(response.prop, "required_properties", None) or []}
        data, cursor = props.get("data"), props.get("next_cursor")
        inner = getattr(data, "inner_property", None)
        if cursor is not None and inner is not None and hasattr(inner, "class_info"):
            return str(inner.class_info.name), str(inner.class_info.module_name)
    return None


def _template_globals(spec: dict[str, Any]) -> Any:
    extensions = operation_extensions(spec)

    def hangar(endpoint: Any) -> dict[str, Any]:
        ext = dict(extensions[_route(endpoint.method, _untrusted(endpoint.path))])
        key_params = [p for p in endpoint.header_parameters if _untrusted(p.name).lower() == "idempotency-key"]
        if ext["idempotent"] and not key_params:
            raise ValueError(f"{ext['operation_id']}: x-idempotency but no Idempotency-Key header parameter")
        ext["key_arg"] = key_params[0].python_name if key_params else None
        item = _page_item(endpoint)
        query = {p.name for p in endpoint.query_parameters}
        ext["paginated"] = item is not None and "cursor" in query
        ext["item_class"], ext["item_module"] = item or (None, None)
        return ext

    return hangar


def _generate_into(spec_path: Path, spec: dict[str, Any], project_dir: Path) -> None:
    # Imported here: the generator takes ~0.4 s to import and a no-op `codegen.py generate`
    # must not pay for it.
    from openapi_python_client import MetaType, Project
    from openapi_python_client.config import Config, ConfigFile
    from openapi_python_client.parser import GeneratorData
    from openapi_python_client.parser.errors import GeneratorError

    config = Config.from_sources(
        ConfigFile.load_from_path(TEMPLATES / "config.yaml"),
        MetaType.SETUP,
        spec_path,
        "utf-8",
        overwrite=True,
        output_path=project_dir,
    )

    class HangarProject(Project):
        def _build_metadata(self) -> None:
            # Our own PEP 621 pyproject.toml (setuptools) and README instead of setup.py.
            for name in ("pyproject.toml", "README.md"):
                text = self.env.get_template(f"{name}.jinja").render()
                (self.project_dir / name).write_text(text, encoding="utf-8")

        def _build_api(self) -> None:
            super()._build_api()
            for name in EXTRA_MODULES:
                text = self.env.get_template(f"{name}.jinja").render()
                (self.package_dir / name).write_text(text, encoding="utf-8")

    openapi = GeneratorData.from_dict(spec, config=config)
    if isinstance(openapi, GeneratorError):
        raise RuntimeError(f"openapi-python-client: {openapi.header}: {openapi.detail}")
    project = HangarProject(openapi=openapi, config=config, custom_template_path=TEMPLATES)
    project.env.globals["hangar"] = _template_globals(spec)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Generating <dir>"
        errors = project.build()
    if errors:
        # A warning here means an operation or schema was skipped: the SDK (and the CLI on
        # top of it) would silently miss it, so every finding fails the stage.
        lines = [f"{e.level.value}: {e.header}: {e.detail}" for e in errors]
        raise RuntimeError("openapi-python-client reported:\n  " + "\n  ".join(lines))


def ruff_format(tree: Path, config: Path) -> None:
    """Fix (imports, unused names, modern typing) then format every .py file under `tree`."""
    from ruff.__main__ import find_ruff_bin

    ruff = str(find_ruff_bin())
    common = ["--no-cache", "--config", str(config), "--quiet"]
    # Fixed argv: our own venv's ruff on a directory we just wrote.
    subprocess.run([ruff, "check", "--fix-only", "--exit-zero", *common, str(tree)], check=True)  # noqa: S603
    subprocess.run([ruff, "format", *common, str(tree)], check=True)  # noqa: S603


def add_headers(tree: Path) -> None:
    """Put the generated-code header on the first line of every file under `tree`."""
    for path in sorted(tree.rglob("*")):
        if not path.is_file():
            continue
        # Markdown takes an HTML comment; .py, .toml and py.typed take `#`.
        line = f"<!-- {HEADER} -->\n\n" if path.suffix == ".md" else f"# {HEADER}\n"
        text = path.read_text(encoding="utf-8")
        if path.name == "py.typed":
            text = ""  # the PEP 561 marker's content is free; the header is enough
        path.write_text(line + text, encoding="utf-8")


def sync_tree(source: Path, dest: Path, keep: tuple[str, ...] = (".egg-info", "__pycache__")) -> None:
    """Make `dest` hold exactly `source`'s files, rewriting only what changed.

    Directories whose name ends with a `keep` suffix (pip's egg-info, bytecode) are left alone.
    """
    wanted = {p.relative_to(source) for p in source.rglob("*") if p.is_file()}
    for rel in sorted(wanted):
        write_text(dest / rel, (source / rel).read_text(encoding="utf-8"))
    if not dest.exists():
        return
    for path in sorted(dest.rglob("*"), reverse=True):  # children before their directories
        rel = path.relative_to(dest)
        if any(part.endswith(keep) for part in rel.parts):
            continue
        if path.is_file() and rel not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def render_sdk(spec_path: Path, project_dir: Path) -> None:
    """Generate, format and head the SDK project into the empty directory `project_dir`."""
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    _generate_into(spec_path, spec, project_dir)
    ruff_format(project_dir, TEMPLATES / "ruff.toml")
    add_headers(project_dir)


def run(out_root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="hangar-sdk-") as tmp:
        staging = Path(tmp) / "sdk"
        render_sdk(out_root / "openapi.json", staging)
        sync_tree(staging, out_root / "sdk")


def sdk_function(operation_id: str, tag: str) -> str:
    """The dotted SDK module of an operation, named the way openapi-python-client names it."""
    from openapi_python_client.strings import PythonIdentifier

    return f"{PACKAGE}.api.{PythonIdentifier(tag, 'tag')}.{PythonIdentifier(operation_id, 'field_')}"


def _tool_versions() -> str:
    return f"openapi-python-client=={version('openapi-python-client')};ruff=={version('ruff')}"


STAGE = Stage(
    name="sdk",
    inputs=("generated/openapi.json", "pipeline/sdk.py", "templates/sdk/*"),
    outputs=("sdk",),
    run=run,
    salt=_tool_versions(),
    after=("openapi-bundle",),
)
