"""Bundle a multi-file OpenAPI/AsyncAPI document into one deterministic JSON document.

Rules (kept deliberately small so a spec author can predict the output):
- An external ``$ref`` to ``file.yaml#/components/<kind>/<Name>`` is hoisted into the root
  document's ``components/<kind>/<Name>`` and rewritten to a local ref. Two different
  definitions under one name are an error.
- Any other external ``$ref`` (a path item, a channel, an operation) is inlined.
- Local refs inside another file keep their pointer: a context file's channels and
  operations are mounted under the same names in the root, which `check_refs` verifies.
- Top-level ``x-`` keys of non-root files (YAML anchor holders) are dropped.
Output is ``json.dumps(sort_keys=True, indent=2)`` so it is byte-identical run to run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml


class BundleError(Exception):
    pass


def _load(path: Path, cache: dict[Path, Any]) -> Any:
    path = path.resolve()
    if path not in cache:
        try:
            cache[path] = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise BundleError(f"{path}: {exc}") from exc
    return cache[path]


def _pointer_get(doc: Any, pointer: str, where: str) -> Any:
    node = doc
    if pointer in ("", "/"):
        return node
    for raw in pointer.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise BundleError(f"{where}: cannot resolve pointer #{pointer}")
    return node


class Bundler:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.cache: dict[Path, Any] = {}
        self.out: dict[str, Any] = {}
        self.hoisted: dict[str, dict[str, Any]] = {}

    def bundle(self) -> dict[str, Any]:
        loaded = _load(self.root, self.cache)
        if not isinstance(loaded, dict):
            raise BundleError(f"{self.root}: not a mapping")
        root_doc = {k: copy.deepcopy(v) for k, v in loaded.items() if not k.startswith("x-")}
        self.hoisted = {}
        walked = self._walk(root_doc, self.root)
        components = walked.setdefault("components", {})
        for kind, entries in self.hoisted.items():
            merged = components.setdefault(kind, {})
            for name, value in entries.items():
                current = merged.get(name)
                if current is not None and current != value and current != {"$ref": f"#/components/{kind}/{name}"}:
                    raise BundleError(f"components/{kind}/{name} is defined twice, differently")
                merged[name] = value
        self.out = walked
        check_refs(self.out, str(self.root))
        return self.out

    def _hoist(self, kind: str, name: str, value: Any, where: str) -> str:
        components = self.hoisted.setdefault(kind, {})
        if name in components and components[name] != value:
            raise BundleError(f"{where}: components/{kind}/{name} is defined twice, differently")
        components[name] = value
        return f"#/components/{kind}/{name}"

    def _walk(self, node: Any, base: Path) -> Any:
        if isinstance(node, list):
            return [self._walk(item, base) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return self._resolve_external(ref, base, extra={k: v for k, v in node.items() if k != "$ref"})
        if isinstance(ref, str) and base != self.root:
            parts = ref[2:].split("/")
            if len(parts) == 3 and parts[0] == "components":
                # A local component ref inside a context file: hoist it too.
                return self._resolve_external(f"{base.name}{ref}", base, extra={})
        return {key: self._walk(value, base) for key, value in node.items()}

    def _resolve_external(self, ref: str, base: Path, extra: dict[str, Any]) -> Any:
        file_part, _, pointer = ref.partition("#")
        target = (base.parent / file_part).resolve()
        if not target.exists():
            raise BundleError(f"{base.name}: $ref {ref!r} names a missing file")
        doc = _load(target, self.cache)
        value = copy.deepcopy(_pointer_get(doc, pointer, f"{base.name} -> {ref}"))
        parts = pointer.lstrip("/").split("/")
        if len(parts) == 3 and parts[0] == "components":
            kind, name = parts[1], parts[2]
            if name not in self.hoisted.get(kind, {}):
                self.hoisted.setdefault(kind, {})[name] = {}  # placeholder: breaks recursive refs
                self.hoisted[kind][name] = self._walk(value, target)
            elif self.hoisted[kind][name] != {}:
                self._hoist(kind, name, self._walk(value, target), f"{target.name}#{pointer}")
            return {"$ref": f"#/components/{kind}/{name}", **extra}
        inlined = self._walk(value, target)
        if extra and isinstance(inlined, dict):
            inlined = {**inlined, **self._walk(extra, base)}
        return inlined


def check_refs(doc: Any, where: str) -> None:
    """Every local $ref in the bundle must resolve."""

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                if not ref.startswith("#"):
                    raise BundleError(f"{where}: external $ref {ref!r} survived bundling")
                _pointer_get(doc, ref[1:], f"{where}: $ref {ref!r}")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(doc)


def bundle_to_json(root: Path) -> str:
    return json.dumps(Bundler(root).bundle(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
