"""StorageClass parameters, names, capacity ranges and capabilities (csi/parameters.py):
every bad value is INVALID_ARGUMENT naming the parameter and what is allowed; the parser
never fails any other way (hypothesis); names derive stably into valid manager names."""

from __future__ import annotations

import string

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.csi import parameters as P
from cargohold.csi import stubs
from cargohold.csi.errors import CsiError

pb, _ = stubs()
AM = pb.VolumeCapability.AccessMode
GIB = 1 << 30


def bad(params: dict[str, str]) -> CsiError:
    with pytest.raises(CsiError) as e:
        P.VolumeParameters.parse(params)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return e.value


def test_defaults() -> None:
    p = P.VolumeParameters.parse({})
    assert p == P.VolumeParameters()
    assert (p.replicas, p.fs_type, p.zone_spread, p.stale_replica_timeout) == (
        None, "ext4", True, None,
    )  # fmt: skip


def test_every_parameter_parsed() -> None:
    p = P.VolumeParameters.parse({
        "numberOfReplicas": " 2 ", "fsType": "XFS", "zoneSpread": "False",
        "staleReplicaTimeout": "1.5m", "diskSelector": "ssd, nvme,ssd", "nodeSelector": "edge",
        "csi.storage.k8s.io/fstype": "xfs",
    })  # fmt: skip
    assert p.replicas == 2 and p.fs_type == "xfs" and p.zone_spread is False
    assert p.stale_replica_timeout == 90.0
    assert p.disk_tags == ("nvme", "ssd") and p.node_tags == ("edge",)
    assert set(p.given) == {
        "numberOfReplicas", "fsType", "zoneSpread", "staleReplicaTimeout", "diskSelector",
        "nodeSelector",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        ({"numberOfReplicas": "0"}, "from 1 to 16"),
        ({"numberOfReplicas": "17"}, "from 1 to 16"),
        ({"numberOfReplicas": "two"}, "from 1 to 16"),
        ({"fsType": "btrfs"}, "ext4 or xfs"),
        ({"zoneSpread": "yes"}, "true or false"),
        ({"staleReplicaTimeout": "0"}, "at most 7d"),
        ({"staleReplicaTimeout": "8d"}, "at most 7d"),
        ({"staleReplicaTimeout": "5w"}, "at most 7d"),
        ({"diskSelector": "ssd,has space"}, "disk tags"),
        ({"diskSelector": "-ssd"}, "disk tags"),
        ({"nodeSelector": "a" * 64}, "node tags"),
        ({"nodeSelector": "edge,zone/a"}, "node tags"),
    ],
)
def test_bad_values_name_the_parameter_and_what_is_allowed(
    params: dict[str, str], allowed: str
) -> None:
    e = bad(params)
    (name,) = params
    assert f"StorageClass parameter {name}=" in e.message and allowed in e.message


def test_a_bad_selector_names_the_tag() -> None:
    assert "tag 'has space'" in bad({"diskSelector": "ssd,has space"}).message


def test_recurring_jobs_become_volume_labels() -> None:
    p = P.VolumeParameters.parse({"recurringJobs": "nightly-backup, hourly-snap,hourly-snap"})
    assert p.recurring_jobs == ("hourly-snap", "nightly-backup")
    assert p.labels == {
        "recurring-job.cargohold.io/hourly-snap": "enabled",
        "recurring-job.cargohold.io/nightly-backup": "enabled",
    }
    assert P.VolumeParameters.parse({}).labels == {}
    e = bad({"recurringJobs": "hourly,Nightly Backup"})
    assert "recurringJobs=" in e.message and "job name 'Nightly Backup'" in e.message


def test_empty_selectors_select_nothing() -> None:
    assert P.VolumeParameters.parse({"diskSelector": " , ", "nodeSelector": ""}).disk_tags == ()


def test_unknown_parameters_are_listed_with_the_known_ones() -> None:
    e = bad({"replicaCount": "2", "zone": "a"})
    assert "replicaCount, zone" in e.message and "numberOfReplicas" in e.message


@given(st.dictionaries(st.sampled_from([p.name for p in P.PARAMETERS]), st.text(max_size=30)))
def test_the_parser_only_ever_accepts_or_says_invalid_argument(params: dict[str, str]) -> None:
    try:
        p = P.VolumeParameters.parse(params)
    except CsiError as e:
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT
        assert any(f"{name}=" in e.message for name in params)
        return
    assert p.replicas is None or 1 <= p.replicas <= P.MAX_REPLICAS
    assert p.fs_type in P.FS_TYPES
    assert p.stale_replica_timeout is None or 0 < p.stale_replica_timeout <= P.MAX_STALE_TIMEOUT
    assert list(p.disk_tags) == sorted(set(p.disk_tags))


@given(st.text(alphabet=string.ascii_letters + string.digits + "._-/ ", min_size=1, max_size=300))
def test_derived_names_are_valid_and_stable(name: str) -> None:
    v = P.volume_name(name)
    assert P.valid_name(v) and len(v) <= 63
    assert P.volume_name(name) == v


def test_a_valid_name_is_kept_and_others_get_a_digest() -> None:
    assert P.volume_name("pvc-0b6e") == "pvc-0b6e"
    assert P.volume_name("PVC_A") != P.volume_name("pvc-a")
    assert P.volume_name("PVC_A").startswith("pvc-a-")
    with pytest.raises(CsiError):
        P.volume_name("")
    with pytest.raises(CsiError):
        P.volume_name("bad\x00name")


def test_snapshot_ids() -> None:
    assert P.split_snapshot_id(P.snapshot_id("vol", "snap")) == ("vol", "snap")
    for sid in ("vol", "vol/", "/snap", "Vol/snap", "vol/snap/x"):
        assert P.split_snapshot_id(sid) is None


@pytest.mark.parametrize(
    ("required", "limit", "minimum", "size"),
    [
        (0, 0, 0, P.DEFAULT_SIZE),
        (1, 0, 0, 4096),
        (4097, 0, 0, 8192),
        (0, 5000, 0, 4096),
        (0, 0, 3 * GIB, 3 * GIB),
        (GIB, 2 * GIB, 0, GIB),
    ],
)
def test_sizes(required: int, limit: int, minimum: int, size: int) -> None:
    assert P.size_for(required, limit, minimum) == size


@pytest.mark.parametrize(
    ("required", "limit", "minimum", "code"),
    [
        (10, 5, 0, grpc.StatusCode.OUT_OF_RANGE),
        (4097, 5000, 0, grpc.StatusCode.OUT_OF_RANGE),
        (0, GIB, 2 * GIB, grpc.StatusCode.OUT_OF_RANGE),
        (P.MAX_SIZE + 1, 0, 0, grpc.StatusCode.OUT_OF_RANGE),
        (-1, 0, 0, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_sizes_out_of_range(required: int, limit: int, minimum: int, code: object) -> None:
    with pytest.raises(CsiError) as e:
        P.size_for(required, limit, minimum)
    assert e.value.code == code


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 40))
def test_a_size_fits_its_range(required: int, limit: int) -> None:
    try:
        size = P.size_for(required, limit)
    except CsiError as e:
        assert e.code == grpc.StatusCode.OUT_OF_RANGE
        return
    assert size % P.BLOCK == 0 and P.fits(size, required, limit)


def cap(mode: int, fs: str = "", block: bool = False) -> object:
    if block:
        return pb.VolumeCapability(
            block=pb.VolumeCapability.BlockVolume(), access_mode=AM(mode=mode)
        )
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(fs_type=fs), access_mode=AM(mode=mode)
    )


def test_capabilities() -> None:
    for mode in P.SUPPORTED_MODES:
        assert P.capability_problem(cap(mode)) == ""
        assert P.capability_problem(cap(mode, block=True)) == ""
    assert "one writer" in P.capability_problem(cap(AM.MULTI_NODE_MULTI_WRITER))
    assert "one writer" in P.capability_problem(cap(AM.MULTI_NODE_SINGLE_WRITER))
    assert "unknown or unset" in P.capability_problem(cap(AM.UNKNOWN))
    assert "btrfs" in P.capability_problem(cap(AM.SINGLE_NODE_WRITER, fs="btrfs"))
    assert "block or mount" in P.capability_problem(
        pb.VolumeCapability(access_mode=AM(mode=AM.SINGLE_NODE_WRITER))
    )
    assert P.is_reader_only(cap(AM.MULTI_NODE_READER_ONLY))
    assert P.is_reader_only(cap(AM.SINGLE_NODE_READER_ONLY))
    assert not P.is_reader_only(cap(AM.SINGLE_NODE_WRITER))
    with pytest.raises(CsiError):
        P.check_capabilities([])


def test_small_xfs_volumes_round_up_to_the_minimum_or_are_out_of_range() -> None:
    assert P.fs_minimum("ext4", 0) == 0
    assert P.fs_minimum("xfs", 0) == P.XFS_MIN_SIZE == 300 << 20
    assert P.size_for(64 << 20, 0, P.fs_minimum("xfs", 0)) == 300 << 20
    assert P.size_for(1 << 30, 0, P.fs_minimum("xfs", 0)) == 1 << 30
    with pytest.raises(CsiError) as e:
        P.fs_minimum("xfs", 128 << 20)
    assert e.value.code.name == "OUT_OF_RANGE" and "300 MiB" in str(e.value)


def test_xfs_is_mounted_nouuid_and_readers_never_replay_a_journal() -> None:
    from cargohold.csi.node import stage_options

    assert stage_options("xfs", False) == ["nouuid"]
    assert stage_options("xfs", True) == ["ro", "norecovery", "nouuid"]
    assert stage_options("xfs", False, ["noatime", "nouuid"]) == ["noatime", "nouuid"]
    assert stage_options("ext4", False) == []
    assert stage_options("ext4", True, ["noatime"]) == ["noatime", "ro", "noload"]


def test_standby_parameters_go_together() -> None:
    p = P.VolumeParameters.parse({"standbyTarget": "site-a", "standbySourceVolume": "pvc-1a2b"})
    assert (p.standby_target, p.standby_source) == ("site-a", "pvc-1a2b")
    assert P.VolumeParameters.parse({}).standby_target == ""
    with pytest.raises(CsiError, match="go together"):
        P.VolumeParameters.parse({"standbyTarget": "site-a"})
    with pytest.raises(CsiError, match="standbySourceVolume='Bad Name'"):
        P.VolumeParameters.parse({"standbyTarget": "site-a", "standbySourceVolume": "Bad Name"})


def test_weight_and_minimum_iops_are_qos_parameters() -> None:
    """docs/qos.md, "Weights and guaranteed minimums": StorageClass and
    VolumeAttributesClass parameters, checked like the limits."""
    p = P.VolumeParameters.parse({"weight": "400", "minIops": "2k"})
    assert p.qos == {"weight": 400, "min_iops": 2000}
    with pytest.raises(CsiError) as e:
        P.VolumeParameters.parse({"weight": "5000"})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "weight='5000' is not valid: use an integer from 1 to 1000" in str(e.value)


def test_the_provisioners_pvc_metadata_becomes_volume_labels() -> None:
    """external-provisioner --extra-create-metadata: the PVC's namespace and name are kept
    as labels for the PVC events (csi/pvc_events.py); alone, one of them is not."""
    p = P.VolumeParameters.parse(
        {
            "csi.storage.k8s.io/pvc/name": "data",
            "csi.storage.k8s.io/pvc/namespace": "shop",
            "csi.storage.k8s.io/pv/name": "pvc-1234",
            "recurringJobs": "nightly",
        }
    )
    assert p.labels == {
        "recurring-job.cargohold.io/nightly": "enabled",
        "pvc.cargohold.io/namespace": "shop",
        "pvc.cargohold.io/name": "data",
    }
    assert P.VolumeParameters.parse({"csi.storage.k8s.io/pvc/name": "data"}).labels == {}
