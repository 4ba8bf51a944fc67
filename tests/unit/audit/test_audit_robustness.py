"""Malformed manifests never crash the auditor: whatever the shape, it reports or skips.

Every field of every object of the good and bad corpus is replaced, one at a time, by a
value of the wrong type; then random nested junk goes into several fields at once.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from audit_helpers import DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.audit.engine import audit
from cargohold.audit.loader import ManifestLoader
from cargohold.audit.manifest import Manifest
from cargohold.audit.workloads import Claim

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["", "x", "Memory", "true"])
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "name"]), inner)
    ),
    max_leaves=6,
)
FILES = sorted(
    p for p in [*(DATA / "rules").rglob("*.yaml"), *(DATA / "clean").iterdir()] if p.is_file()
)
CORPUS = [m.obj for m in ManifestLoader().load_paths([str(p) for p in FILES])]
WRONG_TYPES = ("x", [1], {"a": "b"}, None, 7)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = obj
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return obj


def test_every_field_of_the_corpus_can_have_the_wrong_type() -> None:
    audited = 0
    for file in FILES:
        objs = [m.obj for m in ManifestLoader().load_paths([str(file)])]
        for index, obj in enumerate(objs):
            for path in _paths(obj)[1:]:
                if path[0] in ("apiVersion", "kind"):
                    continue
                for wrong in WRONG_TYPES:
                    mutated = copy.deepcopy(objs)
                    mutated[index] = _replace(mutated[index], path, wrong)
                    audit(Manifest(obj=o, source=file.name) for o in mutated)
                    audited += 1
    assert audited > 5000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_field_of_any_corpus_object_can_hold_junk(data: st.DataObject) -> None:
    objs = copy.deepcopy(CORPUS)
    for _ in range(3):
        index = data.draw(st.integers(0, len(objs) - 1))
        paths = [p for p in _paths(objs[index]) if p[:1] not in (("apiVersion",), ("kind",))]
        path = data.draw(st.sampled_from(paths[1:]))
        objs[index] = _replace(objs[index], path, data.draw(_junk))
    text = "\n---\n".join(json.dumps(o) for o in objs)
    result = audit(ManifestLoader().load_text(text, "junk.yaml"))
    assert result.objects == len(objs)


def test_a_single_access_mode_written_as_a_string_is_understood() -> None:
    text = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: ReadWriteMany}
"""
    (manifest,) = ManifestLoader().load_text(text, "pvc.yaml")
    claim = Claim(manifest=manifest, path=(), source="pvc", name="data")
    assert claim.access_modes == ("ReadWriteMany",)
