"""Stage: generated/openapi.json → generated/routing.py (operation registry + typed adapters).

A short chain, as openapi-python-client does it: parse the bundled document into a typed
intermediate model (`OperationSpec`, `ParamSpec`), collecting every problem with its location
instead of stopping at the first; render templates/routing.py.j2; format with ruff.
The contract for the output is docs/architecture.md ("Operations: spec → generated routing →
handler"). Generated code never imports hangar/ or handlers/: handlers are named by dotted
strings and bound at start-up by hangar.handlers_registry.
"""

from __future__ import annotations

import builtins
import json
import keyword
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import inflection

from pipeline.models import tool_versions
from pipeline.stages import ROOT, Stage, header, write_text

TEMPLATES = ROOT / "templates"
RUFF_SETTINGS = TEMPLATES / "ruff"
METHODS = ("get", "post", "put", "patch", "delete", "head", "options", "trace")


# (type, format) of a parameter schema → (annotation, converter in generated/routing.py).
# An unknown format falls back to its type's entry (format: int32 → int).
_PARAM_TYPES: dict[tuple[str, str | None], tuple[str, str]] = {
    ("string", "uuid"): ("uuid.UUID", "_uuid"),
    ("string", "date-time"): ("datetime.datetime", "_datetime"),
    ("string", "date"): ("datetime.date", "_date"),
    ("integer", None): ("int", "_int"),
    ("number", None): ("float", "_float"),
    ("boolean", None): ("bool", "_bool"),
    ("string", None): ("str", "_str"),
}


class RoutingSpecError(Exception):
    """The document cannot be turned into routing; one line per problem, each located."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("cannot generate routing:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ParamSpec:
    name: str  # spec name, "apiKeyId"
    arg: str  # python keyword, as connexion's pythonic_params spells it
    location: str  # "path" | "query"
    required: bool
    annotation: str  # python source of the type the handler receives
    converter: str  # python source of a one-argument conversion function
    default: str | None  # python source of the default, None when there is none


@dataclass(frozen=True)
class OperationSpec:
    operation_id: str
    handler_module: str
    handler_name: str
    context: str
    method: str
    path: str
    tag: str
    public: bool
    scopes: tuple[str, ...]
    idempotent: bool
    success_status: int
    request_model: str | None  # class name in generated.models
    response_model: str | None
    params: tuple[ParamSpec, ...]
    emits: tuple[str, ...]
    cli: dict[str, Any]

    @property
    def adapter(self) -> str:
        return f"_adapt_{self.handler_name}"

    @property
    def signature(self) -> str:
        """The endpoint's keyword parameters as connexion passes them (untyped: raw input)."""
        parts = [f"{p.arg}: Any" + (f" = {p.default}" if p.default is not None else "") for p in self.params]
        if self.request_model:
            parts.append("body: Any")
        # Required parameters first: a spec default on an earlier query parameter must not
        # make a later path parameter a syntax error.
        return ", ".join(sorted(parts, key=lambda part: "=" in part))


def snake_case(name: str) -> str:
    """operationId → handler name: "listApiKeys" → "list_api_keys"."""
    return inflection.underscore(name)


def pythonic(name: str) -> str:
    """connexion 3.3's pythonic_params spelling (connexion.decorators.parameter.pythonic),
    reproduced so the build does not import connexion: camelCase → snake_case, a builtin
    or keyword gets a trailing underscore, anything not an identifier character is dropped."""
    snake = inflection.underscore(name)
    if snake in builtins.__dict__ or keyword.iskeyword(snake):
        snake = f"{snake}_"
    return re.sub("^[^a-zA-Z_]+", "", re.sub("[^0-9a-zA-Z_]", "", re.sub(r"\[(?!])", "_", snake)))


def model_names(models_source: str) -> set[str]:
    """Class names defined at the top of generated/models.py."""
    return set(re.findall(r"^class (\w+)\(", models_source, flags=re.MULTILINE))


class _Parser:
    def __init__(self, spec: dict[str, Any], models: set[str]) -> None:
        self.spec = spec
        self.models = models
        self.problems: list[str] = []
        self.schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
        self.tag_contexts = {t["name"]: t.get("x-context") for t in spec.get("tags", []) if "name" in t}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def deref(self, node: Any) -> Any:
        """Follow local $refs (the bundle has no other kind)."""
        seen = 0
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 32:
            target: Any = self.spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node, seen = target, seen + 1
        return node

    def operations(self) -> list[OperationSpec]:
        found: list[OperationSpec] = []
        seen_ids: dict[str, str] = {}
        for path, item in self.spec.get("paths", {}).items():
            item = self.deref(item)
            for method in METHODS:
                if method not in item:
                    continue
                where = f"{method.upper()} {path}"
                op = self.operation(path, method, item, item[method], where)
                if op is None:
                    continue
                if op.operation_id in seen_ids:
                    self.problem(where, f"operationId {op.operation_id!r} is also used by {seen_ids[op.operation_id]}")
                    continue
                seen_ids[op.operation_id] = where
                found.append(op)
        return found

    def operation(
        self, path: str, method: str, item: dict[str, Any], raw: dict[str, Any], where: str
    ) -> OperationSpec | None:
        operation_id = raw.get("operationId")
        if not isinstance(operation_id, str) or not re.fullmatch(r"[a-z][A-Za-z0-9]*", operation_id):
            self.problem(where, f"operationId must be camelCase, got {operation_id!r}")
            return None
        where = f"{where} ({operation_id})"
        tags = raw.get("tags") or []
        if len(tags) != 1:
            self.problem(where, f"needs exactly one tag, has {len(tags)}")
        tag = tags[0] if tags else ""
        context = raw.get("x-context") or self.tag_contexts.get(tag)
        if not isinstance(context, str) or not context.isidentifier():
            self.problem(where, f"x-context must name a bounded context package, got {context!r}")
            context = "unknown"
        public, scopes = self.security(raw, where)
        status, response_model = self.response(raw, where)
        request_model = self.request(raw, where)
        params = self.params(item.get("parameters", []), raw.get("parameters", []), where)
        cli = raw.get("x-cli", {})
        emits = raw.get("x-emits", [])
        return OperationSpec(
            operation_id=operation_id,
            handler_module=f"handlers.{context}.operations",
            handler_name=snake_case(operation_id),
            context=context,
            method=method.upper(),
            path=path,
            tag=tag,
            public=public,
            scopes=scopes,
            idempotent=bool(raw.get("x-idempotency", False)),
            success_status=status,
            request_model=request_model,
            response_model=response_model,
            params=params,
            emits=tuple(emits),
            cli=cli if isinstance(cli, dict) else {},
        )

    def security(self, raw: dict[str, Any], where: str) -> tuple[bool, tuple[str, ...]]:
        # `security: []` → public; `[{apiKey: []}]` → authenticated, no scope needed;
        # `[{apiKey: [a, b]}]` → both scopes needed. Alternatives (several requirements) would
        # make "the operation's scopes" ambiguous, so they are refused.
        requirements = raw.get("security", self.spec.get("security", []))
        if not requirements:
            return True, ()
        if len(requirements) != 1 or len(requirements[0]) != 1:
            self.problem(where, "security must be [] or a single requirement naming one scheme")
            return False, ()
        (scopes,) = requirements[0].values()
        return False, tuple(scopes)

    def model_ref(self, media: dict[str, Any], where: str) -> str | None:
        schema = media.get("schema", {})
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#/components/schemas/"):
            self.problem(where, "a JSON body must be a $ref to a component schema (models need names)")
            return None
        name = ref.rsplit("/", 1)[1]
        target = self.schemas.get(name, {})
        if target.get("type", "object") != "object" or "enum" in target:
            self.problem(where, f"body schema {name} must be an object schema")
            return None
        if name not in self.models:
            self.problem(where, f"generated/models.py has no class {name}")
            return None
        return name

    def response(self, raw: dict[str, Any], where: str) -> tuple[int, str | None]:
        ok = sorted(code for code in raw.get("responses", {}) if str(code).startswith("2"))
        if len(ok) != 1 or not ok[0].isdigit():
            self.problem(where, f"needs exactly one 2xx response, has {ok}")
            return 200, None
        response = self.deref(raw["responses"][ok[0]])
        content = response.get("content") or {}
        if not content:
            return int(ok[0]), None
        if "application/json" not in content:
            self.problem(where, f"{ok[0]} response must be application/json or empty")
            return int(ok[0]), None
        return int(ok[0]), self.model_ref(content["application/json"], f"{where} response {ok[0]}")

    def request(self, raw: dict[str, Any], where: str) -> str | None:
        if "requestBody" not in raw:
            return None
        body = self.deref(raw["requestBody"])
        content = body.get("content") or {}
        if list(content) != ["application/json"]:
            self.problem(where, f"request body must be application/json only, has {sorted(content)}")
            return None
        if not body.get("required"):
            # Hangar bodies are always required: one handler signature per operation, and
            # `body: Model` never has to be checked for None.
            self.problem(where, "request body must be `required: true`")
        return self.model_ref(content["application/json"], f"{where} request body")

    def params(self, shared: list[Any], own: list[Any], where: str) -> tuple[ParamSpec, ...]:
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for raw in [*shared, *own]:  # operation-level parameters override path-level ones
            param = self.deref(raw)
            merged[(param.get("in", ""), param.get("name", ""))] = param
        result: list[ParamSpec] = []
        for (location, name), param in merged.items():
            if location not in ("path", "query"):
                continue  # headers and cookies are the runtime's business, not the handler's
            spec = self.param(name, location, param, f"{where} parameter {location}.{name}")
            if spec is not None:
                result.append(spec)
        # Path parameters first, then query, each in document order: a stable signature.
        result.sort(key=lambda p: p.location != "path")
        args = [p.arg for p in result]
        for arg in {a for a in args if args.count(a) > 1 or a in ("ctx", "body")}:
            self.problem(where, f"parameter keyword {arg!r} is used twice or is reserved")
        return tuple(result)

    def param(self, name: str, location: str, param: dict[str, Any], where: str) -> ParamSpec | None:
        required = bool(param.get("required", location == "path"))
        schema = param.get("schema", {})
        typed = self.scalar(schema, where)
        if typed is None:
            return None
        annotation, converter = typed
        resolved = self.deref(schema)
        default: str | None = None
        if "default" in resolved and not required:
            default = self.literal(schema, resolved["default"])
        elif not required:
            annotation, default = f"{annotation} | None", "None"
        return ParamSpec(name, pythonic(name), location, required, annotation, converter, default)

    def scalar(self, schema: dict[str, Any], where: str) -> tuple[str, str] | None:
        """(annotation, converter) for a parameter schema."""
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[1]
            target = self.deref(schema)
            if "enum" in target and name in self.models:
                return f"models.{name}", f"_enum(models.{name})"
            return self.scalar(target, where)
        kind, fmt = schema.get("type"), schema.get("format")
        if kind == "array":
            inner = self.scalar(schema.get("items", {}), where)
            return None if inner is None else (f"list[{inner[0]}]", f"_list({inner[1]})")
        found = _PARAM_TYPES.get((str(kind), fmt)) or _PARAM_TYPES.get((str(kind), None))
        if found is None:
            self.problem(where, f"unsupported parameter type {kind!r} (format {fmt!r})")
        return found

    def literal(self, schema: dict[str, Any], value: Any) -> str:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return f"models.{ref.rsplit('/', 1)[1]}({value!r})"
        return repr(value)


def parse(spec: dict[str, Any], models: set[str]) -> list[OperationSpec]:
    parser = _Parser(spec, models)
    operations = parser.operations()
    if parser.problems:
        raise RoutingSpecError(parser.problems)
    return operations


def _environment() -> Any:
    import jinja2  # lazily: a no-op `codegen.py generate` should not pay for the import

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701 — renders Python source, not HTML
    )
    env.filters["py"] = repr
    env.filters["pydict"] = lambda value: repr(json.loads(json.dumps(value, sort_keys=True)))
    return env


def ruff_format(source: str) -> str:
    """Format with the pinned ruff under templates/ruff/ruff.toml (not the project's settings)."""
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run(  # noqa: S603 — fixed argv, our own venv's ruff
        [str(ruff) if ruff.exists() else "ruff", "format", "-"],
        input=source.encode(),
        capture_output=True,
        check=False,
        cwd=RUFF_SETTINGS,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ruff format failed on generated routing:\n{done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def render_routing(spec: dict[str, Any], models_source: str, package: str = "generated") -> str:
    """routing.py for a bundled document; `package` holds the sibling models module (tests
    render a fixture spec into a package of their own)."""
    operations = parse(spec, model_names(models_source))
    template = _environment().get_template("routing.py.j2")
    text = template.render(header=header().rstrip("\n"), operations=operations, package=package)
    return ruff_format(text)


def run(out_root: Path) -> None:
    spec = json.loads((out_root / "openapi.json").read_text(encoding="utf-8"))
    models_source = (out_root / "models.py").read_text(encoding="utf-8")
    write_text(out_root / "routing.py", render_routing(spec, models_source))
    write_text(
        out_root / "__init__.py",
        header() + '"""Output of codegen.py: never edit; regenerate with `make generate`."""\n',
    )


STAGE = Stage(
    name="routing",
    inputs=(
        "generated/openapi.json",
        "generated/models.py",
        "pipeline/routing.py",
        "templates/routing*.j2",
        "templates/ruff/ruff.toml",
    ),
    outputs=("routing.py", "__init__.py"),
    run=run,
    salt=tool_versions("jinja2", "inflection", "ruff"),
    after=("openapi-bundle", "models"),
)
