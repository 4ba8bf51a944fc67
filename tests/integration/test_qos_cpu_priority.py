"""A volume's weight as its engine's CPU priority (docs/qos.md, "Weights and CPU"), end to
end: a local cluster of real processes (manager, one agent, its replica server and
engines), two volumes with weights 10 and 100 attached on that node. Each engine process
(every thread of it) runs at the nice value ``nice_for`` gives its weight, ``volume get``
shows it, and ``volume update --weight`` changes it on the running engine within seconds
(the same engine: not restarted). A cluster start: ``long``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.agent.cpu_priority import nice_for, threads
from cargohold.launcher.cluster import LocalCluster
from tests.support.cli import cli, js
from tests.support.polling import wait_until

pytestmark = pytest.mark.long  # a cluster start and engines: ~30-60 s on this machine


@pytest.fixture
def cluster() -> Iterator[tuple[Path, LocalCluster]]:
    d = Path(f"/tmp/chl-qosnice-{os.getpid()}")
    c = LocalCluster.create(str(d), nodes=1).up(timeout=120)
    try:
        yield d, c
    finally:
        c.down(purge=True)


def engine_pid(c: LocalCluster, volume: str) -> int | None:
    for pid in c.node_processes("node-1"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"engine" in argv and volume.encode() in argv and b"--volume" in argv:
            return pid
    return None


def nices(pid: int) -> set[int]:
    """The nice values of all the threads of ``pid``."""
    out = set()
    for tid in threads(pid):
        try:
            out.add(os.getpriority(os.PRIO_PROCESS, tid))
        except ProcessLookupError:
            pass
    return out


def test_engines_run_at_their_weights_nice_and_a_new_weight_renices_online(
    cluster: tuple[Path, LocalCluster],
) -> None:
    d, c = cluster
    assert (nice_for(10), nice_for(100)) == (10, 0)
    cli(d, "volume", "create", "low", "--size", "16MiB", "--replicas", "1", "--weight", "10")
    cli(d, "volume", "create", "dflt", "--size", "16MiB", "--replicas", "1")
    for v in ("low", "dflt"):
        cli(d, "volume", "attach", v, "--node", "node-1")
    low = wait_until(lambda: engine_pid(c, "low"), 30.0, "low's engine")
    dflt = wait_until(lambda: engine_pid(c, "dflt"), 30.0, "dflt's engine")
    wait_until(lambda: nices(low) == {10}, 10.0, "low's engine at nice 10", 0.1)
    assert len(threads(low)) > 1  # a threaded process: every thread was reniced
    assert nices(dflt) == {0}
    qos = wait_until(
        lambda: (q := js(d, "volume", "get", "low")["qos"]) and q.get("nice") is not None and q,  # type: ignore[index]
        15.0,
        "volume get showing low's nice",
        0.3,
    )
    assert qos["nice"] == 10, qos
    assert js(d, "volume", "get", "dflt")["qos"]["nice"] == 0  # type: ignore[index]

    cli(d, "volume", "update", "dflt", "--weight", "25")  # lowered: nice 6
    wait_until(lambda: nices(dflt) == {nice_for(25)}, 10.0, "dflt's engine at nice 6", 0.1)
    cli(d, "volume", "update", "low", "--weight", "500")  # raised: back to nice 0
    wait_until(lambda: nices(low) == {0}, 10.0, "low's engine back at nice 0", 0.1)
    assert (engine_pid(c, "low"), engine_pid(c, "dflt")) == (low, dflt)  # not restarted
    wait_until(
        lambda: js(d, "volume", "get", "dflt")["qos"].get("nice") == 6,  # type: ignore[index]
        15.0,
        "volume get showing dflt's new nice",
        0.3,
    )
