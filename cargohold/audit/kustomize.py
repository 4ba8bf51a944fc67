"""Renders a kustomize directory with ``kubectl kustomize`` and maps objects back to files.

Called by ``cargohold.cli.audit_cmd`` for ``--kustomize DIR``. The rendered stream is parsed
by ``ManifestLoader``. When the kustomization sets ``buildMetadata: [originAnnotations]``,
kustomize writes each object's source file into the ``config.kubernetes.io/origin``
annotation; findings then point at that file and at the line of the field in it (when the
field is there and not only added by an overlay patch). Without the annotation, findings
point at the kustomize directory itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from cargohold.audit.errors import InputError, KustomizeError
from cargohold.audit.loader import KUSTOMIZATION_FILES, ManifestLoader
from cargohold.audit.manifest import Manifest
from cargohold.audit.settings import AuditSettings

ORIGIN_ANNOTATION = "config.kubernetes.io/origin"


def render(directory: str, settings: AuditSettings | None = None) -> str:
    """The YAML that ``kubectl kustomize DIRECTORY`` prints."""
    settings = settings or AuditSettings()
    kubectl = settings.kubectl
    if not Path(directory).is_dir():
        raise KustomizeError(f"{directory}: not a directory (--kustomize needs a directory)")
    exe = shutil.which(kubectl)
    if exe is None:
        raise KustomizeError(f"{kubectl} not found on PATH; it is needed to render {directory}")
    try:
        proc = subprocess.run(
            [exe, "kustomize", directory],
            capture_output=True,
            text=True,
            timeout=settings.kustomize_timeout_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise KustomizeError(f"{directory}: kubectl kustomize timed out") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
        raise KustomizeError(f"{directory}: kubectl kustomize failed: {detail}")
    return proc.stdout


def load(
    directory: str, loader: ManifestLoader, settings: AuditSettings | None = None
) -> list[Manifest]:
    """Render ``directory`` and return its objects, mapped to their source files if known."""
    text = render(directory, settings)
    rendered = loader.load_text(text, _kustomization_file(Path(directory)), origin="kustomize")
    sources = _SourceFiles()
    out = []
    for manifest in rendered:
        mapped = sources.map(manifest, Path(directory))
        out.append(mapped if mapped is not None else _unlined(manifest))
    return out


def _kustomization_file(directory: Path) -> str:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return str(directory / name)
    return str(directory)


def _unlined(manifest: Manifest) -> Manifest:
    """Line numbers of the rendered stream mean nothing to the user: drop them."""
    return Manifest(obj=manifest.obj, source=manifest.source, origin="kustomize")


class _SourceFiles:
    """Loads each origin file once and finds the document an object was rendered from."""

    def __init__(self) -> None:
        self._cache: dict[Path, list[Manifest]] = {}

    def map(self, manifest: Manifest, directory: Path) -> Manifest | None:
        origin = _origin_path(manifest)
        if origin is None:
            return None
        path = (directory / origin).resolve()
        candidates = self._load(path)
        match = _find_document(manifest, candidates)
        source = _display_path(path)
        if match is None:
            return Manifest(obj=manifest.obj, source=source, origin="kustomize")
        return Manifest(
            obj=manifest.obj, source=source, lines=match.lines, base=match.base, origin="kustomize"
        )

    def _load(self, path: Path) -> list[Manifest]:
        if path not in self._cache:
            try:
                self._cache[path] = ManifestLoader().load_file(path) if path.is_file() else []
            except InputError:
                self._cache[path] = []
        return self._cache[path]


def _origin_path(manifest: Manifest) -> str | None:
    raw = manifest.annotations.get(ORIGIN_ANNOTATION)
    if not raw:
        return None
    try:
        origin = yaml.safe_load(raw)
    except yaml.YAMLError:
        return None
    if not isinstance(origin, dict) or origin.get("repo") or not origin.get("path"):
        return None
    return str(origin["path"])


def _find_document(manifest: Manifest, candidates: list[Manifest]) -> Manifest | None:
    """The source document of a rendered object: same kind, and a name that the rendered
    name contains (kustomize adds prefixes and suffixes)."""
    same_kind = [c for c in candidates if c.kind == manifest.kind]
    for cand in same_kind:
        if cand.name == manifest.name:
            return cand
    for cand in same_kind:
        if cand.name and cand.name in manifest.name:
            return cand
    return same_kind[0] if len(same_kind) == 1 else None


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
