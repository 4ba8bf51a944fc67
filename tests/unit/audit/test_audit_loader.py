"""The loader: multi-document YAML and JSON with lines, directories, stdin, bad input."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from audit_helpers import DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.audit.errors import InputError
from cargohold.audit.loader import ManifestLoader, manifest_files
from cargohold.audit.manifest import Manifest, format_path


def load(*paths: Path | str) -> tuple[list[Manifest], list[str]]:
    loader = ManifestLoader()
    manifests = loader.load_paths([str(p) for p in paths])
    return manifests, loader.warnings


def test_multi_document_yaml_keeps_every_object_and_the_line_of_each_field() -> None:
    manifests, warnings = load(DATA / "rules/ch001/bad.yaml")
    assert [m.name for m in manifests] == ["gp3-immediate", "local-unset", "nfs-two-zones"]
    assert warnings == []
    first, second, third = manifests
    assert first.line_of(()) == 2  # the comment on line 1 is not the object
    assert first.line_of(("volumeBindingMode",)) == 9
    assert first.line_of(("parameters", "type")) == 8
    assert second.line_of(("volumeBindingMode",)) == 14  # absent: the object's first line
    assert third.line_of(("allowedTopologies", 0, "matchLabelExpressions", 0, "values")) == 32
    assert third.location(("volumeBindingMode",)).line == 27
    assert str(third.location(("nope", 3))).endswith("ch001/bad.yaml:22")


def test_tab_indented_json_list_is_expanded_with_lines() -> None:
    manifests, _ = load(DATA / "json/list.json")
    pod, sc = manifests
    assert (pod.kind, pod.namespace, pod.name) == ("Pod", "batch", "tmpfs")
    assert pod.base == ("items", 0)
    assert pod.line_of(()) == 6
    assert pod.line_of(("spec", "volumes", 1, "emptyDir")) == 16
    assert sc.line_of(("volumeBindingMode",)) == 26


def test_json_array_of_objects() -> None:
    manifests, _ = load(DATA / "json/array.json")
    assert [(m.kind, m.name, m.line_of(())) for m in manifests] == [
        ("Pod", "one", 2),
        ("ConfigMap", "settings", 5),
    ]


def test_stdin_is_read_once_and_named() -> None:
    text = (DATA / "rules/ch010/bad.yaml").read_text()
    loader = ManifestLoader()
    manifests = loader.load_paths(["-"], stdin=io.StringIO(text))
    assert [m.source for m in manifests] == ["<stdin>", "<stdin>"]
    assert manifests[0].location(("spec", "volumes", 0, "emptyDir")).line == 14


def test_directories_are_walked_in_order_skipping_kustomizations_and_hidden(
    tmp_path: Path,
) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {}\n"
    (tmp_path / "b" / "two.yml").write_text(doc.format("two"))
    (tmp_path / "a.yaml").write_text(doc.format("one"))
    (tmp_path / "c.json").write_text('{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}')
    (tmp_path / ".hidden.yaml").write_text(doc.format("hidden"))
    (tmp_path / ".git" / "x.yaml").write_text(doc.format("git"))
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\n")
    (tmp_path / "notes.txt").write_text("not yaml")
    assert [p.name for p in manifest_files(tmp_path)] == ["a.yaml", "c.json", "two.yml"]
    manifests, _ = load(tmp_path)
    assert [m.name for m in manifests] == ["one", "", "two"]


def test_documents_that_are_not_objects_are_skipped_with_warnings() -> None:
    manifests, warnings = load(DATA / "errors/not-k8s.yaml")
    assert [m.name for m in manifests] == ["fine"]
    source = str(DATA / "errors/not-k8s.yaml")
    assert warnings == [
        f"{source}:2: document has no kind or apiVersion; skipped",
        f"{source}:6: document is not a mapping; skipped",
        f"{source}:7: document is not a mapping; skipped",
    ]


def test_empty_directory_warns(tmp_path: Path) -> None:
    manifests, warnings = load(tmp_path)
    assert manifests == []
    assert warnings == [f"{tmp_path}: no .yaml, .yml or .json files found"]


def test_empty_and_comment_only_documents_are_ignored() -> None:
    loader = ManifestLoader()
    assert loader.load_text("# nothing\n---\n---\n", "x.yaml") == []
    assert loader.warnings == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("broken.yaml", "broken.yaml:9:1: bad YAML: did not find expected ',' or ']'"),
        ("broken.json", "broken.json:3:27: bad JSON: Expecting property name"),
        ("latin1.yaml", "latin1.yaml: not UTF-8 text (byte 52)"),
        ("missing.yaml", "missing.yaml: no such file or directory"),
    ],
)
def test_bad_input_raises_one_clear_error(name: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        load(DATA / "errors" / name)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_unreadable_file_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(InputError, match="cannot read: Permission denied"):
        load(DATA / "rules/ch011/bad.yaml")


def test_format_path() -> None:
    assert format_path(()) == ""
    assert format_path(("spec", "volumes", 0, "emptyDir")) == "spec.volumes[0].emptyDir"
    assert format_path((0, "a")) == "[0].a"


_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_leaves = st.one_of(st.integers(-1000, 1000), _keys, st.booleans())
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3),
        st.dictionaries(_keys, inner, min_size=1, max_size=3),
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=4))
def test_every_field_of_any_document_has_the_line_of_its_key(body: dict) -> None:
    data = {"apiVersion": "v1", "kind": "Thing", **body}
    text = "# leading comment\n" + yaml.safe_dump(data, default_flow_style=False)
    (manifest,) = ManifestLoader().load_text(text, "gen.yaml")
    assert manifest.obj == data
    lines = text.splitlines()
    for path in _paths(data)[1:]:
        line = manifest.lines[path]
        assert 2 <= line <= len(lines)
        if isinstance(path[-1], str):
            assert lines[line - 1].lstrip(" -'").startswith(path[-1])


def test_yaml_flow_style_that_is_not_json_still_loads() -> None:
    text = "{apiVersion: v1, kind: Pod, metadata: {name: flow},\n spec: {containers: []}}\n"
    (manifest,) = ManifestLoader().load_text(text, "flow.yaml")
    assert (manifest.name, manifest.line_of(("spec",))) == ("flow", 2)


def test_a_broken_json_stream_on_stdin_reports_the_yaml_error() -> None:
    with pytest.raises(InputError, match=r"<stdin>:1:\d+: bad YAML"):
        ManifestLoader().load_paths(["-"], stdin=io.StringIO('{"kind": "Pod",, }'))
