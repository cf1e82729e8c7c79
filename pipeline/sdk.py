"""Stage: generated/openapi.json → generated/sdk/ (the `hangar-client` project).

openapi-python-client 0.29.1 runs in-process (its Python API, not its CLI: no second
interpreter start-up), with the settings in templates/sdk/config.yaml and the custom templates
beside it. Hangar's additions, all generated from templates/sdk/:
- retry.py: retries, and an Idempotency-Key per logical call for `x-idempotency` operations;
- pagination.py + `sync_all`/`asyncio_all` on list operations: walk every page;
- errors.ApiError; our own pyproject.toml (setuptools, PEP 621) and README.md;
- waiters.py, from the `x-waiter` extension (below), with errors.WaitFailed / WaitTimeout.

`x-waiter` makes a GET operation pollable:

    x-waiter: {field: status, targets: [succeeded], failure: [failed],
               progress: progress, error: error, wait_param: actionId}

`field` is an enum property of the (named, $ref'd) 2xx response schema; `targets` are the
enum values a caller may wait for (the first is the default), `failure` the values that end
the wait in failure; `progress` (optional) an integer 0..100 property shown while waiting;
`error` (optional) an object property with `code` and `message`, reported on failure;
`busy` (optional) a boolean property that is true while something is still changing the
resource: when it is false and the field is not the target, nothing will move it there (an
instance that is `stopped` with no action running never becomes `running`), so the wait
fails at once instead of running into its timeout;
`wait_param` the path parameter naming the resource (the operation's only parameter). The
operation is named get<Thing>: getAction gets `wait_for_action(client, action_id, *, …)`
and `wait_for_action_async`; with several targets the field's name is a keyword
(`wait_for_instance(client, instance_id, *, state="running", …)`). `waiters()` validates
all of this and raises WaiterSpecError naming the operation; the CLI stage reuses it for
`hangar <tag> wait` and `--wait` (pipeline/cli.py).

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
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

from pipeline.stages import HEADER, ROOT, Stage, write_text

TEMPLATES = ROOT / "templates" / "sdk"
PACKAGE = "hangar_client"
# Files rendered from templates/sdk/ into the package, beside what the generator writes.
EXTRA_MODULES = ("retry.py", "pagination.py", "waiters.py")
SAFE_METHODS = frozenset({"get", "head", "options"})
WAITER_KEYS = frozenset({"field", "targets", "failure", "progress", "error", "busy", "wait_param"})
# The waiter functions' own keywords; a target keyword (the field's name) may not be one of them.
WAITER_ARGS = frozenset({"client", "timeout", "interval", "max_interval", "on_update"})


class WaiterSpecError(ValueError):
    """An `x-waiter` that cannot be generated; the message starts with the operationId."""


def resolve(spec: dict[str, Any], node: Any, error: type[ValueError] = WaiterSpecError) -> Any:
    """Follow local $refs, and single-element allOf wrappers (`allOf: [{$ref}]` + description)."""
    seen = 0
    while isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise error(f"only local $refs are supported: {ref}")
            target: Any = spec
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            extra = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **extra}
        elif isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            extra = {k: v for k, v in node.items() if k != "allOf"}
            node = {**resolve(spec, node["allOf"][0], error), **extra}
        else:
            return node
        seen += 1
        if seen > 50:
            raise error("$ref cycle")
    return node


def success_schema(op: dict[str, Any]) -> tuple[list[str], Any]:
    """(the 2xx status codes, the JSON schema of the first one or None)."""
    codes = sorted(code for code in op.get("responses", {}) if code.startswith("2"))
    if not codes:
        return codes, None
    media = (op["responses"][codes[0]].get("content") or {}).get("application/json")
    return codes, (media or {}).get("schema")


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


# --- x-waiter ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiter:
    """One operation's validated `x-waiter`."""

    operation_id: str  # "getAction"
    method: str
    path: str
    noun: str  # "action": the operationId minus `get`, in words (progress lines, messages)
    function: str  # "wait_for_action" (and "wait_for_action_async")
    field: str  # the watched response field ("status")
    targets: tuple[str, ...]  # values one may wait for; the first is the default
    failure: tuple[str, ...]  # values that end the wait in failure
    progress: str | None  # an integer 0..100 response field
    error: str | None  # an object response field with `code` and `message`
    busy: str | None  # a boolean response field: false = nothing will change the field any more
    wait_param: str  # the path parameter naming the resource ("actionId")
    model: str  # the response schema's component name ("Action")

    @property
    def target_arg(self) -> str | None:
        """The keyword choosing the target (the field's Python name), when there is a choice."""
        from openapi_python_client.strings import PythonIdentifier

        return str(PythonIdentifier(self.field, "field_")) if len(self.targets) > 1 else None


def _enum_values(values: Any, allowed: list[Any], what: str, fail: Callable[[str], NoReturn]) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        fail(f"`{what}` must be a list of strings")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        fail(f"`{what}` has {', '.join(unknown)}, not among the field's values ({', '.join(map(str, allowed))})")
    if len(set(values)) != len(values):
        fail(f"`{what}` repeats a value")
    return tuple(values)


def _waiter(spec: dict[str, Any], path: str, method: str, op: dict[str, Any]) -> Waiter:
    from openapi_python_client.strings import PythonIdentifier

    op_id = op["operationId"]

    def fail(message: str) -> NoReturn:
        raise WaiterSpecError(f"{op_id}: x-waiter {message}")

    raw = op["x-waiter"]
    if not isinstance(raw, dict):
        fail("must be a mapping")
    if set(raw) - WAITER_KEYS:
        fail(f"has unknown key(s) {', '.join(sorted(set(raw) - WAITER_KEYS))}; known: {', '.join(sorted(WAITER_KEYS))}")
    if {"field", "targets", "wait_param"} - set(raw):
        fail(f"lacks {', '.join(sorted({'field', 'targets', 'wait_param'} - set(raw)))}")
    thing = re.fullmatch(r"get([A-Z]\w*)", op_id)
    if method != "get" or thing is None:
        fail("belongs on a GET operation named get<Thing> (the waiter is named after <Thing>)")

    params = [resolve(spec, p) for p in [*spec["paths"][path].get("parameters", []), *op.get("parameters", [])]]
    wait_param = raw["wait_param"]
    if not any(p.get("in") == "path" and p.get("name") == wait_param for p in params):
        fail(f"wait_param `{wait_param}` is not a path parameter of the operation")
    others = sorted(p["name"] for p in params if p.get("name") != wait_param and p.get("required"))
    if others:
        fail(f"wait_param must be the only required parameter; the operation also requires {', '.join(others)}")

    codes, schema = success_schema(op)
    name = schema.get("$ref", "").rsplit("/", 1)[-1] if isinstance(schema, dict) else ""
    if len(codes) != 1 or not name:
        fail("needs one 2xx response whose JSON schema is a $ref to a named schema")
    props = resolve(spec, schema).get("properties", {})

    field = raw["field"]
    if field not in props:
        fail(f"field `{field}` is not a property of {name}")
    enum = resolve(spec, props[field]).get("enum")
    if not enum:
        fail(f"field `{field}` of {name} is not an enum")
    targets = _enum_values(raw["targets"], enum, "targets", fail)
    failure = _enum_values(raw.get("failure", []), enum, "failure", fail)
    if not targets:
        fail("`targets` is empty")
    if set(targets) & set(failure):
        fail(f"{', '.join(sorted(set(targets) & set(failure)))} is both a target and a failure")

    progress, error = raw.get("progress"), raw.get("error")
    if progress is not None and (progress not in props or resolve(spec, props[progress]).get("type") != "integer"):
        fail(f"progress `{progress}` is not an integer property of {name}")
    if error is not None:
        error_props = resolve(spec, props[error]).get("properties", {}) if error in props else {}
        if not {"code", "message"} <= set(error_props):
            fail(f"error `{error}` is not a property of {name} with `code` and `message`")

    busy = raw.get("busy")
    if busy is not None and (busy not in props or resolve(spec, props[busy]).get("type") != "boolean"):
        fail(f"busy `{busy}` is not a boolean property of {name}")

    noun = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", thing.group(1)).lower()
    waiter = Waiter(
        operation_id=op_id,
        method=method,
        path=path,
        noun=noun,
        function=f"wait_for_{PythonIdentifier(thing.group(1), 'field_')}",
        field=field,
        targets=targets,
        failure=failure,
        progress=progress,
        error=error,
        busy=busy,
        wait_param=wait_param,
        model=name,
    )
    taken = WAITER_ARGS | {str(PythonIdentifier(wait_param, "field_"))}
    if waiter.target_arg in taken:
        fail(f"field `{field}` would be the keyword `{waiter.target_arg}`, which the waiter already has")
    return waiter


def waiters(spec: dict[str, Any]) -> list[Waiter]:
    """Every operation's `x-waiter`, validated, by operationId; WaiterSpecError names the operation."""
    found: list[Waiter] = []
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if isinstance(op, dict) and "x-waiter" in op:
                found.append(_waiter(spec, path, method, op))
    found.sort(key=lambda w: w.operation_id)
    functions: dict[str, str] = {}
    for waiter in found:
        if waiter.function in functions:
            raise WaiterSpecError(
                f"{waiter.operation_id}: x-waiter would be {waiter.function}, as {functions[waiter.function]}'s is"
            )
        functions[waiter.function] = waiter.operation_id
    return found


@dataclass(frozen=True)
class WaiterCode:
    """What templates/sdk/waiters.py.jinja needs to emit one waiter (from the generator's data)."""

    waiter: Waiter
    tag_module: str  # "actions": the package under api/
    endpoint: str  # "get_action": the endpoint module
    param: str  # "action_id"
    param_type: str  # "UUID"
    imports: tuple[str, ...]  # what param_type needs
    client_type: str  # "AuthenticatedClient" for a secured operation, as the endpoint module has it
    model: str  # "Action"
    model_module: str  # "action"
    constant: str  # "_ACTION": the module-level description of what is watched
    watch: str  # the _Watch(...) arguments, as Python source


def _waiter_code(waiter: Waiter, openapi: Any) -> WaiterCode:
    for tag, collection in sorted(openapi.endpoint_collections_by_tag.items()):
        for endpoint in collection.endpoints:
            if _route(endpoint.method, _untrusted(endpoint.path)) != _route(waiter.method, waiter.path):
                continue
            param = next(p for p in endpoint.path_parameters if _untrusted(p.name) == waiter.wait_param)
            model = next(
                r.prop.class_info
                for r in endpoint.responses.patterns
                if 200 <= r.status_code.range[0] < 300 and hasattr(r.prop, "class_info")
            )
            constant = "_" + waiter.function.removeprefix("wait_for_").upper()
            watch = (
                f"noun={waiter.noun!r}, model={model.name}, field={waiter.field!r}, targets={waiter.targets!r}, "
                f"failure={waiter.failure!r}, progress={waiter.progress!r}, error={waiter.error!r}, busy={waiter.busy!r}"
            )
            return WaiterCode(
                waiter=waiter,
                tag_module=str(tag),
                endpoint=str(endpoint.name),
                param=str(param.python_name),
                param_type=param.get_type_string().as_unembedded_code(),
                imports=tuple(sorted(param.get_imports(prefix="."))),
                client_type="AuthenticatedClient" if endpoint.requires_security else "AuthenticatedClient | Client",
                model=str(model.name),
                model_module=str(model.module_name),
                constant=constant,
                watch=watch,
            )
    raise WaiterSpecError(f"{waiter.operation_id}: x-waiter: the generator made no endpoint for it")


# --- the generator's templates ----------------------------------------------------------------------


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
    project.env.globals["hangar_waiters"] = [_waiter_code(w, openapi) for w in waiters(spec)]
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
