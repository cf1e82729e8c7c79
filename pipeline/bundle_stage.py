"""Stages that bundle the multi-file specs into generated/openapi.json and asyncapi.json."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.bundle import Bundler
from pipeline.stages import HEADER, ROOT, Stage, write_text


def _write_bundle(root: Path, out: Path) -> None:
    doc = Bundler(root).bundle()
    doc["x-generated"] = HEADER
    write_text(out, json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n")


OPENAPI = Stage(
    name="openapi-bundle",
    inputs=("specs/openapi/*.yaml", "pipeline/bundle.py"),
    outputs=("openapi.json",),
    run=lambda out: _write_bundle(ROOT / "specs/openapi/hangar.yaml", out / "openapi.json"),
)

ASYNCAPI = Stage(
    name="asyncapi-bundle",
    inputs=("specs/asyncapi/*.yaml", "pipeline/bundle.py"),
    outputs=("asyncapi.json",),
    run=lambda out: _write_bundle(ROOT / "specs/asyncapi/hangar.yaml", out / "asyncapi.json"),
)
