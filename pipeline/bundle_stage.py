"""Stages that bundle the multi-file specs into generated/openapi.json and asyncapi.json."""

from __future__ import annotations

from pathlib import Path

from pipeline.bundle import Bundler
from pipeline.stages import ROOT, Stage, json_text, write_text


def _write_bundle(root: Path, out: Path) -> None:
    write_text(out, json_text(Bundler(root).bundle()))


OPENAPI = Stage(
    name="openapi-bundle",
    inputs=("specs/openapi/*.yaml", "pipeline/bundle.py", "pipeline/bundle_stage.py"),
    outputs=("openapi.json",),
    run=lambda out: _write_bundle(ROOT / "specs/openapi/hangar.yaml", out / "openapi.json"),
)

ASYNCAPI = Stage(
    name="asyncapi-bundle",
    inputs=("specs/asyncapi/*.yaml", "pipeline/bundle.py", "pipeline/bundle_stage.py"),
    outputs=("asyncapi.json",),
    run=lambda out: _write_bundle(ROOT / "specs/asyncapi/hangar.yaml", out / "asyncapi.json"),
)
