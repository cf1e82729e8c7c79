"""Stage: generated/openapi.json → generated/models.py (pydantic v2, datamodel-code-generator).

Runs the generator in-process (its Python API) rather than through its CLI: it saves the
interpreter start-up and import time of a second process on every full regeneration.
The flags follow docs/LIBRARY-NOTES; the ones that are ours, and why:
- ``strict_nullable``: OpenAPI 3.0 ``nullable: true`` on a required field (``next_cursor``)
  must become ``str | None``; without it the model rejects a last page.
- ``type_mappings string+email=string``: pydantic's EmailStr needs the email-validator
  package and is stricter than the spec's ``format: email`` + pattern, so a body connexion
  accepted could be rejected by the model (a 400 schemathesis would rightly call a bug).
- ``custom_file_header``: the first line of every generated file is stages.header().
"""

from __future__ import annotations

import json
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.stages import HEADER, ROOT, Stage, write_text

# Ruff runs with this directory as its working directory, so the formatting of generated
# code depends on this ruff.toml (and the pinned ruff) only, not on the project's settings.
RUFF_SETTINGS = ROOT / "templates" / "ruff"


def tool_versions(*distributions: str) -> str:
    """A stage salt: regenerate when a tool that shapes the output is upgraded."""
    return " ".join(f"{name}=={metadata.version(name)}" for name in distributions)


def _options() -> dict[str, Any]:
    # Imported lazily: datamodel_code_generator takes ~0.3 s to import, and a no-op
    # `codegen.py generate` must not pay for it.
    from datamodel_code_generator import (
        DataModelType,
        DefaultValueType,
        InputFileType,
        LiteralType,
        PythonVersion,
    )
    from datamodel_code_generator.format import Formatter

    return {
        "input_file_type": InputFileType.OpenAPI,
        "output_model_type": DataModelType.PydanticV2BaseModel,
        "target_python_version": PythonVersion.PY_311,
        "use_annotated": True,
        "field_constraints": True,
        "use_standard_collections": True,
        "use_union_operator": True,
        "collapse_root_models": True,
        "use_type_alias": True,
        "snake_case_field": True,
        "allow_population_by_field_name": True,
        "use_schema_description": True,
        "use_field_description": True,
        "use_double_quotes": True,
        "enum_field_as_literal": LiteralType.Off,
        "use_subclass_enum": True,
        "deserialize_default_values": [DefaultValueType.Enum],
        "formatters": [Formatter.RUFF_FORMAT, Formatter.RUFF_CHECK],
        "disable_timestamp": True,
        "strict_nullable": True,
        "type_mappings": ["string+email=string"],
        "settings_path": RUFF_SETTINGS,
        "custom_file_header": f"# {HEADER}",
    }


def render_models(spec: dict[str, Any]) -> str:
    """The text of models.py for a bundled OpenAPI document."""
    from datamodel_code_generator import generate

    with warnings.catch_warnings():
        # "Pydantic does not take max_length on UUID/AwareDatetime": the spec bounds those
        # strings for the OWASP lint; the typed field is stricter than the bound anyway.
        warnings.simplefilter("ignore", UserWarning)
        text = generate(spec, **_options())
    if not isinstance(text, str):
        raise RuntimeError("datamodel-code-generator returned modules, expected one file")
    return text if text.endswith("\n") else text + "\n"


def run(out_root: Path) -> None:
    spec = json.loads((out_root / "openapi.json").read_text(encoding="utf-8"))
    write_text(out_root / "models.py", render_models(spec))


STAGE = Stage(
    name="models",
    inputs=("generated/openapi.json", "pipeline/models.py", "templates/ruff/ruff.toml"),
    outputs=("models.py",),
    run=run,
    salt=tool_versions("datamodel-code-generator", "pydantic", "ruff"),
    after=("openapi-bundle",),
)
