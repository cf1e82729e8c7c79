"""Request and response validation with compiled JSON Schema validators (jsonschema-rs).

Why not connexion's defaults (docs/LIBRARY-NOTES): its Draft-4 validators ignore
`format: uuid` (non-UUID path ids reached handlers), reject `2764.0` as an integer, answer
a body that is not UTF-8 with a 500, and rebuild every validator on every request. Here:

- OpenAPI 3.0 schemas are translated once (`nullable`, boolean `exclusiveMinimum`) into
  JSON Schema 2020-12 and compiled once per operation by jsonschema-rs with format
  checking on (uuid, date-time, email, …).
- Every failure is a 400 problem listing field errors `{location: "body.email", message}`;
  bad UTF-8, bad JSON and a missing required body are 400s too, an oversized body a 413, an
  undeclared content type a 415.
- Parsed parameters (coerced to their schema types, spec defaults filled in) and the parsed
  body are left in the request state, so the endpoint does not parse anything again.

The classes plug into connexion through its `validator_map`; `RequestValidationMiddleware`
replaces connexion's middleware of the same name only to build them once per operation
instead of once per request.
"""

from __future__ import annotations

import json
import logging
import re
import typing as t
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import jsonschema_rs
from connexion.datastructures import MediaTypeDict
from connexion.exceptions import NonConformingResponseBody
from connexion.middleware.abstract import RoutedAPI, RoutedMiddleware
from connexion.operations import AbstractOperation
from connexion.utils import is_nullable
from connexion.validators import AbstractRequestBodyValidator, AbstractResponseBodyValidator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hangar.problems import BadRequest, PayloadTooLarge, UnsupportedMediaType
from hangar.requestid import state_of

log = logging.getLogger("hangar.validators")

MAX_BODY_BYTES = 1024 * 1024

_DROP = {
    "example",
    "examples",
    "discriminator",
    "xml",
    "externalDocs",
    "deprecated",
    "readOnly",
    "writeOnly",
    "components",
}


class RequestInvalid(BadRequest):
    """A request that fails the contract (400). Raised before authentication has run, so the
    security gate authenticates first and lets a 401/403 win over it."""


def to_json_schema(schema: Any) -> Any:
    """An OpenAPI 3.0 schema object as JSON Schema 2020-12 (refs already resolved)."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP or key.startswith("x-") or key == "nullable":
            continue
        if key in ("properties", "patternProperties") and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    # Draft 4 style booleans → 2020-12 numbers.
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True and limit in out:
            out[bound] = out.pop(limit)
        elif out.get(bound) is False:
            out.pop(bound)
    if schema.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif "type" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def _sensitive_paths(schema: Any, path: tuple[str, ...] = (), *, marker: str | None = None) -> set[tuple[str, ...]]:
    """Property paths holding `format: password` or `x-sensitive: true` (card numbers): their
    values never appear in messages. With `marker="x-sensitive"`, only the latter."""
    found: set[tuple[str, ...]] = set()
    if not isinstance(schema, dict):
        return found
    if schema.get("x-sensitive") is True or (marker is None and schema.get("format") == "password"):
        found.add(path)
    for name, sub in (schema.get("properties") or {}).items():
        found |= _sensitive_paths(sub, (*path, name), marker=marker)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            found |= _sensitive_paths(sub, path, marker=marker)
    return found


def _at(instance: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(instance, dict) or part not in instance:
            return None
        instance = instance[part]
    return instance


def mask(value: Any) -> Any:
    """What a sensitive value becomes in an idempotency fingerprint: a card number keeps its
    last 4 digits (which responses show anyway), anything shorter keeps only its length."""
    text = str(value)
    return "*" * (len(text) - 4) + text[-4:] if len(text) >= 12 else "*" * len(text)


class CompiledSchema:
    """One OpenAPI schema compiled for fast validation and readable field errors."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._validator = jsonschema_rs.Draft202012Validator(to_json_schema(dict(schema)), validate_formats=True)
        self._sensitive = _sensitive_paths(schema)
        self._masked = sorted(_sensitive_paths(schema, marker="x-sensitive"))

    @property
    def has_masked(self) -> bool:
        return bool(self._masked)

    def masked(self, instance: Any) -> Any:
        """`instance` with every `x-sensitive` value masked (see `mask`), for fingerprints."""
        if not self._masked or not isinstance(instance, dict):
            return instance
        out = json.loads(json.dumps(instance))
        for path in self._masked:
            parent = _at(out, path[:-1]) if path else None
            if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] is not None:
                parent[path[-1]] = mask(parent[path[-1]])
        return out

    def is_valid(self, instance: Any) -> bool:
        return bool(self._validator.is_valid(instance))

    def errors(self, instance: Any, prefix: str) -> list[dict[str, str]]:
        found = []
        # A message about an enclosing object can quote it whole (`[...] is not of type
        # "object"`), sensitive values included: such a message is redacted too.
        secrets = [str(v) for v in (_at(instance, p) for p in self._sensitive) if isinstance(v, str | int) and v != ""]
        for error in self._validator.iter_errors(instance):
            path = [str(p) for p in error.instance_path]
            kind = error.kind
            if type(kind).__name__ == "Required":
                path.append(str(kind.property))  # type: ignore[attr-defined]
            message = error.message
            if tuple(str(p) for p in error.instance_path) in self._sensitive or any(v in message for v in secrets):
                message = _redacted(kind)
            found.append({"location": ".".join([prefix, *path]), "message": message})
        return found


def _redacted(kind: Any) -> str:
    name = type(kind).__name__
    if name == "MinLength":
        return f"is shorter than {kind.limit} characters"
    if name == "MaxLength":
        return f"is longer than {kind.limit} characters"
    if name == "Type":
        return "is not of the expected type"
    return f"does not satisfy `{name[0].lower() + name[1:]}`"


_by_id: dict[int, tuple[Mapping[str, Any], CompiledSchema]] = {}
_by_text: dict[str, CompiledSchema] = {}


def compiled(schema: Mapping[str, Any]) -> CompiledSchema:
    """The compiled form of a spec schema object, compiled on first use.

    Looked up by identity first (free, and connexion hands the same dicts to every request),
    then by content, so apps built again (tests build many) reuse what is compiled and the
    caches stay as small as the set of distinct schemas."""
    hit = _by_id.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    text = json.dumps({k: v for k, v in schema.items() if k != "components"}, sort_keys=True, default=str)
    found = _by_text.get(text)
    if found is None:
        found = _by_text[text] = CompiledSchema(schema)
    if len(_by_id) > 4096:  # ids of dicts from discarded apps: forget them
        _by_id.clear()
    _by_id[id(schema)] = (schema, found)
    return found


# -- parameters ---------------------------------------------------------------------------

# "2764.0" is an integer to JSON Schema 2020-12, so to us too.
_INTEGER = re.compile(r"-?\d+(?:\.0*)?")


def _coerce(raw: str, kind: str | None) -> Any:
    """A parameter's text as its schema type; text that does not parse stays text so the
    schema reports the type error with the value the client sent."""
    if kind == "integer" and _INTEGER.fullmatch(raw):
        return int(raw.split(".", 1)[0])
    if kind == "number":
        try:
            return float(raw) if "." in raw or "e" in raw.lower() else int(raw)
        except ValueError:
            return raw
    if kind == "boolean" and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw


class _Param:
    def __init__(self, definition: Mapping[str, Any]) -> None:
        self.name: str = definition["name"]
        self.location: str = definition["in"]
        self.required: bool = bool(definition.get("required", False))
        schema = definition.get("schema", {})
        self.schema = compiled(schema)
        self.kind = schema.get("type")
        self.item_kind = (schema.get("items") or {}).get("type")
        self.explode = definition.get("explode", definition.get("style", "form") == "form")
        self.has_default = "default" in schema
        self.default = schema.get("default")
        self.nullable = is_nullable(definition)

    def value(self, raw: list[str]) -> Any:
        if self.kind == "array":
            items = raw if self.explode or len(raw) != 1 else raw[0].split(",")
            return [_coerce(v, self.item_kind) for v in items]
        # A scalar given twice: the last one wins, as in connexion.
        return _coerce(raw[-1], self.kind)


class ParameterValidator:
    """connexion's parameter-validator interface, built once per operation.

    `validate(scope)` checks path, query and header parameters against their schemas,
    collecting every error, and stores the coerced values (spec defaults filled in) in the
    request state by spec name."""

    def __init__(
        self,
        parameters: Iterable[Mapping[str, Any]],
        uri_parser: Any = None,
        strict_validation: bool = False,
        security_query_params: Iterable[str] | None = None,
    ) -> None:
        self._params = [_Param(p) for p in parameters if p.get("in") in ("path", "query", "header")]
        self._query_names = {p.name for p in self._params if p.location == "query"} | set(security_query_params or ())
        self._strict = strict_validation
        self._has_query = any(p.location == "query" for p in self._params)
        self._has_header = any(p.location == "header" for p in self._params)

    def validate(self, scope: Scope) -> None:
        if not self._params and not self._strict:
            return
        query: dict[str, list[str]] = {}
        if self._has_query or self._strict:
            for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
                query.setdefault(key, []).append(value)
        headers: dict[str, list[str]] = {}
        if self._has_header:
            for key, value in scope.get("headers", ()):
                headers.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        path_params = scope.get("path_params", {})

        errors: list[dict[str, str]] = []
        values: dict[str, Any] = {}
        if self._strict:
            errors += [
                {"location": f"query.{name}", "message": "is not a parameter of this operation"}
                for name in query
                if name not in self._query_names
            ]
        for param in self._params:
            if param.location == "path":
                raw = [path_params[param.name]] if param.name in path_params else []
            elif param.location == "query":
                raw = query.get(param.name, [])
            else:
                raw = headers.get(param.name.lower(), [])
            location = f"{param.location}.{param.name}"
            if not raw:
                if param.required:
                    errors.append({"location": location, "message": "is required"})
                elif param.has_default:
                    values[param.name] = param.default
                continue
            value = param.value([str(v) for v in raw])
            if param.nullable and value in ("null", ""):
                values[param.name] = None
                continue
            if not param.schema.is_valid(value):
                errors += param.schema.errors(value, location)
                continue
            values[param.name] = value
        if errors:
            raise RequestInvalid("The request's parameters are not valid.", errors=errors)
        state_of(scope).params = values


# -- bodies ---------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes:
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def parse_json(raw: bytes, encoding: str = "utf-8") -> Any:
    """The JSON document in `raw`; a 400 problem for bad bytes or bad JSON, not a 500."""
    try:
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        raise RequestInvalid(
            "The body is not valid text.", errors=[{"location": "body", "message": f"is not valid {encoding}"}]
        ) from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise RequestInvalid(
            "The body is not valid JSON.", errors=[{"location": "body", "message": str(exc)[:200]}]
        ) from None


class JSONBodyValidator(AbstractRequestBodyValidator):
    """connexion's body-validator interface for JSON bodies, compiled once per operation."""

    def __init__(
        self,
        *,
        schema: dict[str, Any],
        required: bool = False,
        nullable: bool = False,
        encoding: str,
        strict_validation: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            schema=schema, required=required, nullable=nullable, encoding=encoding, strict_validation=strict_validation
        )
        self._compiled = compiled(schema)

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        # Read the whole body ourselves rather than trusting Content-Length: a chunked body
        # has none, and connexion would call it missing.
        raw = await read_body(receive)
        if not raw.strip():
            if self._required:
                raise RequestInvalid(
                    "This operation needs a JSON body.", errors=[{"location": "body", "message": "is required"}]
                )
            body = None
        else:
            body = parse_json(raw, self._encoding)
            self._validate(body)
        state = state_of(scope)
        state.body = body
        state.raw_body = raw
        if self._compiled.has_masked:
            state.masked_body = self._compiled.masked(body)
        return _replay(raw), scope

    def _validate(self, body: Any) -> None:
        if body is None and self._nullable:
            return
        try:
            valid = self._compiled.is_valid(body)
        except ValueError as exc:  # a number JSON allows but the validator cannot hold
            raise RequestInvalid(
                "The body is not valid.", errors=[{"location": "body", "message": str(exc)[:200]}]
            ) from None
        if not valid:
            raise RequestInvalid(
                "The body does not match the operation's schema.", errors=self._compiled.errors(body, "body")
            )


class JSONResponseValidator(AbstractResponseBodyValidator):
    """Response validation with the compiled schema; a mismatch is a 500 whose reason goes
    to the log only (hangar.errors)."""

    def __init__(self, scope: Scope, *, schema: dict[str, Any], nullable: bool = False, encoding: str) -> None:
        super().__init__(scope, schema=schema, nullable=nullable, encoding=encoding)
        self._compiled = compiled(schema) if schema else None

    def _parse(self, stream: t.Generator[bytes, None, None]) -> Any:
        raw = b"".join(stream)
        if not raw:
            return None
        try:
            return json.loads(raw.decode(self._encoding))
        except ValueError as exc:
            raise NonConformingResponseBody(f"response body is not JSON: {exc}") from None

    def _validate(self, body: Any) -> None:
        if self._compiled is None or self._compiled.is_valid(body):
            return
        errors = "; ".join(f"{e['location']}: {e['message']}" for e in self._compiled.errors(body, "response")[:10])
        raise NonConformingResponseBody(detail=f"Response body does not conform to specification: {errors}")


VALIDATOR_MAP: dict[str, Any] = {
    "parameter": ParameterValidator,
    "body": MediaTypeDict({"*/*json": JSONBodyValidator}),
    "response": MediaTypeDict({"*/*json": JSONResponseValidator}),
}


# -- the middleware ---------------------------------------------------------------------------


def content_type(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """(media type, charset) of a request; connexion's own parser keeps the space after `;`
    and so never finds the charset."""
    for name, value in headers:
        if name == b"content-type":
            media, *parameters = value.decode("latin-1").split(";")
            charset = None
            for parameter in parameters:
                key, _, val = parameter.strip().partition("=")
                if key.lower() == "charset":
                    charset = val.strip().strip('"') or None
            return media.strip().lower() or None, charset
    return None, None


class _ValidationOperation:
    def __init__(
        self,
        next_app: ASGIApp,
        *,
        operation: AbstractOperation,
        validator_map: Mapping[str, Any],
        strict_validation: bool,
    ) -> None:
        self.next_app = next_app
        self._parameters = validator_map["parameter"](
            operation.parameters, uri_parser=None, strict_validation=strict_validation, security_query_params=()
        )
        self._consumes = [c.lower() for c in operation.consumes]
        self._accepts = MediaTypeDict([(c, None) for c in self._consumes])
        self._body_map = validator_map["body"]
        self._operation = operation
        self._has_body = bool(operation.request_body)
        self._required = bool(operation.request_body.get("required", False)) if self._has_body else False
        self._bodies: dict[tuple[str, str], Any] = {}

    def _body_validator(self, mime: str, encoding: str) -> Any:
        key = (mime, encoding)
        validator = self._bodies.get(key)
        if validator is None:
            schema = self._operation.body_schema(mime)
            try:
                cls = self._body_map[mime]
            except KeyError:
                cls = None
            validator = (
                cls(
                    schema=schema,
                    required=self._required,
                    nullable=is_nullable(self._operation.body_definition(mime)),
                    encoding=encoding,
                    strict_validation=False,
                )
                if cls is not None and schema
                else False
            )
            self._bodies[key] = validator
        return validator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._parameters.validate(scope)
        if self._has_body:
            mime, encoding = content_type(scope["headers"])
            mime = mime or self._consumes[0]
            if mime not in self._accepts:
                raise UnsupportedMediaType(f"Send the body as {', '.join(self._consumes)}, not {mime}.")
            validator = self._body_validator(mime, encoding or "utf-8")
            if validator:
                receive, scope = await validator.wrap_receive(receive, scope=scope)
        await self.next_app(scope, receive, send)


class _ValidationAPI(RoutedAPI[_ValidationOperation]):
    def __init__(
        self, *args: Any, strict_validation: bool = False, validator_map: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.strict_validation = bool(strict_validation)
        self.validator_map = {**VALIDATOR_MAP, **(validator_map or {})}
        self.add_paths()

    def make_operation(self, operation: AbstractOperation) -> _ValidationOperation:
        return _ValidationOperation(
            self.next_app,
            operation=operation,
            validator_map=self.validator_map,
            strict_validation=self.strict_validation,
        )


class RequestValidationMiddleware(RoutedMiddleware[_ValidationAPI]):
    """Validates each routed request with validators prepared at start-up."""

    api_cls = _ValidationAPI
