"""Property tests: the chunk map against a byte model, random write histories through real
writers (full and incremental chains) against a bytearray, and every decoder fuzzed."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.backup import format as fmt
from cargohold.backup.catalog import BackupInfo, Catalog
from cargohold.backup.chunk_map import ChunkMap
from cargohold.backup.keys import RepoKeys, read_preamble, unwrap_master, wrap_master
from cargohold.backup.leases import LeaseRecord
from cargohold.backup.packs import PackBuilder, read_trailer
from cargohold.errors import CargoholdError, ChecksumError, FormatError
from tests.unit.backup.support import KEY, new_repo, restore

B = fmt.BLOCK
CELLS = 3
SIZE = CELLS * fmt.CELL
NB = SIZE // B
KEYS = RepoKeys(bytes(32), "repo")

blocks = st.integers(0, NB - 1)


def span(first: int, count: int) -> tuple[int, int]:
    count = max(1, min(count, NB - first))
    return first * B, count * B


# --- the chunk map against a model: one (chunk, offset-in-chunk) per block ----------------------
ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "clear"]),
        blocks,
        st.integers(1, 2048),
        st.integers(0, 7),
        st.integers(0, 512),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_chunk_map_matches_a_block_model(history: list[tuple[str, int, int, int, int]]) -> None:
    m = ChunkMap(SIZE)
    model: list[tuple[bytes, int] | None] = [None] * NB
    for op, first, count, chunk_no, coff_blocks in history:
        off, length = span(first, count)
        if op == "put":
            cell_end = (off // fmt.CELL + 1) * fmt.CELL
            length = min(length, cell_end - off)
            coff = min(coff_blocks, fmt.CELL // B - length // B) * B
            cid = bytes([chunk_no]) * 32
            m.put(off, length, cid, coff)
            for i in range(length // B):
                model[off // B + i] = (cid, coff + i * B)
        else:
            m.clear(off, length)
            model[off // B : (off + length) // B] = [None] * (length // B)
    got: list[tuple[bytes, int] | None] = [None] * NB
    last_end = 0
    for e in m.extents():
        assert e.offset >= last_end and e.length > 0  # sorted, disjoint
        last_end = e.offset + e.length
        for i in range(e.length // B):
            got[e.offset // B + i] = (e.chunk, e.coff + i * B)
    assert got == model
    again = ChunkMap.decode(m.encode())
    assert again == m
    assert m.copy() == m


# --- random write histories through the writer, as a chain of incrementals ---------------------
write = st.tuples(
    st.sampled_from(["write", "zero", "zerodata"]),
    blocks,
    st.integers(1, 1500),
    st.integers(0, 255),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(write, max_size=8), min_size=1, max_size=4), st.booleans())
def test_random_write_histories_restore_like_a_bytearray(
    backups: list[list[tuple[str, int, int, int]]], ordered: bool
) -> None:
    repo = new_repo(pack_bytes=3 << 20)
    model = bytearray(SIZE)
    parent = None
    expected = {}
    for history in backups:
        if ordered:
            history = sorted(history, key=lambda h: h[1])
        w = repo.start_backup("v", "v", SIZE, "s", 1, {}, parent)
        for op, first, count, byte in history:
            off, length = span(first, count)
            if op == "write":
                data = (bytes([byte]) + os.urandom(3)) * (length // 4)
                w.write(off, data)
                model[off : off + length] = data
            elif op == "zerodata":  # zeros written as data clear the range too
                w.write(off, bytes(length))
                model[off : off + length] = bytes(length)
            else:
                w.zero(off, length)
                model[off : off + length] = bytes(length)
        info = w.commit()
        expected[info.id] = bytes(model)
        parent = info.id
    for bid, data in expected.items():  # every backup of the chain restores whole
        assert restore(repo, bid, max_bytes=1 << 20) == data


# --- every decoder, fuzzed: only CargoholdError, never a crash or silent garbage ---------------
def open_pack(name: str, data: bytes) -> list[bytes]:
    """A pack's trailer, then every blob it lists (as verify --read-data does)."""
    return [
        KEYS.open_blob(e.id, e.flags, e.raw, data[e.offset : e.offset + e.length], name)
        for e in read_trailer(KEYS, name, data)
    ]


def samples() -> dict[str, tuple[bytes, object]]:
    m = ChunkMap(SIZE)
    m.put(0, 8192, b"a" * 32, 0)
    m.put(fmt.CELL, 4096, b"b" * 32, 4096)
    info = BackupInfo("b1", "v", "v", SIZE, "s", 1, None)
    pack = PackBuilder()
    cid = KEYS.chunk_id(b"x" * 4096)
    pack.add(cid, 0, 4096, KEYS.seal_blob(cid, 0, b"x" * 4096))
    idx = {cid: fmt.Location("packs/aa/aa", 8, 4124, 4096, 0)}
    return {
        "map": (m.encode(), lambda d: ChunkMap.decode(d)),
        "manifest": (
            KEYS.seal(
                fmt.KIND_MANIFEST, "backups/b1", fmt.encode_manifest(info.to_dict(), [], m.encode())
            ),
            lambda d: fmt.decode_manifest(
                KEYS.open(fmt.KIND_MANIFEST, "backups/b1", d), "backups/b1"
            ),
        ),
        "catalog": (
            KEYS.seal(
                fmt.KIND_CATALOG, "catalog", Catalog({"b1": info}, ["index/x"], "repo").encode()
            ),
            lambda d: Catalog.decode(KEYS.open(fmt.KIND_CATALOG, "catalog", d)),
        ),
        "index": (
            KEYS.seal(fmt.KIND_INDEX, "index/x", fmt.encode_index(idx)),
            lambda d: fmt.decode_index(KEYS.open(fmt.KIND_INDEX, "index/x", d), "index/x"),
        ),
        "pack": (pack.seal(KEYS), lambda d: open_pack(pack.name, d)),
        "keys": (
            wrap_master(KEY, bytes(32), {"repository": "r"}),
            lambda d: unwrap_master(KEY, d),
        ),
        "lease": (
            KEYS.seal(
                fmt.KIND_LEASE,
                "locks/x",
                fmt.encode_json(
                    {"kind": "backup", "id": "x", "host": "h", "pid": 1, "created": 1, "expires": 2}
                ),
            ),
            lambda d: LeaseRecord.decode("locks/x", KEYS.open(fmt.KIND_LEASE, "locks/x", d)),
        ),
        "blob": (
            KEYS.seal_blob(cid, 0, b"x" * 4096),
            lambda d: KEYS.open_blob(cid, 0, 4096, d, "p"),
        ),
    }


SAMPLES = samples()


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_sample_decodes(kind: str) -> None:
    data, decode = SAMPLES[kind]
    decode(data)  # type: ignore[operator]


@pytest.mark.parametrize("kind", sorted(SAMPLES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_decoders_reject_damage_cleanly(kind: str, data: st.DataObject) -> None:
    blob, decode = SAMPLES[kind]
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "random"]))
    b = bytearray(blob)
    if how == "flip":
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del b[data.draw(st.integers(0, len(b) - 1)) :]
    elif how == "extend":
        b += data.draw(st.binary(min_size=1, max_size=64))
    else:
        b = bytearray(data.draw(st.binary(max_size=512)))
    if bytes(b) == blob:
        return
    try:
        decode(bytes(b))  # type: ignore[operator]
    except CargoholdError:
        return
    # only the plaintext map and unauthenticated preamble bytes may decode; never a sealed object
    assert kind in ("map",), f"{kind}: damaged bytes decoded ({how})"


def test_damage_to_sealed_objects_is_an_authentication_failure() -> None:
    data, decode = SAMPLES["manifest"]
    b = bytearray(data)
    b[-1] ^= 1
    with pytest.raises(ChecksumError):
        decode(bytes(b))  # type: ignore[operator]
    b = bytearray(data)
    b[0] ^= 1
    with pytest.raises(FormatError, match="magic"):
        decode(bytes(b))  # type: ignore[operator]
    pre, _ = read_preamble(SAMPLES["keys"][0])
    assert pre == {"repository": "r"}
