"""Stage: generated/openapi.json → generated/cli/ (the `hangar-cli` project, command `hangar`).

The CLI is data-driven: this module turns every operation into a `Command` (its words, flags,
SDK function, body model, table columns, example body), and the jinja2 templates under
templates/cli/ render that table as `hangar_cli/commands.py` next to a small runtime
(argparse + rich) that calls the generated SDK. `hangar_cli/commands.json` maps every
operationId to its command line, for codegen's coverage table.

Naming (the linode-cli way, from the spec's `x-cli` extension):
- `hangar <tag> <command>`; the command is `x-cli.command`, else the operationId minus the
  tag's words (`listApiKeys` in `api-keys` → `list`). A tag with a single operation is a
  top-level command named by its `x-cli.command`, else after the tag (`hangar signup`,
  `hangar me`, `hangar accept-invitation`).
- path/query/header parameters and scalar body fields are flags (`apiKeyId` → `--api-key-id`);
  an array of scalars is a repeatable singular flag (`scopes` → `--scope`); enums are choices;
  `--body '<json>'` gives the whole body and the flags override its fields.
Two Hangar-specific behaviours are declared here, not guessed: which operations store
credentials in the CLI config (signup, accepting an invitation) and where a path parameter's default comes from
(`organizationId` → the configured organization, else `GET /v1/me`).
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline import sdk
from pipeline.stages import ROOT, Stage, json_text

TEMPLATES = ROOT / "templates" / "cli"
PACKAGE = "hangar_cli"
# Options every command has; an operation flag may not reuse them.
RESERVED_OPTIONS = frozenset({"--help", "--url", "--output", "--retries", "--body", "--max-items", "--version"})
# Operations whose response holds credentials the CLI keeps: config key → dotted response path.
CREDENTIAL_OPERATIONS: dict[str, dict[str, str]] = {
    "signUp": {"api_key": "secret", "organization_id": "organization.id"},
    "acceptInvitation": {"api_key": "secret", "organization_id": "organization.id"},
}
# Path parameters with a default: spec name → (config key, operationId to ask, dotted path in its response).
PARAMETER_DEFAULTS: dict[str, tuple[str, str, str]] = {
    "organizationId": ("organization_id", "getMe", "organization.id"),
}
SCALARS = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}


@dataclass(frozen=True)
class Flag:
    dest: str  # argparse dest: p_<param> or b_<body field>
    option: str  # "--api-key-id"
    location: str  # "path" | "query" | "header" | "body"
    name: str  # the name in the spec ("apiKeyId", "scopes", "Idempotency-Key")
    sdk_arg: str | None  # the SDK function's keyword (parameters only)
    kind: str  # "str" | "int" | "float" | "bool" | "uuid"
    repeated: bool = False
    choices: tuple[str, ...] = ()
    required: bool = False  # argparse-level: a parameter with no default
    default: Any = None  # the spec's default, shown in help (the SDK applies it)
    config_default: str | None = None  # config key that supplies the default
    secret: bool = False  # `format: password`: prompted for on a terminal, never echoed
    help: str = ""


@dataclass(frozen=True)
class Command:
    operation_id: str
    words: tuple[str, ...]
    summary: str
    description: str
    method: str
    path: str
    sdk_module: str
    body_class: str | None
    body_required: tuple[str, ...]
    public: bool
    idempotent: bool
    paginated: bool
    returns_body: bool
    columns: tuple[str, ...]
    secret_field: str | None
    saves: tuple[tuple[str, str], ...]
    flags: tuple[Flag, ...] = field(default=())
    epilog: str = ""


class CliSpecError(ValueError):
    """The spec cannot be turned into a CLI (a name collision, an unknown reference…)."""


# --- reading the spec -------------------------------------------------------------------


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow local $refs, and single-element allOf wrappers (`allOf: [{$ref}]` + description)."""
    seen = 0
    while isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise CliSpecError(f"only local $refs are supported: {ref}")
            target: Any = spec
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            extra = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **extra}
        elif isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            extra = {k: v for k, v in node.items() if k != "allOf"}
            node = {**_resolve(spec, node["allOf"][0]), **extra}
        else:
            return node
        seen += 1
        if seen > 50:
            raise CliSpecError("$ref cycle")
    return node


def _ref_name(node: Any) -> str | None:
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        return node["$ref"].rsplit("/", 1)[-1]
    return None


def kebab(name: str) -> str:
    """`apiKeyId` → `api-key-id`, `billing_email` → `billing-email`, `Idempotency-Key` → `idempotency-key`."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def words(name: str) -> list[str]:
    return kebab(name).split("-")


def singular(name: str) -> str:
    """The flag for one element of an array field: `scopes` → `scope`, `policies` → `policy`."""
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith(("sses", "xes", "ches", "shes")):
        return name[:-2]
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


def example_value(spec: dict[str, Any], schema: Any, depth: int = 0) -> Any:
    """An example for a schema, from its `example`s (enum: first value; object: its properties)."""
    node = _resolve(spec, schema)
    if not isinstance(node, dict) or depth > 8:
        return None
    if "example" in node:
        return node["example"]
    if node.get("enum"):
        return node["enum"][0]
    kind = node.get("type")
    if kind == "array":
        item = example_value(spec, node.get("items", {}), depth + 1)
        return [] if item is None else [item]
    if kind == "object" or "properties" in node:
        return {
            name: example_value(spec, prop, depth + 1)
            for name, prop in node.get("properties", {}).items()
            if not _resolve(spec, prop).get("readOnly")
        }
    if "default" in node:
        return node["default"]
    return {"string": "string", "integer": 0, "number": 0, "boolean": False}.get(str(kind))


def _scalar(spec: dict[str, Any], schema: Any) -> tuple[str, tuple[str, ...]] | None:
    """(kind, choices) when a schema is a scalar a flag can carry, else None."""
    node = _resolve(spec, schema)
    kind = SCALARS.get(node.get("type", ""))
    if kind is None:
        return None
    if kind == "str" and node.get("format") == "uuid":
        kind = "uuid"
    choices = tuple(str(v) for v in node.get("enum", ()))
    return kind, choices


def _help(node: dict[str, Any]) -> str:
    return " ".join(str(node.get("description", "")).split())


# --- operations → commands ----------------------------------------------------------------


def _command_words(op: dict[str, Any], tag: str, single: bool) -> tuple[str, ...]:
    cli = op.get("x-cli") or {}
    if single:
        return (str(cli.get("command") or tag),)
    if cli.get("command"):
        return (tag, str(cli["command"]))
    tag_words = set(words(tag)) | {singular(w) for w in words(tag)}
    rest = [w for w in words(op["operationId"]) if w not in tag_words]
    return (tag, "-".join(rest) or kebab(op["operationId"]))


def _parameter_flags(spec: dict[str, Any], params: list[Any]) -> list[Flag]:
    from openapi_python_client.strings import PythonIdentifier

    flags: list[Flag] = []
    for raw in params:
        param = _resolve(spec, raw)
        location, name = param["in"], param["name"]
        if location == "cookie":
            raise CliSpecError(f"cookie parameter {name} has no CLI flag")
        scalar = _scalar(spec, param.get("schema", {}))
        if scalar is None:
            raise CliSpecError(f"parameter {name} is not a scalar")
        kind, choices = scalar
        schema = _resolve(spec, param.get("schema", {}))
        default = PARAMETER_DEFAULTS.get(name)
        flags.append(
            Flag(
                dest=f"p_{PythonIdentifier(name, 'field_')}",
                option=f"--{kebab(name)}",
                location=location,
                name=name,
                sdk_arg=str(PythonIdentifier(name, "field_")),
                kind=kind,
                choices=choices,
                required=bool(param.get("required")) and default is None,
                default=schema.get("default"),
                config_default=default[0] if default else None,
                help=_help(param),
            )
        )
    return flags


def _body_flags(spec: dict[str, Any], body: dict[str, Any]) -> list[Flag]:
    flags: list[Flag] = []
    required = set(body.get("required", ()))
    for name, raw in body.get("properties", {}).items():
        prop = _resolve(spec, raw)
        if prop.get("readOnly"):
            continue
        scalar = _scalar(spec, prop)
        repeated = False
        if scalar is None and prop.get("type") == "array":
            scalar, repeated = _scalar(spec, prop.get("items", {})), True
        if scalar is None:
            continue  # objects and arrays of objects: only through --body
        kind, choices = scalar
        text = _help(prop)
        if name in required:
            text = f"{text} (required)".strip()
        if repeated:
            text = f"{text} Repeat the flag for several values.".strip()
        flags.append(
            Flag(
                dest=f"b_{kebab(name).replace('-', '_')}",
                option=f"--{kebab(singular(name) if repeated else name)}",
                location="body",
                name=name,
                sdk_arg=None,
                kind=kind,
                repeated=repeated,
                choices=choices,
                secret=prop.get("format") == "password",
                help=text,
            )
        )
    return flags


def _success(op: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    codes = sorted(code for code in op.get("responses", {}) if code.startswith("2"))
    if len(codes) != 1:
        raise CliSpecError(f"{op['operationId']}: expected one 2xx response, found {codes}")
    response = op["responses"][codes[0]]
    media = (response.get("content") or {}).get("application/json")
    return codes[0], (media or {}).get("schema")


def _paginated(spec: dict[str, Any], schema: Any, params: list[Flag]) -> bool:
    node = _resolve(spec, schema) if schema else {}
    props = node.get("properties", {})
    names = {f.name for f in params if f.location == "query"}
    return "data" in props and "next_cursor" in props and {"cursor", "limit"} <= names


def _has_path(spec: dict[str, Any], schema: Any, dotted: str) -> bool:
    node = _resolve(spec, schema)
    for part in dotted.split("."):
        props = node.get("properties", {}) if isinstance(node, dict) else {}
        if part not in props:
            return False
        node = _resolve(spec, props[part])
    return True


def _example_line(command: Command, spec: dict[str, Any], body_example: dict[str, Any]) -> str:
    parts = ["hangar", *command.words]
    for flag in command.flags:
        if flag.location == "body":
            if flag.name not in command.body_required:
                continue
            value = body_example.get(flag.name)
            values = value if isinstance(value, list) else [value]
            for item in values[:1] if flag.repeated else values:
                parts += [flag.option] if flag.kind == "bool" else [flag.option, str(item)]
        elif flag.required:
            parts += [flag.option, str(_param_example(spec, command, flag))]
    return " ".join(shlex.quote(p) for p in parts)


def _param_example(spec: dict[str, Any], command: Command, flag: Flag) -> Any:
    op = spec["paths"][command.path][command.method]
    for raw in [*spec["paths"][command.path].get("parameters", []), *op.get("parameters", [])]:
        param = _resolve(spec, raw)
        if param["name"] == flag.name:
            return param.get("example", example_value(spec, param.get("schema", {})))
    return flag.name


def _epilog(spec: dict[str, Any], command: Command, body_schema: Any) -> str:
    body_example = example_value(spec, body_schema) if body_schema is not None else None
    lines = ["example:", f"  {_example_line(command, spec, body_example or {})}"]
    if body_example is not None:
        lines += [
            "",
            "example body (--body takes JSON, @FILE or - for stdin; flags override its fields):",
            *(f"  {line}" for line in json.dumps(body_example, indent=2, ensure_ascii=False).splitlines()),
        ]
    if command.paginated:
        lines += [
            "",
            "Every page is fetched (following next_cursor): --limit sets the page size,",
            "--max-items N stops after N items, --cursor starts from a given page.",
        ]
    if command.idempotent:
        lines += [
            "",
            "Safe to retry: a fresh Idempotency-Key is sent (and reused on retries) unless",
            "--idempotency-key is given; replaying a key returns the first response.",
        ]
    for flag in command.flags:
        if flag.config_default:
            lines += ["", f"{flag.option} defaults to the configured {flag.config_default}."]
    return "\n".join(lines)


def build_commands(spec: dict[str, Any]) -> list[Command]:
    """Every operation as a Command, sorted by command words; raises CliSpecError on collisions."""
    ops: list[tuple[str, str, dict[str, Any]]] = []
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if isinstance(op, dict) and "operationId" in op:
                ops.append((path, method, op))
    per_tag: dict[str, int] = {}
    for _path, _method, op in ops:
        tag = (op.get("tags") or ["default"])[0]
        per_tag[tag] = per_tag.get(tag, 0) + 1

    commands: list[Command] = []
    for path, method, op in ops:
        tag = (op.get("tags") or ["default"])[0]
        op_id = op["operationId"]
        raw_params = [*spec["paths"][path].get("parameters", []), *op.get("parameters", [])]
        flags = _parameter_flags(spec, raw_params)
        body_class, body_required, body_schema = None, (), None
        content = ((op.get("requestBody") or {}).get("content") or {}).get("application/json")
        if content:
            body_schema = content["schema"]
            body_class = _ref_name(body_schema)
            if body_class is None:
                raise CliSpecError(f"{op_id}: the request body must be a $ref to a named schema")
            body = _resolve(spec, body_schema)
            body_required = tuple(body.get("required", ()))
            flags += _body_flags(spec, body)
        status, response_schema = _success(op)
        cli = op.get("x-cli") or {}
        saves = CREDENTIAL_OPERATIONS.get(op_id, {})
        for key, dotted in saves.items():
            if response_schema is None or not _has_path(spec, response_schema, dotted):
                raise CliSpecError(f"{op_id}: stores {key} from `{dotted}`, which its response lacks")
        for column in cli.get("columns", ()):
            node = response_schema
            if node is not None and _paginated(spec, node, flags):
                node = _resolve(spec, node)["properties"]["data"]["items"]
            if node is None or not _has_path(spec, node, column):
                raise CliSpecError(f"{op_id}: x-cli column `{column}` is not in the response")
        options = [f.option for f in flags]
        clashes = sorted({o for o in options if options.count(o) > 1} | (set(options) & RESERVED_OPTIONS))
        if clashes:
            raise CliSpecError(f"{op_id}: flags collide: {', '.join(clashes)}")
        from openapi_python_client.strings import ClassName

        command = Command(
            operation_id=op_id,
            words=_command_words(op, tag, per_tag[tag] == 1),
            summary=str(op.get("summary", "")).strip(),
            description=str(op.get("description", "")).strip(),
            method=method,
            path=path,
            sdk_module=sdk.sdk_function(op_id, tag),
            body_class=str(ClassName(body_class, "")) if body_class else None,
            body_required=body_required,
            public=op.get("security") == [],
            idempotent=bool(op.get("x-idempotency")),
            paginated=_paginated(spec, response_schema, flags) if response_schema else False,
            returns_body=response_schema is not None and status != "204",
            columns=tuple(cli.get("columns", ())),
            secret_field="secret" if response_schema and _has_path(spec, response_schema, "secret") else None,
            saves=tuple(sorted(saves.items())),
            flags=tuple(flags),
        )
        commands.append(replace(command, epilog=_epilog(spec, command, body_schema)))
    commands.sort(key=lambda c: c.words)
    seen: dict[tuple[str, ...], str] = {}
    for command in commands:
        if command.words in seen:
            raise CliSpecError(
                f"{command.operation_id} and {seen[command.words]} are both `hangar {' '.join(command.words)}`"
            )
        seen[command.words] = command.operation_id
    for name, (_key, source, _dotted) in PARAMETER_DEFAULTS.items():
        if any(f.name == name for c in commands for f in c.flags) and source not in {c.operation_id for c in commands}:
            raise CliSpecError(f"the default of {name} comes from {source}, which the spec lacks")
    return commands


def command_map(commands: list[Command]) -> dict[str, str]:
    """{operationId: "hangar api-keys list"}, sorted: the coverage table's CLI column."""
    return {c.operation_id: " ".join(("hangar", *c.words)) for c in sorted(commands, key=lambda c: c.operation_id)}


def groups(spec: dict[str, Any], commands: list[Command]) -> list[tuple[str, str]]:
    """(tag, description) for every tag that is a command group (more than one operation)."""
    described = {t["name"]: " ".join(str(t.get("description", "")).split()) for t in spec.get("tags", [])}
    names = sorted({c.words[0] for c in commands if len(c.words) > 1})
    return [(name, described.get(name, "")) for name in names]


# --- rendering ------------------------------------------------------------------------------


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders Python and TOML, never HTML
    )
    env.filters["py"] = _py
    return env


def _py(value: Any) -> str:
    """A Python literal for a value (tuples stay tuples; ruff normalises the quotes)."""
    return repr(value)


def render_cli(spec: dict[str, Any], project_dir: Path) -> None:
    """Render the CLI project into the empty directory `project_dir`."""
    commands = build_commands(spec)
    env = _environment()
    context = {
        "commands": commands,
        "groups": tuple(groups(spec, commands)),
        "title": spec["info"]["title"],
        "version": spec["info"]["version"],
        "package": PACKAGE,
        "parameter_defaults": PARAMETER_DEFAULTS,
        "flag_fields": [f.name for f in Flag.__dataclass_fields__.values()],
        "command_fields": [f.name for f in Command.__dataclass_fields__.values() if f.name != "flags"],
    }
    # templates/cli/<path>.jinja → <project>/<path>: the layout of the tree is the layout of the project.
    for template in sorted(TEMPLATES.rglob("*.jinja")):
        rel = template.relative_to(TEMPLATES)
        target = project_dir / rel.with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.get_template(rel.as_posix()).render(**context), encoding="utf-8")
    package = project_dir / PACKAGE
    (package / "py.typed").write_text("", encoding="utf-8")
    sdk.ruff_format(project_dir, TEMPLATES / "ruff.toml")
    sdk.add_headers(project_dir)
    # {operationId: command} for codegen's coverage table, headed by the `x-generated` key.
    (package / "commands.json").write_text(json_text(command_map(commands)), encoding="utf-8")


def run(out_root: Path) -> None:
    spec = json.loads((out_root / "openapi.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="hangar-cli-") as tmp:
        staging = Path(tmp) / "cli"
        render_cli(spec, staging)
        sdk.sync_tree(staging, out_root / "cli")


STAGE = Stage(
    name="cli",
    inputs=("generated/openapi.json", "pipeline/cli.py", "pipeline/sdk.py", "templates/cli/**/*"),
    outputs=("cli",),
    run=run,
    salt=sdk.STAGE.salt,
    after=("openapi-bundle", "sdk"),
)
