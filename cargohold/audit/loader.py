"""Reads manifests from files, directories and stdin into ``Manifest`` values with lines.

Called by ``cargohold.cli.audit_cmd`` (and by ``kustomize`` for rendered output). YAML
streams may hold many documents; JSON files may hold one object, an array of objects or a
``kind: List``. Every field keeps its 1-based line so findings can point at it. Anything
that cannot be read or parsed raises ``InputError`` with the file, line and column;
documents that are not Kubernetes objects are skipped with a warning.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from cargohold.audit.errors import InputError
from cargohold.audit.manifest import FieldPath, Manifest

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
STDIN = "-"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ManifestLoader:
    """Collects manifests from many inputs; ``warnings`` lists what was skipped and why."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    # --- inputs ---------------------------------------------------------------------

    def load_paths(self, paths: Iterable[str], stdin: TextIO | None = None) -> list[Manifest]:
        """Load every file, directory (recursively) or ``-`` (stdin) in ``paths``."""
        manifests: list[Manifest] = []
        for raw in paths:
            if raw == STDIN:
                manifests += self.load_stream(stdin if stdin is not None else sys.stdin)
                continue
            path = Path(raw)
            if path.is_dir():
                files = list(manifest_files(path))
                if not files:
                    self.warnings.append(f"{raw}: no .yaml, .yml or .json files found")
                for file in files:
                    manifests += self.load_file(file)
            elif path.exists():
                manifests += self.load_file(path)
            else:
                raise InputError(f"{raw}: no such file or directory")
        return manifests

    def load_file(self, path: Path, *, origin: str = "file") -> list[Manifest]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        return self.load_text(text, str(path), origin=origin, json_hint=path.suffix == ".json")

    def load_stream(self, stream: TextIO) -> list[Manifest]:
        try:
            text = stream.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"<stdin>: cannot read: {exc}") from None
        return self.load_text(text, "<stdin>", origin="stdin")

    # --- parsing --------------------------------------------------------------------

    def load_text(
        self, text: str, source: str, *, origin: str = "file", json_hint: bool = False
    ) -> list[Manifest]:
        """Parse one YAML stream or JSON document into manifests."""
        is_file = origin in ("file", "stdin", "kustomize")
        if json_hint:
            docs = _parse_json(text, source)
        elif text.lstrip()[:1] in ("{", "["):
            # Probably JSON (kubectl get -o json); YAML flow style also starts this way.
            try:
                docs = _parse_json(text, source)
            except InputError:
                docs = _parse_yaml(text, source)
        else:
            docs = _parse_yaml(text, source)
        manifests: list[Manifest] = []
        for data, lines, base in docs:
            manifests += self._objects(data, lines, base, source, origin, is_file)
        return manifests

    def _objects(
        self,
        data: Any,
        lines: dict[FieldPath, int],
        base: FieldPath,
        source: str,
        origin: str,
        is_file: bool,
    ) -> list[Manifest]:
        where = f"{source}:{lines[base]}" if base in lines else source
        if data is None:
            return []
        if isinstance(data, list):
            out: list[Manifest] = []
            for i, item in enumerate(data):
                out += self._objects(item, lines, (*base, i), source, origin, is_file)
            return out
        if not isinstance(data, dict):
            self.warnings.append(f"{where}: document is not a mapping; skipped")
            return []
        kind = data.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(data.get("items"), list):
            return self._objects(data["items"], lines, (*base, "items"), source, origin, is_file)
        if not kind or not data.get("apiVersion"):
            self.warnings.append(f"{where}: document has no kind or apiVersion; skipped")
            return []
        return [
            Manifest(
                obj=data, source=source, lines=lines, base=base, is_file=is_file, origin=origin
            )
        ]


def manifest_files(root: Path) -> Iterator[Path]:
    """Manifest files under ``root`` in a stable order; hidden entries and kustomization
    files (not Kubernetes objects) are left out."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name in KUSTOMIZATION_FILES:
                continue
            if name.endswith(MANIFEST_SUFFIXES):
                yield Path(dirpath) / name


def _parse_yaml(text: str, source: str) -> list[tuple[Any, dict[FieldPath, int], FieldPath]]:
    loader = _Loader(text)
    docs: list[tuple[Any, dict[FieldPath, int], FieldPath]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            assert node is not None  # check_node() said there is one
            data = loader.construct_document(node)
            lines: dict[FieldPath, int] = {}
            _index_lines(node, (), lines)
            docs.append((data, lines, ()))
    except yaml.YAMLError as exc:
        raise InputError(_yaml_error_text(exc, source)) from None
    finally:
        loader.dispose()
    return docs


def _parse_json(text: str, source: str) -> list[tuple[Any, dict[FieldPath, int], FieldPath]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}:{exc.lineno}:{exc.colno}: bad JSON: {exc.msg}") from None
    # Valid JSON only has tabs between tokens, so swapping them for spaces lets the YAML
    # composer (a JSON superset that keeps marks) find the line of every field.
    lines: dict[FieldPath, int] = {}
    try:
        node = yaml.compose(text.replace("\t", " "), Loader=_Loader)
    except yaml.YAMLError:
        node = None
    if node is not None:
        _index_lines(node, (), lines)
    return [(data, lines, ())]


def _index_lines(node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int]) -> None:
    """Record the line of ``node`` under ``path`` and recurse into its children."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            child = (*path, key.value)
            lines[child] = key.start_mark.line + 1
            _index_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), lines)


def _yaml_error_text(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: bad YAML: {detail}"
