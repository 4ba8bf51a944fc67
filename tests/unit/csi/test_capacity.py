"""GetCapacity's arithmetic (csi/capacity.py): N replicas need N distinct nodes, each
replica whole on one disk; selectors, node states and replicas already placed count."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.csi.capacity import BLOCK, Capacity, node_free, replicated

GIB = 1 << 30


def test_three_equal_nodes() -> None:
    free = {n: [100 * GIB] for n in "abc"}
    assert replicated(free, 1) == Capacity(300 * GIB, 100 * GIB)
    assert replicated(free, 3) == Capacity(100 * GIB, 100 * GIB)
    assert replicated(free, 2) == Capacity(150 * GIB, 100 * GIB)
    assert replicated(free, 4) == Capacity(0, 0)  # fewer nodes than replicas


def test_one_big_node_cannot_hold_two_replicas_of_a_volume() -> None:
    free = {"big": [1000 * GIB], "small": [10 * GIB]}
    assert replicated(free, 2) == Capacity(10 * GIB, 10 * GIB)
    assert replicated(free, 1) == Capacity(1010 * GIB, 1000 * GIB)


def test_a_replica_sits_on_one_disk() -> None:
    free = {"a": [60 * GIB, 60 * GIB], "b": [100 * GIB]}
    got = replicated(free, 2)
    assert got.maximum == 60 * GIB  # a's 120 GiB are two disks of 60
    assert got.available == 100 * GIB


def test_results_are_block_multiples() -> None:
    got = replicated({"a": [10 * GIB + 123], "b": [10 * GIB + 5000]}, 2)
    assert got.available % BLOCK == 0 and got.maximum % BLOCK == 0
    with pytest.raises(ValueError):
        replicated({}, 0)


NODES = [
    {"name": "a", "state": "up", "tags": ["ssd"]},
    {"name": "b", "state": "up", "tags": []},
    {"name": "c", "state": "down", "tags": ["ssd"]},
    {"name": "d", "state": "cordoned", "tags": ["ssd"]},
]
DISKS = [
    {"node": "a", "name": "d0", "capacity_bytes": 100, "tags": ["nvme"]},
    {"node": "a", "name": "d1", "capacity_bytes": 50, "tags": [], "schedulable": False},
    {"node": "b", "name": "d0", "capacity_bytes": 80, "tags": ["nvme"]},
    {"node": "b", "name": "d1", "capacity_bytes": 40, "tags": []},
    {"node": "c", "name": "d0", "capacity_bytes": 500, "tags": ["nvme"]},
    {"node": "d", "name": "d0", "capacity_bytes": 500, "tags": ["nvme"]},
]
REPLICAS = [
    {"volume": "v", "node": "a", "disk": "d0", "state": "running"},
    {"volume": "v", "node": "b", "disk": "d1", "state": "running"},
    {"volume": "w", "node": "b", "disk": "d0", "state": "deleting"},
]


def test_node_free_counts_only_what_the_class_could_use() -> None:
    sizes = {"v": 30, "w": 70}
    assert node_free(NODES, DISKS, REPLICAS, sizes) == {"a": [70], "b": [80, 10]}
    assert node_free(NODES, DISKS, REPLICAS, sizes, node_tags=["ssd"]) == {"a": [70]}
    assert node_free(NODES, DISKS, REPLICAS, sizes, disk_tags=["nvme"]) == {"a": [70], "b": [80]}
    assert node_free(NODES, DISKS, REPLICAS, sizes, node_tags=["gpu"]) == {}
    full = [{"volume": "v", "node": "b", "disk": "d1", "state": "running"}]
    assert node_free(NODES, DISKS, full, {"v": 1000})["b"] == [80, 0]


def brute_maximum(free: dict[str, list[int]], n: int) -> int:
    best = 0
    for nodes in itertools.combinations([v for v in free.values() if v], n):
        best = max(best, min(max(v) for v in nodes))
    return best // BLOCK * BLOCK


FREE = st.dictionaries(
    st.sampled_from("abcdef"),
    st.lists(st.integers(0, 64).map(lambda k: k * BLOCK * 3 + 5), max_size=3),
    max_size=6,
)


@given(FREE, st.integers(1, 4))
def test_maximum_is_the_largest_volume_that_fits(free: dict[str, list[int]], n: int) -> None:
    assert replicated(free, n).maximum == brute_maximum(free, n)


@given(FREE, st.integers(1, 4))
def test_available_is_the_largest_total_that_fits(free: dict[str, list[int]], n: int) -> None:
    got = replicated(free, n)
    per_node = [sum(v) for v in free.values() if v]

    def fits(total: int) -> bool:
        return sum(min(c, total) for c in per_node) >= n * total

    if len([v for v in free.values() if v]) < n:
        assert got == Capacity(0, 0)
        return
    assert got.available % BLOCK == 0 and fits(got.available)
    assert not fits(got.available + BLOCK)
    assert got.available <= sum(per_node) // n
    assert got.maximum <= got.available or got.available == 0
