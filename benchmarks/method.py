"""The measuring method the benchmarks share (issue #22 Part 1: baselines you can trust).

It lives in the package, ``cargohold/cli/bench_method.py``, so that ``cargohold bench``
(which ships) and the benchmarks here (which do not) use one implementation: read it there.
This module re-exports it for benchmarks/engine.py, tls.py and the others.
"""

from __future__ import annotations

from cargohold.cli.bench_method import (
    BAND_TOLERANCE,
    CEPH_ANCHOR,
    CLK_TCK,
    NBDKIT_VS_LOCAL_MIN,
    BandVerdict,
    band_check,
    cpu_ticks,
    cpu_us_per_op,
    dirty_kib,
    host_load,
    parse_meminfo,
    parse_stat,
    read_stats,
    run_queue_wait_ns,
    save_json,
    settle_writeback,
    spread,
    tree_ticks,
)

__all__ = [
    "BAND_TOLERANCE",
    "CEPH_ANCHOR",
    "CLK_TCK",
    "NBDKIT_VS_LOCAL_MIN",
    "BandVerdict",
    "band_check",
    "cpu_ticks",
    "cpu_us_per_op",
    "dirty_kib",
    "host_load",
    "parse_meminfo",
    "parse_stat",
    "read_stats",
    "run_queue_wait_ns",
    "save_json",
    "settle_writeback",
    "spread",
    "tree_ticks",
]
