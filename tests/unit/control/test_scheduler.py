"""The scheduler: a pure function, tested directly — examples for every rule and every
reason a placement fails (with the message a platform engineer reads), then properties
checked by hypothesis against a brute-force search on small clusters."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.control.model import Disk, Node, Replica
from cargohold.control.scheduler import PlacementRequest, human_size, place
from cargohold.errors import InvalidArgument, Unschedulable

GiB = 1 << 30


def node(name: str, zone: str = "", *, tags=(), down=False, cordoned=False, draining=False):  # type: ignore[no-untyped-def]
    return Node(
        name=name,
        zone=zone,
        address="10.0.0.1",
        tags=list(tags),
        cordoned=cordoned or draining,
        draining=draining,
        down_since=1.0 if down else None,
    )


def disk(node_: str, name: str = "disk-0", capacity: int = 100 * GiB, *, tags=(), ok=True):  # type: ignore[no-untyped-def]
    return Disk(
        node=node_, name=name, path=f"/d/{node_}/{name}", capacity_bytes=capacity,
        tags=list(tags), schedulable=ok,
    )  # fmt: skip


_ids = itertools.count()


def replica(volume: str, node_: str, disk_: str = "disk-0", size: int = GiB, *, deleting=False):  # type: ignore[no-untyped-def]
    return Replica(
        id=f"{volume}-r{next(_ids):06x}", volume=volume, node=node_, disk=disk_,
        size_bytes=size, deleting=deleting,
    )  # fmt: skip


def req(count: int = 3, size: int = GiB, volume: str = "data", **kw) -> PlacementRequest:  # type: ignore[no-untyped-def]
    return PlacementRequest(volume=volume, size_bytes=size, count=count, **kw)


def cluster(n: int, zones: str = "", capacity: int = 100 * GiB):  # type: ignore[no-untyped-def]
    """n nodes node-a, node-b, ... with one disk each; zones round-robin from the letters."""
    names = [f"node-{chr(ord('a') + i)}" for i in range(n)]
    zs = zones.split(",") if zones else [""]
    nodes = [node(x, zs[i % len(zs)]) for i, x in enumerate(names)]
    return nodes, [disk(x, capacity=capacity) for x in names]


def unschedulable(*args, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Unschedulable) as e:
        place(*args, **kw)
    return str(e.value)


# --- the basics ------------------------------------------------------------------------
def test_three_replicas_on_three_distinct_nodes() -> None:
    nodes, disks = cluster(3)
    got = place(req(3), nodes, disks, [])
    assert sorted(got) == [("node-a", "disk-0"), ("node-b", "disk-0"), ("node-c", "disk-0")]


def test_zero_replicas_is_an_empty_placement() -> None:
    assert place(req(0), [], [], []) == []


def test_negative_count_or_size_is_a_bad_request() -> None:
    nodes, disks = cluster(3)
    with pytest.raises(InvalidArgument):
        place(req(-1), nodes, disks, [])
    with pytest.raises(InvalidArgument):
        place(req(1, size=-1), nodes, disks, [])
    with pytest.raises(InvalidArgument):
        place(req(1), nodes, disks, [], overprovisioning=0)


def test_the_least_allocated_disk_and_node_win() -> None:
    nodes, _ = cluster(3)
    disks = [
        disk("node-a", "disk-0"),
        disk("node-a", "disk-1"),
        disk("node-b", "disk-0"),
        disk("node-c", "disk-0"),
    ]
    reps = [
        replica("other", "node-a", "disk-0", 50 * GiB),
        replica("other", "node-b", "disk-0", 10 * GiB),
        replica("more", "node-c", "disk-0", 30 * GiB),
    ]
    assert place(req(1), nodes, disks, reps) == [("node-a", "disk-1")]  # empty disk
    assert place(req(2), nodes, disks, reps) == [("node-a", "disk-1"), ("node-b", "disk-0")]


def test_fractions_not_bytes_decide_between_disks() -> None:
    nodes = [node("node-a")]
    disks = [disk("node-a", "big", 1000 * GiB), disk("node-a", "small", 10 * GiB)]
    reps = [replica("x", "node-a", "big", 100 * GiB), replica("y", "node-a", "small", 5 * GiB)]
    assert place(req(1), nodes, disks, reps) == [("node-a", "big")]  # 10% < 50%


def test_ties_go_by_name_and_input_order_does_not_matter() -> None:
    nodes, disks = cluster(5)
    want = place(req(3), nodes, disks, [])
    assert want == [("node-a", "disk-0"), ("node-b", "disk-0"), ("node-c", "disk-0")]
    rnd = random.Random(7)
    for _ in range(20):
        n, d = nodes[:], disks[:]
        rnd.shuffle(n)
        rnd.shuffle(d)
        assert place(req(3), n, d, []) == want


# --- zones -------------------------------------------------------------------------------
def test_three_zones_three_replicas_land_in_three_zones() -> None:
    # six nodes, two per zone, listed so that names alone would pick a, b, c = zones a, b, a
    nodes = [
        node("node-a", "z1"),
        node("node-b", "z1"),
        node("node-c", "z2"),
        node("node-d", "z2"),
        node("node-e", "z3"),
        node("node-f", "z3"),
    ]
    disks = [disk(n.name) for n in nodes]
    got = place(req(3), nodes, disks, [])
    zones = {n.name: n.zone for n in nodes}
    assert sorted(zones[n] for n, _ in got) == ["z1", "z2", "z3"]


def test_two_zones_three_replicas_split_two_and_one() -> None:
    nodes, disks = cluster(6, "z1,z2")
    got = place(req(3), nodes, disks, [])
    zones = {n.name: n.zone for n in nodes}
    assert sorted(Counter(zones[n] for n, _ in got).values()) == [1, 2]


def test_five_replicas_over_three_zones_split_two_two_one() -> None:
    nodes, disks = cluster(9, "z1,z2,z3")
    got = place(req(5), nodes, disks, [])
    zones = {n.name: n.zone for n in nodes}
    assert sorted(Counter(zones[n] for n, _ in got).values()) == [1, 2, 2]


def test_zones_used_by_existing_replicas_are_avoided() -> None:
    nodes, disks = cluster(6, "z1,z2,z3")  # a z1, b z2, c z3, d z1, e z2, f z3
    reps = [replica("data", "node-a"), replica("data", "node-b")]
    got = place(req(1), nodes, disks, reps)
    assert got == [("node-c", "disk-0")]  # z3: the only zone the volume is not in
    reps.append(replica("data", "node-c"))
    # every zone used once: one more goes anywhere but a used node, fewest-first
    assert place(req(1), nodes, disks, reps) == [("node-d", "disk-0")]


def test_zone_spread_off_ignores_zones() -> None:
    nodes = [node("node-a", "z1"), node("node-b", "z1"), node("node-c", "z2")]
    disks = [disk(n.name) for n in nodes]
    assert place(req(2, zone_spread=False), nodes, disks, []) == [
        ("node-a", "disk-0"),
        ("node-b", "disk-0"),
    ]
    got = place(req(2), nodes, disks, [])
    assert {n for n, _ in got} == {"node-a", "node-c"}


def test_nodes_without_a_zone_are_each_a_zone_of_their_own() -> None:
    nodes = [node("node-a", "z1"), node("node-b", "z1"), node("node-c"), node("node-d")]
    disks = [disk(n.name) for n in nodes]
    got = place(req(3), nodes, disks, [])
    # one of z1, and the two unzoned nodes, rather than two nodes of z1
    assert sorted(n for n, _ in got) == ["node-a", "node-c", "node-d"]


def test_fewer_zones_than_replicas_still_places_every_replica() -> None:
    nodes, disks = cluster(3, "only")
    assert len(place(req(3), nodes, disks, [])) == 3


def test_a_zone_with_one_usable_node_takes_one_replica() -> None:
    nodes = [node("node-a", "z1"), node("node-b", "z2"), node("node-c", "z2"), node("node-d", "z2")]
    disks = [disk(n.name) for n in nodes]
    got = place(req(3), nodes, disks, [])
    assert "node-a" in {n for n, _ in got}
    assert len({n for n, _ in got}) == 3


# --- existing replicas -------------------------------------------------------------------
def test_existing_replicas_occupy_their_nodes() -> None:
    nodes, disks = cluster(4)
    reps = [replica("data", "node-a"), replica("data", "node-b")]
    got = place(req(2), nodes, disks, reps)
    assert sorted(n for n, _ in got) == ["node-c", "node-d"]


def test_replicas_of_other_volumes_do_not_occupy_nodes() -> None:
    nodes, disks = cluster(3)
    reps = [replica("other", n.name) for n in nodes]
    assert len(place(req(3), nodes, disks, reps)) == 3


def test_deleting_replicas_neither_occupy_nodes_nor_space() -> None:
    nodes, _ = cluster(1)
    disks = [disk("node-a", capacity=10 * GiB)]
    reps = [
        replica("data", "node-a", size=5 * GiB, deleting=True),
        replica("other", "node-a", size=20 * GiB, deleting=True),
    ]
    assert place(req(1, size=10 * GiB), nodes, disks, reps, overprovisioning=1.0) == [
        ("node-a", "disk-0")
    ]


def test_every_node_already_holds_one() -> None:
    nodes, disks = cluster(2)
    reps = [replica("data", "node-a"), replica("data", "node-b")]
    msg = unschedulable(req(1), nodes, disks, reps)
    assert msg == (
        "volume data: 1 more replica (it has 2) requested, 0 schedulable nodes: "
        "node-a already holds a replica of data; node-b already holds a replica of data"
    )


# --- capacity ---------------------------------------------------------------------------
def test_overprovisioning_lets_a_disk_hold_more_than_its_capacity() -> None:
    nodes, _ = cluster(1)
    disks = [disk("node-a", capacity=20 * GiB)]
    reps = [replica("other", "node-a", size=30 * GiB)]
    assert place(req(1, size=10 * GiB), nodes, disks, reps) == [("node-a", "disk-0")]  # 40 <= 40
    with pytest.raises(Unschedulable):
        place(req(1, size=10 * GiB + 4096), nodes, disks, reps)
    with pytest.raises(Unschedulable):
        place(req(1, size=10 * GiB), nodes, disks, reps, overprovisioning=1.5)


def test_no_room_says_how_full_the_disk_is() -> None:
    nodes = [node("node-a"), node("node-b", down=True), node("node-c")]
    disks = [disk("node-a"), disk("node-b"), disk("node-c", capacity=20 * GiB)]
    reps = [replica("other", "node-c", size=38 * GiB)]
    msg = unschedulable(req(3, size=10 * GiB), nodes, disks, reps)
    assert msg == (
        "volume data: 3 replicas requested, 1 schedulable node: node-b is down; "
        "node-c has no disk with room for 10 GiB (disk-0: 38 GiB of 20 GiB allocated, "
        "over-provisioning 2.0 allows 40 GiB)"
    )


def test_a_full_disk_falls_back_to_another_on_the_same_node() -> None:
    nodes = [node("node-a")]
    disks = [disk("node-a", "disk-0", 10 * GiB), disk("node-a", "disk-1", 10 * GiB)]
    reps = [replica("other", "node-a", "disk-0", 20 * GiB)]
    assert place(req(1, size=GiB), nodes, disks, reps) == [("node-a", "disk-1")]


def test_a_node_without_disks_is_named() -> None:
    nodes = [node("node-a"), node("node-b")]
    msg = unschedulable(req(2), nodes, [disk("node-a")], [])
    assert msg.endswith("1 schedulable node: node-b has no disks")


def test_too_few_nodes_says_so() -> None:
    nodes, disks = cluster(2)
    assert unschedulable(req(3), nodes, disks, []) == (
        "volume data: 3 replicas requested, 2 schedulable nodes: the cluster has no other "
        "nodes, and a volume's replicas go to distinct nodes"
    )


def test_no_nodes_at_all() -> None:
    msg = unschedulable(req(1), [], [], [])
    assert msg == "volume data: 1 replica requested, 0 schedulable nodes: no nodes are registered"


# --- node states -------------------------------------------------------------------------
def test_cordoned_node_is_skipped_and_named() -> None:
    nodes = [node("node-a"), node("node-b"), node("node-c", cordoned=True)]
    disks = [disk(n.name) for n in nodes]
    assert sorted(n for n, _ in place(req(2), nodes, disks, [])) == ["node-a", "node-b"]
    msg = unschedulable(req(3), nodes, disks, [])
    assert msg == "volume data: 3 replicas requested, 2 schedulable nodes: node-c is cordoned"


def test_down_and_draining_nodes_are_named() -> None:
    nodes = [node("node-a"), node("node-b", down=True), node("node-c", draining=True)]
    disks = [disk(n.name) for n in nodes]
    msg = unschedulable(req(2), nodes, disks, [])
    assert msg == (
        "volume data: 2 replicas requested, 1 schedulable node: node-b is down; node-c is draining"
    )


def test_a_down_node_that_is_also_cordoned_is_reported_down() -> None:
    nodes = [node("node-a", down=True, cordoned=True)]
    assert unschedulable(req(1), nodes, [disk("node-a")], []).endswith("node-a is down")


def test_unschedulable_disks_are_skipped() -> None:
    nodes = [node("node-a"), node("node-b")]
    disks = [disk("node-a"), disk("node-b", ok=False)]
    assert place(req(1, zone_spread=False), nodes, disks, []) == [("node-a", "disk-0")]
    msg = unschedulable(req(2), nodes, disks, [])
    assert msg.endswith("node-b has no suitable disk for 1 GiB (disk-0 is not schedulable)")


# --- tags ---------------------------------------------------------------------------------
def test_node_tags_must_all_be_there() -> None:
    nodes = [node("node-a", tags=["ssd"]), node("node-b", tags=["ssd", "fast"]), node("node-c")]
    disks = [disk(n.name) for n in nodes]
    assert place(req(1, node_tags=("ssd", "fast")), nodes, disks, []) == [("node-b", "disk-0")]
    msg = unschedulable(req(2, node_tags=("ssd", "fast")), nodes, disks, [])
    assert msg == (
        "volume data: 2 replicas requested, 1 schedulable node: node-a lacks tag fast; "
        "node-c lacks tags ssd, fast"
    )


def test_disk_tags_pick_the_disk_and_mismatches_are_named() -> None:
    nodes = [node("node-a"), node("node-b")]
    disks = [
        disk("node-a", "hdd"),
        disk("node-a", "nvme", tags=["nvme"]),
        disk("node-b", "hdd", tags=["rotational"]),
    ]
    assert place(req(1, disk_tags=("nvme",)), nodes, disks, []) == [("node-a", "nvme")]
    msg = unschedulable(req(2, disk_tags=("nvme",), size=10 * GiB), nodes, disks, [])
    assert msg.endswith(
        "1 schedulable node: node-b has no suitable disk for 10 GiB (hdd lacks tag nvme)"
    )


def test_mixed_disk_problems_are_all_listed() -> None:
    nodes = [node("node-a")]
    disks = [
        disk("node-a", "d0", 1 * GiB),
        disk("node-a", "d1", tags=["x"], ok=False),
        disk("node-a", "d2", tags=["y"]),
    ]
    msg = unschedulable(req(1, size=5 * GiB, disk_tags=("x",)), nodes, disks, [])
    assert "d0 lacks tag x" in msg and "d1 is not schedulable" in msg and "d2 lacks tag x" in msg


def test_human_sizes() -> None:
    assert human_size(0) == "0 B"
    assert human_size(100) == "100 B"
    assert human_size(4096) == "4 KiB"
    assert human_size(512 << 20) == "512 MiB"
    assert human_size(10 * GiB) == "10 GiB"
    assert human_size(3 * GiB // 2) == "1.5 GiB"
    assert human_size(2 << 40) == "2 TiB"


# --- properties ---------------------------------------------------------------------------
NODE_NAMES = ["n0", "n1", "n2", "n3", "n4"]
SIZES = st.sampled_from([GiB, 2 * GiB, 5 * GiB, 10 * GiB])


@st.composite
def scenarios(draw):  # type: ignore[no-untyped-def]
    names = NODE_NAMES[: draw(st.sampled_from([5, 4, 3, 2, 1]))]
    rare = st.sampled_from([False] * 7 + [True])  # true one time in eight
    nodes = [
        node(
            n,
            draw(st.sampled_from(["", "z1", "z2", "z3"])),
            tags=draw(st.sets(st.sampled_from(["ssd", "gpu"]))),
            down=draw(rare),
            cordoned=draw(rare),
            draining=draw(rare),
        )
        for n in names
    ]
    disks = []
    for n in names:
        for k in range(draw(st.sampled_from([1, 1, 2, 0]))):
            disks.append(
                disk(
                    n,
                    f"d{k}",
                    draw(st.sampled_from([50 * GiB, 20 * GiB, 10 * GiB, 5 * GiB, 0])),
                    tags=draw(st.sets(st.sampled_from(["nvme", "hdd"]))),
                    ok=not draw(rare),
                )
            )
    reps = []
    for _ in range(draw(st.integers(0, 6))):
        if not disks:
            break
        d = draw(st.sampled_from(disks))
        reps.append(
            replica(
                draw(st.sampled_from(["data", "other"])),
                d.node,
                d.name,
                draw(SIZES),
                deleting=draw(rare),
            )
        )
    sometimes = st.sampled_from([False] * 3 + [True])  # one time in four
    node_tags = ("ssd",) if draw(sometimes) else ()
    disk_tags = ("nvme",) if draw(sometimes) else ()
    request = req(
        draw(st.integers(1, 4)),
        draw(SIZES),
        zone_spread=draw(st.booleans()),
        node_tags=node_tags,
        disk_tags=disk_tags,
    )
    ratio = draw(st.sampled_from([1.0, 1.5, 2.0]))
    return request, nodes, disks, reps, ratio


def _allocation(reps: list[Replica]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for r in reps:
        if not r.deleting:
            out[(r.node, r.disk)] += r.size_bytes
    return out


def _valid_targets(request, nodes, disks, reps, ratio) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    """Written from the rules, independently of the scheduler: node -> disks it may use."""
    alloc = _allocation(reps)
    taken = {r.node for r in reps if r.volume == request.volume and not r.deleting}
    out: dict[str, list[str]] = {}
    for n in nodes:
        if n.down_since is not None or n.cordoned or n.draining or n.name in taken:
            continue
        if not set(request.node_tags) <= set(n.tags):
            continue
        ok = [
            d.name
            for d in disks
            if d.node == n.name
            and d.schedulable
            and set(request.disk_tags) <= set(d.tags)
            and alloc[(n.name, d.name)] + request.size_bytes <= d.capacity_bytes * ratio
        ]
        if ok:
            out[n.name] = ok
    return out


def _brute_force_exists(request, nodes, disks, reps, ratio) -> bool:  # type: ignore[no-untyped-def]
    """Is there any placement of ``count`` replicas on distinct nodes within capacity?"""
    targets = _valid_targets(request, nodes, disks, reps, ratio)
    alloc = _allocation(reps)
    cap = {(d.node, d.name): d.capacity_bytes * ratio for d in disks}
    for chosen in itertools.combinations(sorted(targets), request.count):
        for picks in itertools.product(*(targets[n] for n in chosen)):
            use = Counter(alloc)
            for n, d in zip(chosen, picks, strict=True):
                use[(n, d)] += request.size_bytes
            if all(use[(n, d)] <= cap[(n, d)] for n, d in zip(chosen, picks, strict=True)):
                return True
    return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_placements_are_valid_or_provably_impossible(scenario) -> None:  # type: ignore[no-untyped-def]
    request, nodes, disks, reps, ratio = scenario
    try:
        got = place(request, nodes, disks, reps, overprovisioning=ratio)
    except Unschedulable as e:
        assert str(e).startswith(f"volume {request.volume}: ")
        assert not _brute_force_exists(request, nodes, disks, reps, ratio), str(e)
        return
    assert len(got) == request.count
    holders = {r.node for r in reps if r.volume == request.volume and not r.deleting}
    new_nodes = [n for n, _ in got]
    assert len(new_nodes) == len(set(new_nodes)), "two new replicas on one node"
    assert not holders & set(new_nodes), "a new replica next to an existing one"
    targets = _valid_targets(request, nodes, disks, reps, ratio)
    for n, d in got:
        assert d in targets.get(n, []), f"{n}/{d} breaks a rule"
    use = _allocation(reps)
    for n, d in got:
        use[(n, d)] += request.size_bytes
    caps = {(d.node, d.name): d.capacity_bytes * ratio for d in disks}
    for n, d in got:
        assert use[(n, d)] <= caps[(n, d)]


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.randoms())
def test_placements_do_not_depend_on_input_order(scenario, rnd) -> None:  # type: ignore[no-untyped-def]
    request, nodes, disks, reps, ratio = scenario

    def run(n, d, r):  # type: ignore[no-untyped-def]
        try:
            return place(request, n, d, r, overprovisioning=ratio)
        except Unschedulable as e:
            return str(e)

    want = run(nodes, disks, reps)
    n, d, r = nodes[:], disks[:], reps[:]
    rnd.shuffle(n)
    rnd.shuffle(d)
    rnd.shuffle(r)
    assert run(n, d, r) == want


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 8), st.integers(0, 3))
def test_zones_are_as_even_as_possible(zones, count, spare) -> None:  # type: ignore[no-untyped-def]
    # every zone has enough nodes: the split is as even as the numbers allow
    per_zone = -(-count // zones) + spare
    nodes = [node(f"n{z}-{i}", f"z{z}") for z in range(zones) for i in range(per_zone)]
    disks = [disk(n.name) for n in nodes]
    got = place(req(count), nodes, disks, [])
    zone_of = {n.name: n.zone for n in nodes}
    split = Counter(zone_of[n] for n, _ in got)
    counts = [split.get(f"z{z}", 0) for z in range(zones)]
    assert max(counts) - min(counts) <= 1


def test_a_preferred_node_gets_the_first_replica_when_eligible() -> None:
    from cargohold.control.model import Disk, Node
    from cargohold.control.scheduler import PlacementRequest, place

    nodes = [Node(name=f"n{i}", address="a") for i in range(1, 5)]
    disks = [Disk(node=f"n{i}", name="d", path="/d", capacity_bytes=1 << 40) for i in range(1, 5)]
    req = PlacementRequest(volume="v", size_bytes=1 << 30, count=2, preferred_nodes=("n4",))
    got = place(req, nodes, disks, [])
    assert got[0] == ("n4", "d") and len({n for n, _ in got}) == 2
    nodes[3] = nodes[3].model_copy(update={"cordoned": True})  # not eligible: ignored
    got = place(req, nodes, disks, [])
    assert "n4" not in {n for n, _ in got}
