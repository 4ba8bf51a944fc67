"""cargohold.lineage: the one rule for "is this replica's data on that replica's line"."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from cargohold import lineage
from cargohold.engine.rebuild import delta_start


def test_last_epoch_and_rank():
    assert lineage.last_epoch([]) == 0
    assert lineage.last_epoch([[1, 1], [4, 9]]) == 4
    assert lineage.rank([[1, 1], [4, 9]], 12) == (4, 12)
    # the epoch of the newest mutation wins over a higher generation of an older epoch
    assert lineage.rank([[1, 1], [4, 9]], 12) > lineage.rank([[1, 1], [3, 5]], 40)


def test_prefix_is_contained():
    src = [[1, 1], [3, 10], [5, 20]]
    assert lineage.contained([[1, 1]], 9, src, 30)
    assert lineage.contained([[1, 1], [3, 10]], 19, src, 30)
    assert lineage.contained(src, 30, src, 30)
    assert lineage.contained([], 0, src, 30)  # empty: nothing of its own


def test_fork_is_not_contained():
    src = [[1, 1], [3, 10], [5, 20]]
    # epoch 3 went on past generation 19 on the target, which the source's epoch 3 never made
    assert not lineage.contained([[1, 1], [3, 10]], 25, src, 30)
    # an epoch the source never had
    assert not lineage.contained([[1, 1], [4, 10]], 12, src, 30)
    # newer than the source
    assert not lineage.contained(src, 31, src, 30)
    # the same epoch started at another generation on the target (it cannot be the same run)
    assert not lineage.contained([[1, 1], [3, 8]], 9, src, 30)


histories = st.lists(st.integers(1, 5), min_size=0, max_size=4, unique=True).flatmap(
    lambda epochs: st.lists(
        st.integers(1, 6), min_size=len(epochs), max_size=len(epochs), unique=True
    ).map(lambda firsts: [[e, f] for e, f in zip(sorted(epochs), sorted(firsts), strict=True)])
)


@given(histories, st.integers(0, 12), histories, st.integers(0, 12), st.integers(0, 12))
def test_the_engine_rebuilds_by_the_same_rule(t_hist, t_seen, s_hist, s_seen, t_gen):
    """The engine's delta rebuild starts from the target's generation exactly when lineage
    says its data is on the source's line (else it copies everything)."""
    target = SimpleNamespace(history=t_hist, seen=t_seen, generation=min(t_gen, t_seen))
    start = delta_start(target, s_hist, s_seen)  # type: ignore[arg-type]
    assert (start is not None) == lineage.contained(t_hist, t_seen, s_hist, s_seen)
