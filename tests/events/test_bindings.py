"""The generated event bindings (generated/events/): complete, wire-exact, reproducible."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from asyncapi_python.contrib.codec.json import JsonCodec
from asyncapi_python.contrib.wire.in_memory import InMemoryWire
from pydantic import Field

from generated.events import models
from generated.events._base import WireModel
from generated.events.app import Application
from generated.events.catalog import CATALOG, EVENT_TYPES
from pipeline import events as stage
from pipeline.stages import HEADER, ROOT

from .helpers import sample_data

GENERATED = ROOT / "generated"
PACKAGE = GENERATED / "events"
HAND_WRITTEN_IMPORT = re.compile(r"^\s*(from|import)\s+(hangar|handlers)\b", re.MULTILINE)


def _envelope(event_type: str, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": "2026-11-28T01:02:03.456789Z",
        "organization_id": str(uuid.uuid4()),
        "data": {**sample_data(event_type), **data},
    }


def test_catalog_has_every_message_of_the_contract() -> None:
    bundle = json.loads((GENERATED / "asyncapi.json").read_text())
    names = {m["name"] for m in bundle["components"]["messages"].values()}
    assert names == EVENT_TYPES
    for spec in CATALOG.values():
        channel = bundle["channels"][spec.channel]
        assert spec.address == channel["address"]
        assert spec.exchange == channel["bindings"]["amqp"]["exchange"]["name"] == "hangar.events"
        assert spec.json_schema["properties"]["type"]["enum"] == [spec.type]


def test_every_x_emits_names_an_event_of_the_contract() -> None:
    openapi = json.loads((GENERATED / "openapi.json").read_text())
    emitted = {
        (path, method, event)
        for path, item in openapi["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict)
        for event in op.get("x-emits", [])
    }
    unknown = sorted(e for e in emitted if e[2] not in EVENT_TYPES)
    assert not unknown, f"x-emits names events missing from specs/asyncapi: {unknown}"


def test_generated_files_carry_the_header_and_import_no_hand_written_code() -> None:
    files = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) == 10
    for path in files:
        text = path.read_text()
        assert text.startswith(f"# {HEADER}\n"), path
        assert not re.search(r"^#\s*timestamp:", text, re.MULTILINE), path  # made every run differ
        assert not HAND_WRITTEN_IMPORT.search(text), path


def test_models_are_wire_exact() -> None:
    envelope = _envelope("api_key.created")
    model = CATALOG["api_key.created"].model
    assert json.loads(model.model_validate(envelope).model_dump_json()) == envelope
    with pytest.raises(ValueError, match="secret"):
        model.model_validate(_envelope("api_key.created", secret="x"))  # additionalProperties: false
    for spec in CATALOG.values():
        assert issubclass(spec.model, WireModel), spec.type


def test_application_codec_uses_the_wire_exact_models() -> None:
    """asyncapi-python's own models force extra="allow" and need email-validator; the
    generated Application must encode/decode with generated.events.models instead."""
    app = Application(InMemoryWire())
    for spec in CATALOG.values():
        endpoint = getattr(app.producer, spec.producer)
        codec = endpoint._codecs[0]
        envelope = _envelope(spec.type)
        assert json.loads(codec.encode(spec.model.model_validate(envelope))) == envelope
        with pytest.raises(ValueError):
            codec.decode(json.dumps({**envelope, "unexpected": 1}).encode())
    assert app.producer.publish_api_key_created._codecs[0]._model_class is models.ApiKeyCreatedEvent


def test_upstream_codec_encodes_by_alias_and_without_unset_fields() -> None:
    """JsonCodec calls a bare model_dump_json(); WireModel turns that into the wire form.
    This fails if asyncapi-python's encode-without-by_alias bug shows through again."""

    class Renamed(WireModel):
        class_: str = Field(alias="class")
        camel_case: int = Field(alias="camelCase")
        note: str | None = None

    encoded = JsonCodec(Renamed).encode(Renamed.model_validate({"class": "a", "camelCase": 1}))
    assert json.loads(encoded) == {"class": "a", "camelCase": 1}
    assert JsonCodec(Renamed).decode(encoded) == Renamed(class_="a", camelCase=1)


def test_stage_reports_spec_problems_with_their_location() -> None:
    bundle = json.loads((GENERATED / "asyncapi.json").read_text())
    broken = json.loads(json.dumps(bundle))
    del broken["components"]["messages"]["ApiKeyCreated"]["name"]
    with pytest.raises(stage.EventsStageError, match="#/components/messages/ApiKeyCreated/name"):
        stage.read_events(broken)
    broken = json.loads(json.dumps(bundle))
    broken["components"]["messages"]["ApiKeyRevoked"]["name"] = "api_key.created"
    with pytest.raises(stage.EventsStageError, match="declared twice"):
        stage.read_events(broken)
    broken = json.loads(json.dumps(bundle))
    del broken["channels"]["memberRemoved"]["bindings"]
    with pytest.raises(stage.EventsStageError, match="#/channels/memberRemoved/bindings/amqp"):
        stage.read_events(broken)


@pytest.mark.slow
def test_events_stage_output_is_byte_identical_to_generated(tmp_path: Path) -> None:
    """A fresh run of the stage (asyncapi-python-codegen + datamodel-code-generator + the
    templates) reproduces the committed generated/events/ byte for byte."""
    out = tmp_path / "generated"
    out.mkdir()
    shutil.copy(GENERATED / "asyncapi.json", out / "asyncapi.json")
    stage.run(out)
    fresh = {p.relative_to(out / "events"): p.read_bytes() for p in (out / "events").rglob("*.py")}
    committed = {p.relative_to(PACKAGE): p.read_bytes() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(fresh) == sorted(committed)
    differing = [str(rel) for rel in fresh if fresh[rel] != committed[rel]]
    assert not differing, f"regeneration differs: {differing} — run `make generate`"
