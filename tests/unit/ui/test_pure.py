"""The console's pure parts: the volumes page's filter, sort and pagination, the CSRF
token and origin check, the sparkline's SVG, the conditions list, the snapshot tree, and
the vendored htmx file matching its README."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from cargohold.control.io_history import Rate
from cargohold.control.model import Disk, Node, Robustness, Volume
from cargohold.ui import csrf
from cargohold.ui.conditions import conditions
from cargohold.ui.io_sparks import io_sparks
from cargohold.ui.listing import VolumeQuery, paginate, select
from cargohold.ui.sparkline import per_bucket, points, svg
from cargohold.ui.tree import snapshot_tree

GiB = 1 << 30


def vol(name: str, size: int = 1, rob: str = "healthy", node: str | None = None, **kw) -> Volume:  # type: ignore[no-untyped-def]
    return Volume(
        name=name,
        size_bytes=size * GiB,
        replicas_wanted=3,
        robustness=Robustness(rob),
        attach_node=node,
        created_at=float(size),
        **kw,
    )


VOLS = [
    vol("db-0", 5, "degraded", "node-1", labels={"app": "pg"}),
    vol("db-1", 3, "healthy"),
    vol("queue", 9, "faulted", tenant="blue"),
    vol("cache", 1, "unknown"),
]


def names(q: VolumeQuery) -> list[str]:
    return [v.name for v in select(VOLS, q).items]


def test_filter_sort_and_paginate() -> None:
    assert names(VolumeQuery()) == ["cache", "db-0", "db-1", "queue"]
    assert names(VolumeQuery(sort="size", descending=True)) == ["queue", "db-0", "db-1", "cache"]
    assert names(VolumeQuery(sort="robustness")) == ["queue", "db-0", "cache", "db-1"]
    assert names(VolumeQuery(text="DB")) == ["db-0", "db-1"]
    assert names(VolumeQuery(text="app=pg")) == ["db-0"]
    assert names(VolumeQuery(text="node-1")) == ["db-0"]
    assert names(VolumeQuery(text="blue")) == ["queue"]
    assert names(VolumeQuery(robustness="healthy")) == ["db-1"]
    assert names(VolumeQuery(state="attaching")) == ["db-0"]
    page = select(VOLS, VolumeQuery(page=2, per_page=25))  # clamped to the last page
    assert page.page == 1 and page.pages == 1 and page.total == 4
    big = [vol(f"v-{i:04d}") for i in range(2000)]
    p = select(big, VolumeQuery(page=80, per_page=25, sort="name", descending=True))
    assert (p.page, p.pages, p.total, p.first, p.last) == (80, 80, 2000, 1976, 2000)
    assert [v.name for v in p.items][:2] == ["v-0024", "v-0023"]
    assert paginate([], 3, 25).pages == 1 and paginate([], 3, 25).first == 0


def test_a_query_from_the_url_falls_back_on_nonsense() -> None:
    q = VolumeQuery.parse(
        {"q": " x " * 100, "state": "bogus", "sort": "rm -rf", "page": "-3", "per_page": "7"}
    )
    assert len(q.text) <= 63 and q.state == "" and q.sort == "name" and q.page == 1
    assert q.per_page == 25
    q = VolumeQuery.parse({"robustness": "degraded", "order": "desc", "page": "2", "sort": "size"})
    assert (q.robustness, q.descending, q.page, q.sort) == ("degraded", True, 2, "size")
    assert q.params(page=3) == {
        "robustness": "degraded",
        "order": "desc",
        "page": "3",
        "sort": "size",
    }
    assert VolumeQuery().params() == {}


def test_csrf_tokens_are_bound_to_the_session_and_key() -> None:
    key = csrf.new_key()
    t = csrf.token_for(key, "chk_abc")
    assert csrf.valid(key, "chk_abc", t)
    assert not csrf.valid(key, "chk_abd", t)
    assert not csrf.valid(csrf.new_key(), "chk_abc", t)
    assert not csrf.valid(key, "chk_abc", None) and not csrf.valid(key, "chk_abc", "")
    assert not csrf.valid(key, "chk_abc", t[:-1] + ("0" if t[-1] != "0" else "1"))


def test_the_origin_check() -> None:
    ok = csrf.same_origin
    assert ok("https://mgr:9600", None, "mgr:9600")
    assert ok(None, "https://mgr:9600/ui/volumes", "mgr:9600")
    assert ok(None, None, "mgr:9600")  # tools without either header: the token decides
    assert not ok("https://evil.example", None, "mgr:9600")
    assert not ok(None, "https://evil.example/x", "mgr:9600")
    assert not ok("null", None, "mgr:9600")  # a sandboxed or data: page
    assert not ok("https://mgr:9600", None, None)


def test_the_sparkline() -> None:
    assert per_bucket([0.5, 1.5, 1.6, 2.9, 3.0, -5], end=3.0, bucket=1.0, count=3) == [1, 2, 1]
    pts = points([0, 5, 10], 100, 20)
    assert pts == [(0.0, 19.0), (50.0, 10.0), (100.0, 1.0)]
    assert points([0, 0], 100, 20) == [(0.0, 19.0), (100.0, 19.0)]  # all zero: flat at 0
    assert points([7], 100, 20) == [(0.0, 1.0), (100.0, 1.0)]
    doc = svg([1, 3, 2], "ops <per> second")
    root = ET.fromstring(doc)  # well-formed XML, its label escaped
    assert root.get("aria-label") == "ops <per> second" and root.get("role") == "img"
    poly = root.find("polyline")
    assert poly is not None and len(poly.get("points", "").split()) == 3
    assert "<polyline" not in svg([], "none")


def test_conditions_critical_first() -> None:
    nodes = [
        Node(name="n1", address="a"),
        Node(name="n2", address="a", down_since=5.0),
        Node(name="n3", address="a", error="cluster id mismatch"),
    ]
    disks = [Disk(node="n1", name="d0", path="/d", capacity_bytes=1, warning="95% full")]
    got = [(c.severity, c.kind, c.subject) for c in conditions(VOLS, nodes, disks)]
    assert got == [
        ("critical", "node-down", "n2"),
        ("critical", "volume-faulted", "queue"),
        ("warning", "disk-warning", "n1/d0"),
        ("warning", "node-error", "n3"),
        ("warning", "volume-degraded", "db-0"),
    ]
    gone = vol("old", 1, "faulted", deleting=True)
    assert conditions([gone]) == []


def test_the_snapshot_tree() -> None:
    snaps = [
        {"name": "b", "state": "ready", "created_at": 20.0, "size_bytes": 0},
        {"name": "a", "state": "ready", "created_at": 10.0, "size_bytes": 0},
        {"name": "clone-c2-x1", "state": "ready", "created_at": 30.0, "size_bytes": 0},
    ]
    clones = [
        {"name": "c1", "source": {"volume": "v", "snapshot": "a"}},
        {"name": "c2", "source": {"volume": "v", "snapshot": None}},
        {"name": "c3", "source": {"volume": "v", "snapshot": "gone"}},
    ]
    tree = snapshot_tree(snaps, clones)
    assert [(n.name, n.clones) for n in tree] == [
        ("a", ["c1"]),
        ("b", []),
        ("clone-c2-x1", ["c2"]),
        ("(deleted snapshot)", ["c3"]),
    ]


def test_the_vendored_htmx_is_the_one_its_readme_names() -> None:
    static = Path(__file__).resolve().parents[3] / "cargohold/ui/static"
    readme = (static / "README.md").read_text()
    want = re.search(r"sha256 `([0-9a-f]{64})`", readme)
    assert want is not None
    assert hashlib.sha256((static / "htmx.min.js").read_bytes()).hexdigest() == want.group(1)
    assert "htmx 2.0.11" in readme and '"2.0.11"' in (static / "htmx.min.js").read_text()
    assert (static / "LICENSE.htmx").exists()


def test_io_sparks_say_the_last_value_and_the_peak_and_draw_gaps_at_zero() -> None:
    assert io_sparks("v", []) == [] and io_sparks("v", [None, None]) == []
    rates = [
        Rate(1.0, 40.0, 0.0, 4e6, 0.0),
        None,  # detached
        Rate(3.0, 10.0, 2.5, 1e6, 2.5e5),
    ]
    sparks = io_sparks("pv-a", rates)
    assert [s.what for s in sparks] == ["read IOPS", "write IOPS", "read MB/s", "write MB/s"]
    assert [s.text for s in sparks] == [
        "read IOPS: now 10, peak 40",
        "write IOPS: now 2.5, peak 2.5",
        "read MB/s: now 1.0, peak 4.0",
        "write MB/s: now 0.2, peak 0.2",
    ]
    assert 'aria-label="read IOPS of pv-a, last 3 samples; read IOPS: now 10, peak 40"' in (
        sparks[0].svg
    )
    assert 'points="0,23 60,23 120,1"' in sparks[1].svg  # the gap drawn at 0
    ended = io_sparks("pv-a", [*rates, None])  # detached since: nothing now
    assert ended[0].text == "read IOPS: now 0.0, peak 40"
