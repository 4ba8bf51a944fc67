"""benchmarks/write_floor.py: the floor of a replicated 1 MiB write (issue #22). Its pure
parts: the arguments, the floor systems' names, the summary against issue #22's targets,
the table's rows and the markdown; and the pipeline's framing helpers over a socketpair.
(The run itself needs fio, nbdkit and a quiet machine: the lead runs it.)"""

from __future__ import annotations

import os
import socket
import sys
import threading

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import write_floor
import write_floor_pipeline as pipeline


def _r(ops: float, cpu: float, spread: float = 0.1) -> dict:
    return {
        "ops_per_s": ops,
        "mb_per_s": ops * 1.048576,
        "lat_p99_us": 40_000.0,
        "cpu_us_per_op": cpu,
        "cpu_us_per_op_with_fio": cpu + 300,
        "ops_spread": {"median": ops, "min": ops, "max": ops, "spread": spread, "n": 3},
        "load1": 4.2,
        "runs": [{"load1": 4.2}],
    }


def test_parse_args_defaults_are_the_issue_s_workload_and_every_system() -> None:
    a = write_floor.parse_args([])
    assert a.systems == write_floor.SYSTEMS and a.workloads == ["1m", "4k"]
    assert (a.repeats, a.size, a.seconds) == (3, "256MiB", 10)
    # what engine.Bench and engine.measure read
    assert (a.transport, a.local_link, a.profile, a.fsync) == ("tcp", "unix", None, 0)


def test_parse_args_keeps_the_known_order_and_refuses_unknown_names() -> None:
    a = write_floor.parse_args(["--systems", "floor-3,nbdkit", "--workloads", "1m"])
    assert a.systems == ["nbdkit", "floor-3"] and a.workloads == ["1m"]
    with pytest.raises(SystemExit):
        write_floor.parse_args(["--systems", "floor-2"])
    with pytest.raises(SystemExit):
        write_floor.parse_args(["--repeats", "0"])


@pytest.mark.parametrize(
    "key, shape", [("floor-1", (1, False)), ("floor-3", (3, False)), ("floor-3-unix", (3, True))]
)
def test_floor_shape(key: str, shape: tuple[int, bool]) -> None:
    assert write_floor.floor_shape(key) == shape


@pytest.mark.parametrize("bad", ["floor", "floor-x", "floor-3-tcp", "engine-3"])
def test_floor_shape_refuses_other_names(bad: str) -> None:
    with pytest.raises(ValueError):
        write_floor.floor_shape(bad)


def test_summary_judges_floor_and_engine_against_the_targets() -> None:
    res = {
        "nbdkit": _r(600, 400),
        "floor-1": _r(300, 500),  # 0.50 < 0.60
        "floor-3": _r(240, 3000),  # 0.40 >= 0.30
        "engine-1": _r(150, 1500),
        "engine-3": _r(60, 3600),
    }
    s = write_floor.summarize(res)
    one, three = s["1"], s["3"]
    assert one["floor_vs_nbdkit"] == pytest.approx(0.5) and not one["floor_meets_target"]
    assert three["floor_vs_nbdkit"] == pytest.approx(0.4) and three["floor_meets_target"]
    assert three["engine_vs_nbdkit"] == pytest.approx(0.1) and not three["engine_meets_target"]
    assert three["engine_vs_floor_ops"] == pytest.approx(0.25)
    assert three["engine_vs_floor_cpu"] == pytest.approx(1.2)
    # writes per CPU second, fio included: (400 + 300) / (3000 + 300)
    assert three["floor_per_cpu_vs_nbdkit"] == pytest.approx(700 / 3300)
    words = write_floor.verdict(s)
    assert words[0].startswith(
        "1 replica(s): the floor is 0.50x nbdkit, BELOW the target 0.60 "
        "(writes per CPU second: 0.88x nbdkit's)"
    )
    assert "above the target 0.30" in words[1] and "0.25x the floor's writes/s" in words[1]


def test_summary_without_nbdkit_or_an_engine_says_only_what_was_measured() -> None:
    s = write_floor.summarize({"floor-3": _r(240, 3000)})
    assert s["3"] == {"replicas": 3, "target": 0.30}
    assert write_floor.verdict(s) == []
    s = write_floor.summarize({"nbdkit": _r(600, 400), "floor-1": _r(420, 500)})
    assert s["1"]["floor_meets_target"] and "engine_vs_floor_ops" not in s["1"]


def test_markdown_is_made_from_the_json() -> None:
    per = {"nbdkit": _r(600, 400), "floor-3": _r(240, 3000, spread=0.2)}
    per["nbdkit"]["ops_vs_nbdkit"], per["floor-3"]["ops_vs_nbdkit"] = 1.0, 0.4
    out = {
        "results": {"seqwrite-1m-qd4": per},
        "titles": {"seqwrite-1m-qd4": "1 MiB seqwrite QD4"},
        "repeats": 3,
        "validity": {"seqwrite-1m-qd4": {"valid": False, "reasons": ["nbdkit: a run at 1"]}},
    }
    md = write_floor.markdown(out)
    assert "| floor-3 | 240 | 252 | 0.40 | 40,000 | 3,000 | 3,300 | ±10% | 4.2 |" in md
    assert "**INVALID** (nbdkit out of band): nbdkit: a run at 1" in md
    assert "3 replica(s): the floor is 0.40x nbdkit, above the target 0.30" in md


def test_pipeline_frames_cross_a_socket_whole() -> None:
    a, b = socket.socketpair()
    payload = os.urandom(3 * 2**20 + 7)  # larger than the socket's buffer: partial reads
    frame = pipeline.STORE_REQ.pack(pipeline.S_WRITE, 42, 2**20, len(payload))
    t = threading.Thread(target=pipeline.sendmsg_all, args=(a, [frame, memoryview(payload)]))
    t.start()
    hdr = bytearray(pipeline.STORE_REQ.size)
    assert pipeline.recv_exact(b, memoryview(hdr))
    cmd, handle, offset, length = pipeline.STORE_REQ.unpack(hdr)
    assert (cmd, handle, offset, length) == (pipeline.S_WRITE, 42, 2**20, len(payload))
    got = bytearray(length)
    assert pipeline.recv_exact(b, memoryview(got))
    t.join()
    assert got == payload
    a.close()
    assert not pipeline.recv_exact(b, memoryview(hdr))  # end of stream
    b.close()
