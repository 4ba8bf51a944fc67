import pytest
from hypothesis import given
from hypothesis import strategies as st

from cargohold.encryption import layout
from cargohold.errors import InvalidArgument


def test_a_group_is_its_blocks_then_their_tag_block():
    assert [layout.data_block(i) for i in range(3)] == [0, 1, 2]
    assert layout.data_block(63) == 63 and layout.tag_block(63) == 64
    assert layout.data_block(64) == 65 and layout.tag_block(64) == 129
    assert layout.tag_offset(0) == 0 and layout.tag_offset(65) == 64


def test_sizes():
    assert layout.logical_size_for(1) == 256 * 1024
    assert layout.logical_size_for(1 << 30) == 1 << 30
    assert layout.physical_size(1 << 30) == (1 << 30) // 64 * 65
    with pytest.raises(InvalidArgument, match="multiple of 262144"):
        layout.physical_size(4096)
    with pytest.raises(InvalidArgument):
        layout.logical_size_for(0)


@given(st.integers(min_value=1, max_value=1 << 48))
def test_the_physical_size_gives_back_the_logical_one(requested):
    logical = layout.logical_size_for(requested)
    assert requested <= logical < requested + layout.GROUP_BYTES
    assert layout.logical_size(layout.physical_size(logical)) == logical


@given(st.integers(min_value=0, max_value=1 << 40))
def test_blocks_never_collide(i):
    blocks = {layout.data_block(i), layout.data_block(i + 1), layout.tag_block(i)}
    assert len(blocks) == 3
    assert layout.data_block(i) % (layout.GROUP + 1) != layout.GROUP
    assert layout.tag_block(i) % (layout.GROUP + 1) == layout.GROUP


def test_extents_and_logical_runs():
    assert layout.extent_blocks(0, 0) == 0
    assert layout.extent_blocks(0, 10) == 10  # part of one group: no tag block
    assert layout.extent_blocks(0, 64) == 65  # a whole group: its tag block too
    assert layout.extent_blocks(64, 200) == 65 + 65 + 8
    # physical blocks 60..70 of which 64 is a tag block: 10 data blocks; flags split at 66
    runs = layout.logical_runs(60, [(6 * 4096, 0), (5 * 4096, 1)])
    assert runs == [(5 * 4096, 0), (5 * 4096, 1)]


@given(st.integers(min_value=0, max_value=1 << 40))
def test_logical_block_inverts_data_block(i):
    assert layout.logical_block(layout.data_block(i)) == i
    assert layout.first_logical_at(layout.data_block(i)) == i
    assert layout.first_logical_at(layout.tag_block(i)) == (i // layout.GROUP + 1) * layout.GROUP


@given(st.integers(min_value=0, max_value=700), st.integers(min_value=0, max_value=300))
def test_a_physical_span_holds_one_logical_range(first, n):
    """Snapshot metadata of an encrypted volume (engine/snapshot_metadata.py): the data
    blocks of any physical span are one logical range, found without a per-block loop."""
    want = [
        layout.logical_block(p)
        for p in range(first, first + n)
        if p % (layout.GROUP + 1) != layout.GROUP
    ]
    got = layout.logical_extent(first, first + n)
    if not want:
        assert got is None
    else:
        assert got == (want[0], want[-1] + 1) and want == list(range(*got))


@given(
    st.integers(min_value=0, max_value=300),
    st.lists(st.tuples(st.integers(min_value=0, max_value=150), st.integers(0, 2)), max_size=8),
)
def test_logical_runs_are_the_data_blocks_of_the_physical_ones(start, runs):
    """Block status of an encrypted volume: every data block of the physical runs, tag
    blocks left out, neighbours of equal flags merged (the same as block by block)."""
    want: list[tuple[int, int]] = []
    p = start
    for n, flags in runs:
        for phys in range(p, p + n):
            if phys % (layout.GROUP + 1) == layout.GROUP:
                continue
            if want and want[-1][1] == flags:
                want[-1] = (want[-1][0] + layout.BLOCK, flags)
            else:
                want.append((layout.BLOCK, flags))
        p += n
    got = layout.logical_runs(start, [(n * layout.BLOCK, f) for n, f in runs])
    assert got == want
