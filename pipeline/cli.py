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
- `x-cli-money: true` on an integer body field in minor units makes its flag take a decimal
  amount with at most 2 decimals (`--amount 50.00` sends 5000; `50.001`, `-1`, `abc` are usage
  errors, exit 2); anything but `true`, or on a non-integer field, is a CliSpecError.
Two Hangar-specific behaviours are declared here, not guessed: which operations store
credentials in the CLI config (signup, accepting an invitation) and where a path parameter's default comes from
(`organizationId` → the configured organization, else `GET /v1/me`).

Waiting and verbs, from the spec (validated here; a bad value is a CliSpecError or, for
`x-waiter` itself, sdk.WaiterSpecError, naming the operation):
- an operation with `x-waiter` (see pipeline/sdk.py) also gets `hangar <tag> wait ID`: it
  polls the operation until the watched field reaches `--<field>` (choices: the targets; the
  default when there is only one) or `--timeout` seconds pass, showing progress on stderr,
  then prints the resource like `get`; exit 1 on a failure value or a timeout;
- `x-cli.wait: {operationId: getAction, parameters: {actionId: '$response.body#/action/id'}}`
  gives a command `--wait` (and `--timeout`): after the call, each parameter of the named
  operation (which must have an `x-waiter` with a single target) is read from the response
  by its runtime expression (`$response.body#<JSON pointer>`, checked against the response
  schema), the waiter runs, and the awaited resource (the action) is printed instead of the
  call's own answer;
- `x-cli.verbs: {field: type}` on an operation whose JSON body has the string enum `type`
  makes one command per enum value instead of one command for the operation
  (`hangar instances stop|start|reboot ID`), each sending `{"type": "<verb>"}`; the
  body's other fields are flags as usual (and `--body` stays only if there are any). The
  operation's `x-cli.command` is then unused; a verb equal to another command's name is an
  error. commands.json lists every command of an operation, comma-separated
  (`hangar instances reboot, hangar instances start, hangar instances stop`;
  `hangar actions get, hangar actions wait`).
"""

from __future__ import annotations

import json
import re
import shlex
import tempfile
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline import sdk
from pipeline.stages import ROOT, Stage, json_text

TEMPLATES = ROOT / "templates" / "cli"
PACKAGE = "hangar_cli"
# Options every command has; an operation flag may not reuse them.
RESERVED_OPTIONS = frozenset({"--help", "--url", "--output", "--retries", "--body", "--max-items", "--version"})
# Options of the commands that wait (`<tag> wait`, and those with x-cli.wait).
WAIT_OPTIONS = frozenset({"--wait", "--timeout"})
# The fields of sdk.Waiter the CLI runtime needs (hangar_cli.model.Waiter).
WAITER_FIELDS = ("operation_id", "noun", "field", "targets", "failure", "progress", "error", "busy", "wait_param")
RUNTIME_EXPRESSION = re.compile(r"\$response\.body#(/.*)")
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
WAIT_TIMEOUT = 600  # seconds a wait lasts at most unless --timeout says otherwise


@dataclass(frozen=True)
class Flag:
    dest: str  # argparse dest: p_<param> or b_<body field>
    option: str  # "--api-key-id"
    location: str  # "path" | "query" | "header" | "body"
    name: str  # the name in the spec ("apiKeyId", "scopes", "Idempotency-Key")
    sdk_arg: str | None  # the SDK function's keyword (parameters only)
    kind: str  # "str" | "int" | "float" | "bool" | "uuid" | "date" | "money" (x-cli-money: decimal → cents)
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
    kind: str = "call"  # "call": one call of the operation; "wait": poll the operation's x-waiter
    verb: tuple[str, str] | None = None  # (body field, value) the command sends (x-cli.verbs)
    body_option: bool = True  # has --body when it has a body (not when a verb is the body's only field)
    waits_for: str | None = None  # "wait": the polled operation; "call": what --wait polls (x-cli.wait)
    wait_parameters: tuple[tuple[str, str], ...] = ()  # --wait: (parameter, JSON pointer into the response)
    stream: Stream | None = None  # kind "stream": the session the command attaches to (x-cli.stream)

    @property
    def line(self) -> str:
        return " ".join(("hangar", *self.words))


class CliSpecError(ValueError):
    """The spec cannot be turned into a CLI (a name collision, an unknown reference…)."""


# --- reading the spec -------------------------------------------------------------------


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow local $refs, and single-element allOf wrappers (`allOf: [{$ref}]` + description)."""
    return sdk.resolve(spec, node, CliSpecError)


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
    # The SDK takes `format: date` as datetime.date (it calls .isoformat()), so the flag parses it.
    if kind == "str" and node.get("format") == "date":
        kind = "date"
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
        kind = _money(prop, name, kind, repeated)
        text = _help(prop)
        if name in required:
            text = f"{text} (required)".strip()
        if kind == "money":
            text = f"{text} A decimal amount with at most 2 decimals (50, 50.00); sent in cents.".strip()
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


def _money(prop: dict[str, Any], name: str, kind: str, repeated: bool) -> str:
    """The flag kind of a body property: "money" with `x-cli-money: true` on an integer in minor
    units (cents), so `--amount 50.00` sends 5000; anything else is a CliSpecError."""
    money = prop.get("x-cli-money")
    if money is None:
        return kind
    if money is not True:
        raise CliSpecError(f"field `{name}`: x-cli-money must be true, not {money!r}")
    if kind != "int" or repeated:
        raise CliSpecError(f"field `{name}`: x-cli-money goes on an integer field in minor units (cents)")
    return "money"


def money_text(cents: Any) -> str:
    """5000 → "50.00": how an example amount in cents is written on a command line."""
    return f"{int(cents) // 100}.{int(cents) % 100:02d}" if isinstance(cents, int) and cents >= 0 else str(cents)


def _success(op: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    codes, schema = sdk.success_schema(op)
    if len(codes) != 1:
        raise CliSpecError(f"{op['operationId']}: expected one 2xx response, found {codes}")
    return codes[0], schema


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
                text = money_text(item) if flag.kind == "money" else str(item)
                parts += [flag.option] if flag.kind == "bool" else [flag.option, text]
        elif flag.required and flag.location == "path":
            parts.append(str(_param_example(spec, command, flag)))  # positional (templates/cli parser)
        elif flag.required:
            parts += [flag.option, str(_param_example(spec, command, flag))]
    if command.kind == "call" and command.waits_for:
        parts.append("--wait")
    return " ".join(shlex.quote(p) for p in parts)


def _param_example(spec: dict[str, Any], command: Command, flag: Flag) -> Any:
    if flag.location == "wait":
        return flag.choices[0]
    op = spec["paths"][command.path][command.method]
    for raw in [*spec["paths"][command.path].get("parameters", []), *op.get("parameters", [])]:
        param = _resolve(spec, raw)
        if param["name"] == flag.name:
            return param.get("example", example_value(spec, param.get("schema", {})))
    return flag.name


def _wait_lines(command: Command, waiter: sdk.Waiter | None) -> list[str]:
    """The epilog's paragraph on waiting (a `wait` command, or a command with --wait)."""
    if waiter is None:
        return []
    get = f"{waiter.operation_id} ({waiter.method.upper()} {waiter.path})"
    until = f"the {waiter.noun}'s {waiter.field} is " + (
        f"--{kebab(waiter.field)}" if len(waiter.targets) > 1 else waiter.targets[0]
    )
    failed = f"is {' or '.join(waiter.failure)}, " if waiter.failure else ""
    if command.kind == "wait":
        text = (
            f"Polls {get} until {until}, then prints it as `hangar {command.words[0]} get` would. "
            f"Progress goes to stderr. Exit status 0 when it is reached; 1 when the {waiter.field} "
            f"{failed}when --timeout passes (default {WAIT_TIMEOUT} s), or when a call fails."
        )
    else:
        text = (
            f"--wait: after the call, poll {get} until {until}, showing progress on stderr, and print "
            f"the {waiter.noun} instead of the call's answer. Exit status 1 when its {waiter.field} "
            f"{failed}or when --timeout passes (default {WAIT_TIMEOUT} s)."
        )
    return ["", *textwrap.wrap(text, 92, break_on_hyphens=False)]


def _epilog(spec: dict[str, Any], command: Command, body_schema: Any, waiter: sdk.Waiter | None = None) -> str:
    body_example = example_value(spec, body_schema) if body_schema is not None else None
    if isinstance(body_example, dict) and command.verb:
        body_example.pop(command.verb[0], None)  # the verb sets it
    lines = ["example:", f"  {_example_line(command, spec, body_example or {})}"]
    if body_example is not None and command.body_option:
        lines += [
            "",
            "example body (--body takes JSON, @FILE or - for stdin; flags override its fields):",
            *(f"  {line}" for line in json.dumps(body_example, indent=2, ensure_ascii=False).splitlines()),
        ]
    if command.verb:
        lines += ["", f"Sends {command.operation_id} with {command.verb[0]} {json.dumps(command.verb[1])}."]
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
    lines += _wait_lines(command, waiter)
    for flag in command.flags:
        if flag.config_default:
            lines += ["", f"{flag.option} defaults to the configured {flag.config_default}."]
    return "\n".join(lines)


def _verbs(spec: dict[str, Any], op: dict[str, Any], body_schema: Any) -> tuple[str, tuple[str, ...]] | None:
    """(body field, its values) for `x-cli.verbs: {field: <name>}`, validated; None without it."""
    verbs = (op.get("x-cli") or {}).get("verbs")
    if verbs is None:
        return None
    op_id = op["operationId"]
    if not isinstance(verbs, dict) or set(verbs) != {"field"} or not isinstance(verbs["field"], str):
        raise CliSpecError(f"{op_id}: x-cli.verbs must be {{field: <request body field>}}")
    if body_schema is None:
        raise CliSpecError(f"{op_id}: x-cli.verbs needs a JSON request body")
    name = verbs["field"]
    props = _resolve(spec, body_schema).get("properties", {})
    if name not in props:
        raise CliSpecError(f"{op_id}: x-cli.verbs field `{name}` is not in the request body")
    values = _resolve(spec, props[name]).get("enum")
    if not values or not all(isinstance(v, str) for v in values):
        raise CliSpecError(f"{op_id}: x-cli.verbs field `{name}` is not a string enum")
    names = [kebab(v) for v in values]
    if "" in names or len(set(names)) != len(names):
        raise CliSpecError(f"{op_id}: x-cli.verbs values {values} do not make distinct command names")
    return name, tuple(values)


def _verb_command(spec: dict[str, Any], base: Command, tag: str, body_schema: Any, verb: tuple[str, str]) -> Command:
    """`hangar <tag> <verb>`: the operation with the verb's field fixed (always in the tag's group)."""
    name, value = verb
    props = _resolve(spec, body_schema).get("properties", {})
    others = [n for n, p in props.items() if n != name and not _resolve(spec, p).get("readOnly")]
    noun = " ".join(words(singular(tag)))
    article = "an" if noun[:1] in "aeiou" else "a"
    return replace(
        base,
        words=(tag, kebab(value)),
        summary=f"{value.replace('-', ' ').capitalize()} {article} {noun}",
        flags=tuple(f for f in base.flags if not (f.location == "body" and f.name == name)),
        verb=verb,
        body_option=bool(others),
    )


def _pointer_schema(spec: dict[str, Any], schema: Any, pointer: str) -> Any:
    """The schema a JSON pointer (`/action/id`) reaches in instances of `schema`, else None."""
    node = schema
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        props = _resolve(spec, node).get("properties", {}) if node is not None else {}
        if part not in props:
            return None
        node = props[part]
    return node


def _wait_for(
    spec: dict[str, Any], op: dict[str, Any], response_schema: Any, waiters: dict[str, sdk.Waiter]
) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """(waiter operationId, ((parameter, JSON pointer), …)) for `x-cli.wait`, validated."""
    wait = (op.get("x-cli") or {}).get("wait")
    if wait is None:
        return None
    op_id = op["operationId"]

    def fail(message: str) -> CliSpecError:
        return CliSpecError(f"{op_id}: x-cli.wait {message}")

    if not isinstance(wait, dict) or set(wait) != {"operationId", "parameters"}:
        raise fail("must be {operationId: <an operation with x-waiter>, parameters: {<name>: <expression>}}")
    target = wait["operationId"]
    waiter = waiters.get(target)
    if waiter is None:
        raise fail(f"names {target}, which is not an operation with an x-waiter")
    if len(waiter.targets) != 1:
        raise fail(
            f"names {target}, whose x-waiter has several targets ({', '.join(waiter.targets)}); --wait needs one"
        )
    parameters = wait["parameters"]
    if not isinstance(parameters, dict) or set(parameters) != {waiter.wait_param}:
        raise fail(f"parameters must give exactly {target}'s {waiter.wait_param}")
    found: list[tuple[str, str]] = []
    for name, expression in sorted(parameters.items()):
        match = RUNTIME_EXPRESSION.fullmatch(expression) if isinstance(expression, str) else None
        if match is None:
            raise fail(f"parameter {name}: {expression!r} is not a `$response.body#/<JSON pointer>` expression")
        leaf = _pointer_schema(spec, response_schema, match.group(1))
        if leaf is None or _scalar(spec, leaf) is None:
            raise fail(f"parameter {name}: {expression} is not a scalar of the response")
        found.append((name, match.group(1)))
    return target, tuple(found)


def _wait_command(getter: Command, tag: str, waiter: sdk.Waiter) -> Command:
    """`hangar <tag> wait ID`: the getter's flags plus the target (`--state`)."""
    several = len(waiter.targets) > 1
    target = Flag(
        dest=f"w_{kebab(waiter.field).replace('-', '_')}",
        option=f"--{kebab(waiter.field)}",
        location="wait",
        name=waiter.field,
        sdk_arg=None,
        kind="str",
        choices=waiter.targets,
        required=several,
        default=None if several else waiter.targets[0],
        help=f"The {waiter.field} to wait for.",
    )
    shown = ", ".join(waiter.targets[:-1]) + " or " + waiter.targets[-1] if several else waiter.targets[0]
    return replace(
        getter,
        words=(tag, "wait"),
        summary=f"Wait until the {waiter.noun}'s {waiter.field} is {shown}",
        description="",
        flags=(*getter.flags, target),
        kind="wait",
        waits_for=waiter.operation_id,
        wait_parameters=(),
    )


def _check_options(command: Command) -> None:
    options = [f.option for f in command.flags]
    reserved = set(RESERVED_OPTIONS)
    if command.waits_for:
        reserved |= WAIT_OPTIONS
    clashes = sorted({o for o in options if options.count(o) > 1} | (set(options) & reserved))
    if clashes:
        raise CliSpecError(f"{_label(command)}: flags collide: {', '.join(clashes)}")


def _label(command: Command) -> str:
    if command.kind == "stream":
        return f"{command.operation_id} (x-cli.stream {command.words[-1]})"
    if command.verb:
        return f"{command.operation_id} (verb {command.verb[1]})"
    if command.kind == "wait":
        return f"{command.operation_id} (x-waiter)"
    return command.operation_id


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in spec.get("paths", {}).items()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    ]


def _body_schema(op: dict[str, Any]) -> Any:
    content = ((op.get("requestBody") or {}).get("content") or {}).get("application/json")
    return content["schema"] if content else None


def build_commands(spec: dict[str, Any], asyncapi_dir: Path | None = None) -> list[Command]:
    """Every command, sorted by its words: one per operation, one per verb of an operation
    with x-cli.verbs, a `wait` per x-waiter, and the stream commands of x-cli.stream (whose
    AsyncAPI documents are read from `asyncapi_dir`, default specs/asyncapi/). Raises
    CliSpecError (sdk.WaiterSpecError for a bad x-waiter) naming the operation, on collisions
    and bad extensions."""
    return list(_build(spec, asyncapi_dir or ASYNCAPI_DIR)[0])


def protocols(spec: dict[str, Any], asyncapi_dir: Path | None = None) -> list[Protocol]:
    """The websocket protocols the stream commands speak, one per AsyncAPI document."""
    return list(_build(spec, asyncapi_dir or ASYNCAPI_DIR)[1])


def _build(spec: dict[str, Any], asyncapi_dir: Path) -> tuple[list[Command], list[Protocol]]:
    from openapi_python_client.strings import ClassName

    ops = _operations(spec)
    waiters = {w.operation_id: w for w in sdk.waiters(spec)}
    verbs = {op["operationId"]: _verbs(spec, op, _body_schema(op)) for _path, _method, op in ops}
    per_tag: dict[str, int] = {}
    for _path, _method, op in ops:
        tag = (op.get("tags") or ["default"])[0]
        made = verbs[op["operationId"]]
        per_tag[tag] = per_tag.get(tag, 0) + (len(made[1]) if made else 1) + (op["operationId"] in waiters)
        streaming = _stream_spec(op)
        if streaming is not None:  # its commands join their group (x-cli.stream.group, else the tag)
            group = streaming.get("group", tag) if isinstance(streaming.get("group", tag), str) else tag
            per_tag[group] = per_tag.get(group, 0) + ("shell" in streaming) + ("exec" in streaming)

    found_protocols: dict[str, Protocol] = {}

    commands: list[Command] = []
    for path, method, op in ops:
        tag = (op.get("tags") or ["default"])[0]
        op_id = op["operationId"]
        raw_params = [*spec["paths"][path].get("parameters", []), *op.get("parameters", [])]
        flags = _parameter_flags(spec, raw_params)
        body_class, body_required, body_schema = None, (), _body_schema(op)
        if body_schema is not None:
            body_class = _ref_name(body_schema)
            if body_class is None:
                raise CliSpecError(f"{op_id}: the request body must be a $ref to a named schema")
            body = _resolve(spec, body_schema)
            body_required = tuple(body.get("required", ()))
            try:
                flags += _body_flags(spec, body)
            except CliSpecError as error:
                raise CliSpecError(f"{op_id}: {error}") from None
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
        wait = _wait_for(spec, op, response_schema, waiters)

        base = Command(
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
            waits_for=wait[0] if wait else None,
            wait_parameters=wait[1] if wait else (),
        )
        made = verbs[op_id]
        these = [_verb_command(spec, base, tag, body_schema, (made[0], v)) for v in made[1]] if made else [base]
        if op_id in waiters:
            these.append(_wait_command(base, tag, waiters[op_id]))
        streamed, protocol = stream_commands(spec, base, tag, op, body_schema, response_schema, asyncapi_dir)
        if protocol is not None:
            found_protocols[protocol.document] = protocol
        for command in these:
            _check_options(command)
            waiter = waiters.get(command.waits_for or "")
            commands.append(replace(command, epilog=_epilog(spec, command, body_schema, waiter)))
        for command in streamed:
            _check_options(command)
            commands.append(replace(command, epilog=_stream_epilog(spec, command)))
    commands.sort(key=lambda c: c.words)
    seen: dict[tuple[str, ...], Command] = {}
    for command in commands:
        if command.words in seen:
            raise CliSpecError(
                f"{_label(command)} and {_label(seen[command.words])} are both `hangar {' '.join(command.words)}`"
            )
        seen[command.words] = command
    plain = {c.operation_id for c in commands if c.kind == "call" and c.verb is None}
    for name, (_key, source, _dotted) in PARAMETER_DEFAULTS.items():
        if any(f.name == name for c in commands for f in c.flags) and source not in plain:
            raise CliSpecError(f"the default of {name} comes from {source}, which the spec lacks")
    return commands, sorted(found_protocols.values(), key=lambda p: p.document)


def command_map(commands: list[Command]) -> dict[str, str]:
    """{operationId: its command lines}, sorted: the coverage table's CLI column. An operation
    with several commands (verbs, a `wait`) lists them comma-separated, its calls first:
    "hangar actions get, hangar actions wait"."""
    lines: dict[str, list[str]] = {}
    for command in sorted(commands, key=lambda c: (c.kind != "call", c.words)):
        lines.setdefault(command.operation_id, []).append(command.line)
    return {op_id: ", ".join(found) for op_id, found in sorted(lines.items())}


def groups(spec: dict[str, Any], commands: list[Command]) -> list[tuple[str, str]]:
    """(tag, description) for every tag that is a command group (more than one operation)."""
    described = {t["name"]: " ".join(str(t.get("description", "")).split()) for t in spec.get("tags", [])}
    names = sorted({c.words[0] for c in commands if len(c.words) > 1})
    return [(name, described.get(name, "")) for name in names]


# --- streams (x-cli.stream): `hangar instances terminal ID`, `hangar instances exec ID -- ARGV…` ---
#
# An operation that opens a websocket session declares it in `x-cli.stream`; the commands it
# adds run the hand-written stream runner (templates/cli/hangar_cli/stream.py) with a protocol
# module generated from the session's AsyncAPI document (`<document>_protocol.py`: the
# subprotocol, the channel byte of each message, the close codes and their messages, the JSON
# payload schemas). Everything is validated here; a bad value is a CliSpecError naming the
# operation.

ASYNCAPI_DIR = ROOT / "specs" / "asyncapi"
PROTOCOL_TEMPLATE = "protocol.py.j2"  # templates/cli/protocol.py.j2 → hangar_cli/<document>_protocol.py
# The messages the runner speaks, by role, and the JSON fields it reads or writes in each.
STREAM_ROLES = ("stdin", "stdout", "exit", "resize", "auth")
STREAM_JSON_FIELDS: dict[str, tuple[str, ...]] = {
    "exit": ("exit_code",),
    "resize": ("cols", "rows"),
    "auth": ("ticket",),
}
STREAM_KEYS = frozenset({"asyncapi", "channel", "group", "url", "ticket", "shell", "exec"})


@dataclass(frozen=True)
class Stream:
    """What a stream command's runner needs (rendered into commands.py as hangar_cli.model.Stream)."""

    protocol: str  # the generated protocol module in the CLI package ("terminal_protocol")
    url: str  # JSON pointer into the operation's answer: the websocket URL
    ticket: str  # JSON pointer into the answer: the ticket the auth frame presents
    interactive: bool  # a login shell (True) or one command (exec)
    argv_field: str | None = None  # exec: the request body field that takes the argv
    size_fields: tuple[str, ...] = ()  # the body fields that take the terminal's (cols, rows)


@dataclass(frozen=True)
class Protocol:
    """A websocket protocol read from its AsyncAPI document (one per document)."""

    document: str  # "terminal.yaml" (in specs/asyncapi/)
    module: str  # "terminal_protocol"
    title: str
    version: str
    subprotocol: str
    channel: str  # the channel's id in the document
    address: str
    channels: tuple[tuple[str, int], ...]  # (role, channel byte)
    messages: tuple[tuple[str, str], ...]  # (role, the message's name in the document)
    close_codes: tuple[tuple[int, str, str], ...]  # (code, reason slug, plain message)
    schemas: tuple[tuple[str, Any], ...]  # (role, JSON schema of its JSON payload)


def _stream_fail(op_id: str) -> Any:
    def fail(message: str) -> CliSpecError:
        return CliSpecError(f"{op_id}: x-cli.stream {message}")

    return fail


def _asyncapi_document(document: str, asyncapi_dir: Path, fail: Any) -> dict[str, Any]:
    import yaml

    from pipeline.bundle import BundleError, Bundler

    if not isinstance(document, str) or "/" in document or not document.endswith((".yaml", ".yml")):
        raise fail(f"asyncapi must name a YAML document in specs/asyncapi/, not {document!r}")
    path = asyncapi_dir / document
    if not path.is_file():
        raise fail(f"asyncapi names {document}, which is not in {asyncapi_dir.relative_to(ROOT)}/")
    try:
        doc = Bundler(path).bundle()
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (BundleError, yaml.YAMLError) as error:
        raise fail(f"cannot read {document}: {error}") from None
    # The bundler drops top-level x- keys (anchor holders elsewhere); here they carry the protocol.
    doc.update({k: v for k, v in raw.items() if k.startswith("x-")} if isinstance(raw, dict) else {})
    if not str(doc.get("asyncapi", "")).startswith("3."):
        raise fail(f"{document} is not an AsyncAPI 3 document")
    return doc


def _channel_byte(message: dict[str, Any]) -> int | None:
    """A message's channel byte: its `x-channel-byte` (byte 0 of every frame)."""
    value = message.get("x-channel-byte")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _subprotocol(doc: dict[str, Any], channel: dict[str, Any]) -> str | None:
    """`x-subprotocol` on the channel, else at the top of the document."""
    value = channel.get("x-subprotocol", doc.get("x-subprotocol"))
    return value if isinstance(value, str) and value else None


def _close_message(text: str) -> str:
    """A close code's description as a plain message: its protocol notes ("…; after the exit
    frame") dropped, no final full stop, lower-case first (it follows "error: …: ")."""
    parts = [p.strip() for p in " ".join(text.split()).rstrip(".").split(";")]
    kept = "; ".join(p for p in parts if p and "exit frame" not in p) or parts[0]
    first = kept.split()[0] if kept.split() else ""
    return kept if len(first) > 1 and first.isupper() else kept[:1].lower() + kept[1:]


def _close_codes(doc: dict[str, Any], channel: dict[str, Any], fail: Any) -> tuple[tuple[int, str, str], ...]:
    """`x-close-codes` on the channel, else at the top: {code: {reason, description}}."""
    raw = channel.get("x-close-codes", doc.get("x-close-codes"))
    if not isinstance(raw, dict) or not raw:
        raise fail("the AsyncAPI document declares no x-close-codes ({code: {reason, description}})")
    found: dict[int, tuple[str, str]] = {}
    for code, entry in raw.items():
        try:
            number = int(code)
        except (TypeError, ValueError):
            raise fail(f"close code {code!r} is not a number") from None
        description = entry.get("description") if isinstance(entry, dict) else None
        reason = entry.get("reason", "") if isinstance(entry, dict) else ""
        if not (1000 <= number <= 4999) or not isinstance(description, str) or not description.strip():
            raise fail(f"close code {code!r} needs a code in 1000..4999 and a description")
        if not isinstance(reason, str):
            raise fail(f"close code {code!r}: its reason must be a string")
        found[number] = (reason, _close_message(description))
    return tuple((code, reason, text) for code, (reason, text) in sorted(found.items()))


# The direction each role's message must declare (when it declares one: `x-direction`).
STREAM_DIRECTIONS = {
    "stdin": "client-to-server",
    "resize": "client-to-server",
    "auth": "client-to-server",
    "stdout": "server-to-client",
    "exit": "server-to-client",
}


def read_protocol(document: str, channel_id: str | None, asyncapi_dir: Path, op_id: str) -> Protocol:
    """The websocket protocol of an AsyncAPI document's channel, validated for the runner."""
    fail = _stream_fail(op_id)
    doc = _asyncapi_document(document, asyncapi_dir, fail)
    channels = doc.get("channels") or {}
    if channel_id is None:
        if len(channels) != 1:
            raise fail(f"{document} has {len(channels)} channels; name one with `channel`")
        channel_id = next(iter(channels))
    if channel_id not in channels:
        raise fail(f"channel {channel_id!r} is not in {document}")
    channel = _resolve(doc, channels[channel_id])
    subprotocol = _subprotocol(doc, channel)
    if subprotocol is None:
        raise fail(f"{document} declares no x-subprotocol (at its top or on the channel {channel_id})")
    by_role: dict[str, tuple[str, dict[str, Any]]] = {}
    for key, raw in (channel.get("messages") or {}).items():
        message = _resolve(doc, raw)
        name = str(message.get("name") or key)
        role = next((r for r in STREAM_ROLES if r in {name.lower(), str(key).lower()}), None)
        if role is not None:
            by_role[role] = (name, message)
    missing = [role for role in STREAM_ROLES if role not in by_role]
    if missing:
        raise fail(f"channel {channel_id} of {document} has no message named {', '.join(missing)}")
    bytes_: dict[str, int] = {}
    schemas: dict[str, Any] = {}
    for role, (name, message) in by_role.items():
        byte = _channel_byte(message)
        if byte is None or not 0 <= byte <= 255:
            raise fail(f"message {name} of {document} has no channel byte (x-channel-byte: 0..255)")
        direction = message.get("x-direction", STREAM_DIRECTIONS[role])
        if direction != STREAM_DIRECTIONS[role]:
            raise fail(f"message {name} of {document} goes {direction}; the runner needs {STREAM_DIRECTIONS[role]}")
        bytes_[role] = byte
        if role in STREAM_JSON_FIELDS:
            payload = _resolve(doc, message.get("payload") or {})
            props = payload.get("properties") or {}
            absent = [f for f in STREAM_JSON_FIELDS[role] if f not in props]
            if absent:
                raise fail(f"message {name} of {document}: its JSON payload lacks {', '.join(absent)}")
            schemas[role] = _inline(doc, payload)
    if len(set(bytes_.values())) != len(bytes_):
        raise fail(f"two messages of {document} share a channel byte: {sorted(bytes_.items())}")
    info = doc.get("info") or {}
    return Protocol(
        document=document,
        module=re.sub(r"\W", "_", document.rsplit(".", 1)[0]) + "_protocol",
        title=str(info.get("title", document)),
        version=str(info.get("version", "")),
        subprotocol=subprotocol,
        channel=channel_id,
        address=str(channel.get("address", "")),
        channels=tuple((role, bytes_[role]) for role in STREAM_ROLES),
        messages=tuple((role, by_role[role][0]) for role in STREAM_ROLES),
        close_codes=_close_codes(doc, channel, fail),
        schemas=tuple(sorted(schemas.items())),
    )


def _inline(doc: dict[str, Any], node: Any, depth: int = 0) -> Any:
    """A schema with its local $refs followed (for the generated module: self-contained)."""
    node = _resolve(doc, node)
    if depth > 16:
        return node
    if isinstance(node, dict):
        return {k: _inline(doc, v, depth + 1) for k, v in sorted(node.items()) if not k.startswith("x-")}
    if isinstance(node, list):
        return [_inline(doc, v, depth + 1) for v in node]
    return node


def _stream_spec(op: dict[str, Any]) -> dict[str, Any] | None:
    stream = (op.get("x-cli") or {}).get("stream")
    if stream is None:
        return None
    fail = _stream_fail(op["operationId"])
    if not isinstance(stream, dict) or not {"asyncapi", "url", "ticket"} <= set(stream) or set(stream) - STREAM_KEYS:
        raise fail(
            "must be {asyncapi: <document>, channel?: <id>, group?: <command group>, url: <expression>, "
            "ticket: <expression>, shell?: <command>, exec?: {command: <command>, argv: <body field>}}"
        )
    if "shell" not in stream and "exec" not in stream:
        raise fail("declares no command: give `shell` (a login shell) and/or `exec` (one command)")
    return stream


def stream_commands(
    spec: dict[str, Any], base: Command, tag: str, op: dict[str, Any], body_schema: Any, response_schema: Any,
    asyncapi_dir: Path,
) -> tuple[list[Command], Protocol | None]:  # fmt: skip
    """The commands `x-cli.stream` adds to an operation (and its protocol); ([], None) without it."""
    stream = _stream_spec(op)
    if stream is None:
        return [], None
    op_id = op["operationId"]
    fail = _stream_fail(op_id)
    protocol = read_protocol(stream["asyncapi"], stream.get("channel"), asyncapi_dir, op_id)
    pointers: dict[str, str] = {}
    for key in ("url", "ticket"):
        expression = stream[key]
        match = RUNTIME_EXPRESSION.fullmatch(expression) if isinstance(expression, str) else None
        if match is None:
            raise fail(f"{key}: {expression!r} is not a `$response.body#/<JSON pointer>` expression")
        leaf = _pointer_schema(spec, response_schema, match.group(1)) if response_schema is not None else None
        if leaf is None or _resolve(spec, leaf).get("type") != "string":
            raise fail(f"{key}: {expression} is not a string of the response")
        pointers[key] = match.group(1)
    props = _resolve(spec, body_schema).get("properties", {}) if body_schema is not None else {}
    resize_fields = STREAM_JSON_FIELDS["resize"]
    size_fields = resize_fields if all(_scalar(spec, props.get(f, {})) == ("int", ()) for f in resize_fields) else ()
    group = stream.get("group", tag)
    if not isinstance(group, str) or not re.fullmatch(r"[a-z][a-z0-9-]*", group):
        raise fail(f"group must be a command group name, not {group!r}")
    required = [n for n in _resolve(spec, body_schema).get("required", ())] if body_schema is not None else []
    flags = tuple(f for f in base.flags if f.location in ("path", "query"))
    noun = " ".join(words(singular(group)))
    commands: list[Command] = []
    if "shell" in stream:
        name = stream["shell"]
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise fail(f"shell must be a command name, not {name!r}")
        if required:
            raise fail(f"shell: the request body requires {', '.join(required)}; a login shell sends none of it")
        commands.append(
            replace(
                base, words=(group, name), description="",
                summary=f"Open an interactive terminal on {_article(noun)} {noun}",
                kind="stream", flags=flags, body_option=False, columns=(),
                stream=Stream(protocol.module, pointers["url"], pointers["ticket"], True, None, size_fields),
            )
        )  # fmt: skip
    if "exec" in stream:
        spec_exec = stream["exec"]
        if not isinstance(spec_exec, dict) or set(spec_exec) != {"command", "argv"}:
            raise fail("exec must be {command: <command name>, argv: <request body field>}")
        name, argv = spec_exec["command"], spec_exec["argv"]
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            raise fail(f"exec.command must be a command name, not {name!r}")
        field_schema = _resolve(spec, props[argv]) if isinstance(argv, str) and argv in props else None
        if (
            field_schema is None
            or field_schema.get("type") != "array"
            or _scalar(spec, field_schema.get("items", {})) != ("str", ())
        ):
            raise fail(f"exec.argv `{argv}` is not an array of strings in the request body")
        if [r for r in required if r != argv]:
            raise fail(f"exec: the request body requires {', '.join(r for r in required if r != argv)}")
        commands.append(
            replace(
                base, words=(group, name), description="",
                summary=f"Run one command on {_article(noun)} {noun} and exit with its code",
                kind="stream", flags=flags, body_option=False, columns=(),
                stream=Stream(protocol.module, pointers["url"], pointers["ticket"], False, argv, size_fields),
            )
        )  # fmt: skip
    return commands, protocol


def _article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"


def _stream_epilog(spec: dict[str, Any], command: Command) -> str:
    """The help's epilog of a stream command: an example, what it does, the exit status."""
    stream = command.stream
    assert stream is not None
    parts = ["hangar", *command.words]
    parts += [str(_param_example(spec, command, f)) for f in command.flags if f.location == "path" and f.required]
    if stream.interactive:
        text = (
            f"Calls {command.operation_id} for a login shell and attaches this terminal to it: raw mode while "
            "it lasts (every key goes to the remote, ^C included), the remote's size follows the window's, and "
            "the terminal's settings are restored however it ends. When stdin is not a terminal it is piped to "
            "the shell, which gets an end of file after it."
        )
    else:
        parts += ["--", "uname", "-a"]
        text = (
            f"Calls {command.operation_id} with the command after `--` (argv, run without a shell; "
            "`-- sh -c '…'` for one), streams its output and exits with its exit code. stdin is piped through "
            "and the command gets an end of file after it; when stdin is a terminal it is attached like an "
            "interactive terminal (raw mode, resizes). The remote side is a terminal, which writes \\r\\n for "
            "every newline: when stdout is not a terminal, the output gets its \\n back."
        )
    status = (
        "Exit status: the remote's exit code; 255 when the session could not be opened or ended without "
        "one (the reason, e.g. an idle timeout, is on stderr); 2 for a usage error."
    )
    lines = ["example:", f"  {' '.join(shlex.quote(p) for p in parts)}", ""]
    lines += [*textwrap.wrap(text, 92, break_on_hyphens=False), "", *textwrap.wrap(status, 92)]
    return "\n".join(lines)


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


def render_cli(spec: dict[str, Any], project_dir: Path, asyncapi_dir: Path | None = None) -> None:
    """Render the CLI project into the empty directory `project_dir`."""
    commands, streams = _build(spec, asyncapi_dir or ASYNCAPI_DIR)
    env = _environment()
    context = {
        "commands": commands,
        "groups": tuple(groups(spec, commands)),
        "title": spec["info"]["title"],
        "version": spec["info"]["version"],
        "package": PACKAGE,
        "parameter_defaults": PARAMETER_DEFAULTS,
        "waiters": sdk.waiters(spec),
        "waiter_fields": WAITER_FIELDS,
        "wait_timeout": WAIT_TIMEOUT,
        "flag_fields": [f.name for f in Flag.__dataclass_fields__.values()],
        "command_fields": [f.name for f in Command.__dataclass_fields__.values() if f.name != "flags"],
        "protocols": streams,
    }
    # templates/cli/<path>.jinja → <project>/<path>: the layout of the tree is the layout of the project.
    for template in sorted(TEMPLATES.rglob("*.jinja")):
        rel = template.relative_to(TEMPLATES)
        target = project_dir / rel.with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.get_template(rel.as_posix()).render(**context), encoding="utf-8")
    package = project_dir / PACKAGE
    # Hand-written modules (the stream runner) are copied as they are.
    for source in sorted((TEMPLATES / PACKAGE).glob("*.py")):
        (package / source.name).write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    # One protocol module per AsyncAPI document a stream command speaks (x-cli.stream).
    for protocol in streams:
        text = env.get_template(PROTOCOL_TEMPLATE).render(protocol=protocol, **context)
        (package / f"{protocol.module}.py").write_text(text, encoding="utf-8")
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


CLI_INPUTS: tuple[str, ...] = ("generated/openapi.json", "pipeline/cli.py", "pipeline/sdk.py", "pipeline/bundle.py")
CLI_INPUTS += ("templates/cli/**/*", "specs/asyncapi/*.yaml")

STAGE = Stage(
    name="cli",
    # specs/asyncapi/: the AsyncAPI documents the stream commands speak (x-cli.stream).
    inputs=CLI_INPUTS,
    outputs=("cli",),
    run=run,
    salt=sdk.STAGE.salt,
    after=("openapi-bundle", "sdk"),
)
