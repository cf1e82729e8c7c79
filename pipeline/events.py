"""Stage: generated/asyncapi.json → generated/events/ (the `generated.events` package).

Three things come out, all imported by nothing but the runtime's event code:

- ``app/``: the asyncapi-python 0.3.1 ``Application`` (typed producer endpoints over a wire:
  AmqpWire, InMemoryWire), made by ``asyncapi-python-codegen``. Post-processing fixes what
  LIBRARY-NOTES lists as its bugs where they live in generated text:
  * the ``timestamp:`` line of its message module made every run differ → the module is
    replaced (next point), and every file gets our header;
  * its message models force ``extra="allow"`` and encode without ``by_alias`` → its
    ``messages/json`` module is replaced by re-exports of ``models.py`` (below), whose base
    ``WireModel`` serializes by alias and leaves absent optional fields absent. The codec
    resolves message classes by name from that module, so the Application encodes and
    decodes exactly the contract's payloads.
  (Runtime bugs — durable-only exchanges, non-persistent messages — are fixed in
  hangar/amqp.py, where the wire is.)
- ``models.py``: wire-exact pydantic models from datamodel-code-generator
  (``--input-file-type asyncapi``: honours ``additionalProperties: false`` and field names).
- ``catalog.py``: ``{event type: EventSpec}`` — channel, routing key, exchange, producer
  endpoint, model class and the payload's JSON Schema with every ``$ref`` inlined — so the
  relay can validate and route, and checks can compare ``x-emits`` with the events that exist.

Problems in the spec come back as ``EventsStageError`` naming the JSON pointer.
"""

from __future__ import annotations

import json
import os
import pprint
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pipeline.stages import HEADER, ROOT, Stage, header, write_text

ASYNCAPI_PYTHON_VERSION = "0.3.1"
DMCG_VERSION = "0.89.0"
RUFF_VERSION = "0.17.5"
TEMPLATES = ROOT / "templates" / "events"
# The same ruff settings the models stage formats with, so generated formatting depends on
# that file and the pinned ruff only.
RUFF_SETTINGS = ROOT / "templates" / "ruff"
PACKAGE = "events"
# Files of asyncapi-python's output we keep (relative to its output directory). Anything
# else it starts to emit is an error: a new upstream file must be looked at before it ships.
UPSTREAM_FILES = (
    "__init__.py",
    "application.py",
    "router.py",
    "messages/__init__.py",
    "messages/json/__init__.py",
    "parameters/__init__.py",
)


class EventsStageError(Exception):
    pass


@dataclass(frozen=True)
class Event:
    """One message of one send operation, as the catalog template needs it."""

    type: str
    message: str
    channel: str
    address: str
    exchange: str
    exchange_type: str
    exchange_durable: bool
    exchange_auto_delete: bool
    operation: str
    producer: str
    codec_class: str
    model: str
    schema: dict[str, Any]
    summary: str


# ---------------------------------------------------------------- reading the bundle


def _ref_target(spec: dict[str, Any], ref: str, where: str) -> tuple[str, Any]:
    if not ref.startswith("#/"):
        raise EventsStageError(f"{where}: only local $refs are expected in the bundle, got {ref!r}")
    node: Any = spec
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise EventsStageError(f"{where}: $ref {ref!r} does not resolve")
        node = node[part]
    return ref[2:].split("/")[-1], node


def _deref(spec: dict[str, Any], node: Any, where: str) -> tuple[str | None, Any]:
    if isinstance(node, dict) and "$ref" in node:
        return _ref_target(spec, node["$ref"], where)
    return None, node


def inline_refs(spec: dict[str, Any], node: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
    """A JSON Schema with every local $ref replaced by its target (recursion is an error:
    event payloads are finite trees, and the relay's validator gets a self-contained schema)."""
    if isinstance(node, list):
        return [inline_refs(spec, item, where, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            raise EventsStageError(f"{where}: recursive schema through {ref!r}")
        _, target = _ref_target(spec, ref, where)
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return inline_refs(spec, {**target, **siblings}, where, (*seen, ref))
    return {key: inline_refs(spec, value, where, seen) for key, value in node.items()}


def _amqp_exchange(channel: dict[str, Any], where: str) -> dict[str, Any]:
    binding = (channel.get("bindings") or {}).get("amqp")
    if not isinstance(binding, dict) or binding.get("is") != "routingKey":
        raise EventsStageError(f"{where}/bindings/amqp: every event channel needs an AMQP binding with is: routingKey")
    exchange = binding.get("exchange")
    if not isinstance(exchange, dict) or not exchange.get("name"):
        raise EventsStageError(f"{where}/bindings/amqp/exchange: name the exchange")
    return exchange


def codec_class_name(message_name: str) -> str:
    """The class asyncapi-python's JsonCodecFactory looks up for a message name
    ("member.role_changed" → "MemberRoleChanged"), same rule as its `_to_class_name`."""
    parts = message_name.replace("-", "_").replace(".", "_").split("_")
    return "".join(part.capitalize() for part in parts if part)


def read_events(spec: dict[str, Any]) -> list[Event]:
    """Every message of every `send` operation, sorted by event type."""
    from asyncapi_python.utils import snake_case  # the name asyncapi-python gives the endpoint

    events: dict[str, Event] = {}
    for op_id, operation in sorted((spec.get("operations") or {}).items()):
        where = f"#/operations/{op_id}"
        if operation.get("action") != "send":
            continue
        channel_key, channel = _deref(spec, operation.get("channel"), where)
        if channel_key is None or not isinstance(channel, dict):
            raise EventsStageError(f"{where}/channel: must be a $ref to a channel")
        channel_where = f"#/channels/{channel_key}"
        address = channel.get("address")
        if not isinstance(address, str) or not address or "{" in address:
            raise EventsStageError(f"{channel_where}/address: a fixed routing key is required, got {address!r}")
        exchange = _amqp_exchange(channel, channel_where)
        for index, message_ref in enumerate(operation.get("messages") or []):
            _, message = _deref(spec, message_ref, f"{where}/messages/{index}")
            message_key, message = _deref(spec, message, f"{where}/messages/{index}")
            msg_where = f"#/components/messages/{message_key}"
            name = message.get("name") if isinstance(message, dict) else None
            if not isinstance(name, str) or not name:
                raise EventsStageError(f"{msg_where}/name: the event type (e.g. api_key.created) is required")
            if name in events:
                raise EventsStageError(f"{msg_where}/name: event type {name!r} is declared twice")
            payload = message.get("payload")
            model, _ = _deref(spec, payload, f"{msg_where}/payload")
            if model is None:
                raise EventsStageError(f"{msg_where}/payload: must be a $ref to components/schemas")
            schema = inline_refs(spec, payload, f"{msg_where}/payload")
            enum = ((schema.get("properties") or {}).get("type") or {}).get("enum")
            if enum != [name]:
                raise EventsStageError(f"{msg_where}/payload: property `type` must be enum [{name!r}], got {enum!r}")
            events[name] = Event(
                type=name,
                message=str(message_key),
                channel=channel_key,
                address=address,
                exchange=str(exchange["name"]),
                exchange_type=str(exchange.get("type", "topic")),
                exchange_durable=bool(exchange.get("durable", True)),
                exchange_auto_delete=bool(exchange.get("autoDelete", False)),
                operation=op_id,
                producer=snake_case(op_id),
                codec_class=codec_class_name(name),
                model=model,
                schema=schema,
                summary=str(message.get("summary") or message.get("title") or ""),
            )
    if not events:
        raise EventsStageError("#/operations: no send operation with a message; nothing to generate")
    return [events[name] for name in sorted(events)]


# ---------------------------------------------------------------- generators


def render_models(spec: dict[str, Any]) -> str:
    """models.py: datamodel-code-generator over the bundle, every model on WireModel."""
    from datamodel_code_generator import (
        DataModelType,
        InputFileType,
        LiteralType,
        NamingStrategy,
        PythonVersion,
        generate,
    )
    from datamodel_code_generator.format import Formatter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        text = generate(
            spec,
            input_file_type=InputFileType.AsyncAPI,
            output_model_type=DataModelType.PydanticV2BaseModel,
            target_python_version=PythonVersion.PY_311,
            base_class=f"generated.{PACKAGE}._base.WireModel",
            use_annotated=True,
            field_constraints=True,
            use_standard_collections=True,
            use_union_operator=True,
            collapse_root_models=True,
            use_type_alias=True,
            snake_case_field=True,
            allow_population_by_field_name=True,
            use_schema_description=True,
            use_field_description=True,
            use_double_quotes=True,
            # `type` is a one-value enum per event: a Literal reads better than Type1…Type6.
            enum_field_as_literal=LiteralType.One,
            use_subclass_enum=True,
            # ApiKeyCreatedEventData rather than Data, Data1, … Data6.
            naming_strategy=NamingStrategy.ParentPrefixed,
            # EmailStr needs email-validator (not installed) and is stricter than the
            # schema's `format: email`; the relay validates formats with the JSON Schema.
            type_mappings=["string+email=string"],
            formatters=[Formatter.RUFF_FORMAT, Formatter.RUFF_CHECK],
            settings_path=RUFF_SETTINGS,
            disable_timestamp=True,
            custom_file_header=header().rstrip("\n") + "\n# source: generated/asyncapi.json (datamodel-code-generator)",
        )
    if not isinstance(text, str):
        raise EventsStageError("datamodel-code-generator returned several modules, expected one file")
    return text if text.endswith("\n") else text + "\n"


def _codegen_executable() -> str:
    # The console script sits next to the interpreter running codegen.py (the venv's).
    candidate = Path(sys.executable).parent / "asyncapi-python-codegen"
    found = str(candidate) if candidate.exists() else shutil.which("asyncapi-python-codegen")
    if not found:
        raise EventsStageError("asyncapi-python-codegen not found: install asyncapi-python[codegen] (make install)")
    return found


def run_asyncapi_python(spec_path: Path) -> dict[str, str]:
    """asyncapi-python-codegen's output, {relative path: text}."""
    with tempfile.TemporaryDirectory(prefix="hangar-asyncapi-") as tmp:
        out = Path(tmp) / "app"
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MYPY_CACHE_DIR": str(Path(tmp) / ".mypy_cache")}
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [_codegen_executable(), str(spec_path), str(out), "--force"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise EventsStageError(f"asyncapi-python-codegen failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        files = {
            str(p.relative_to(out)): p.read_text(encoding="utf-8")
            for p in sorted(out.rglob("*.py"))
            if "__pycache__" not in p.parts
        }
    unexpected = sorted(set(files) - set(UPSTREAM_FILES))
    missing = sorted(set(UPSTREAM_FILES) - set(files))
    if unexpected or missing:
        raise EventsStageError(
            f"asyncapi-python-codegen output changed shape (new: {unexpected}, missing: {missing}); "
            f"review pipeline/events.py for asyncapi-python other than {ASYNCAPI_PYTHON_VERSION}"
        )
    return files


_TIMESTAMP = re.compile(r"^#\s*timestamp:.*\n", re.MULTILINE)


def postprocess_app(files: dict[str, str], events: list[Event], messages_module: str) -> dict[str, str]:
    """Our header on every file; the message module replaced (see the module docstring);
    any timestamp line dropped; every producer endpoint the catalog names must exist."""
    result: dict[str, str] = {}
    for rel, text in files.items():
        replaced = rel == "messages/json/__init__.py"
        result[rel] = messages_module if replaced else header() + _TIMESTAMP.sub("", text)
    router = result["router.py"]
    for event in events:
        if f"self.{event.producer} = " not in router:
            raise EventsStageError(
                f"#/operations/{event.operation}: asyncapi-python generated no producer `{event.producer}`"
            )
    return result


def _templates() -> Environment:
    env = Environment(  # noqa: S701 - renders Python source, not HTML
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pyrepr"] = _pyrepr
    return env


def _pyrepr(value: Any) -> str:
    """A deterministic one-line Python literal (sorted keys); ruff format lays it out."""
    return pprint.pformat(value, width=10**9, sort_dicts=True)


def ruff_format(text: str, filename: str) -> str:
    """Format rendered Python the way datamodel-code-generator's output is (same settings)."""
    proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", filename, "-"],
        cwd=RUFF_SETTINGS,
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise EventsStageError(f"ruff format failed on the rendered {filename}:\n{proc.stderr}")
    return proc.stdout


def render(events: list[Event], spec: dict[str, Any], upstream: dict[str, str]) -> dict[str, str]:
    """{path under generated/events/: text} for everything the stage writes."""
    env = _templates()
    context = {
        "header": HEADER,
        "events": events,
        "package": f"generated.{PACKAGE}",
        "title": (spec.get("info") or {}).get("title", ""),
        "version": (spec.get("info") or {}).get("version", ""),
    }
    files = {
        "__init__.py": env.get_template("__init__.py.j2").render(context),
        "_base.py": env.get_template("_base.py.j2").render(context),
        "catalog.py": ruff_format(env.get_template("catalog.py.j2").render(context), "catalog.py"),
        "models.py": render_models(spec),
    }
    messages = env.get_template("app_messages.py.j2").render(context)
    for rel, text in postprocess_app(upstream, events, messages).items():
        files[f"app/{rel}"] = text
    return files


def write_package(out_dir: Path, files: dict[str, str]) -> None:
    """Write every file (untouched bytes keep their mtime) and delete what is no longer made."""
    for rel, text in files.items():
        write_text(out_dir / rel, text)
    for path in sorted(out_dir.rglob("*"), reverse=True):
        if "__pycache__" in path.parts:
            continue
        rel = str(path.relative_to(out_dir))
        if path.is_file() and rel not in files:
            path.unlink()
        elif path.is_dir() and not any(p for p in path.iterdir() if p.name != "__pycache__"):
            shutil.rmtree(path)


def run(out_root: Path) -> None:
    bundle = out_root / "asyncapi.json"
    spec = json.loads(bundle.read_text(encoding="utf-8"))
    events = read_events(spec)
    upstream = run_asyncapi_python(bundle)
    write_package(out_root / PACKAGE, render(events, spec, upstream))


STAGE = Stage(
    name="events",
    inputs=("generated/asyncapi.json", "pipeline/events.py", "templates/events/*", "templates/ruff/ruff.toml"),
    outputs=(PACKAGE,),
    run=run,
    salt=f"asyncapi-python=={ASYNCAPI_PYTHON_VERSION} datamodel-code-generator=={DMCG_VERSION} ruff=={RUFF_VERSION}",
    after=("asyncapi-bundle",),
)
