"""The replica server's unix socket as the agent sets it up: its 0700 directory of the
agent's own, the engines' ``--local-unix``, and the replica server's ``--unix``
(cargohold/agent/node_state.py, processes.py)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.agent.node_state import replica_socket
from cargohold.agent.processes import engine_argv, replica_server_argv


@pytest.fixture
def short_path() -> Iterator[Path]:
    """A node directory short enough for a unix socket's path (pytest's own tmp_path under
    xdist is not: the socket would move to the temporary directory)."""
    d = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_socket_lives_in_a_0700_directory_of_the_agent(short_path):
    tmp_path = short_path
    path = replica_socket(str(tmp_path))
    assert path == str(tmp_path / "run" / "replica-server" / "replica.sock")
    st = os.stat(os.path.dirname(path))
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    os.chmod(os.path.dirname(path), 0o755)  # loosened: made 0700 again at the next start
    assert replica_socket(str(tmp_path)) == path
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_a_path_too_long_for_a_unix_socket_moves_to_the_temporary_directory(tmp_path):
    deep = tmp_path / ("x" * 90)
    path = replica_socket(str(deep))
    assert path is not None and len(path.encode()) < 100
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert replica_socket(str(deep)) == path  # the same one every time
    os.rmdir(os.path.dirname(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_directory_someone_else_made_is_never_used(short_path, caplog):
    tmp_path = short_path
    where = tmp_path / "run" / "replica-server"
    where.mkdir(parents=True)
    os.chown(where, 65534, 65534)
    assert replica_socket(str(tmp_path)) is None
    assert "engines use TLS over TCP" in caplog.text
    where.rmdir()  # a symlink to a directory elsewhere is not it either
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", where)
    assert replica_socket(str(tmp_path)) is None


def test_the_children_get_the_socket():
    argv = replica_server_argv("n1", "127.0.0.1", 9500, ["/d"], "/tls", "/run/rs/replica.sock")
    assert argv[-4:] == ["--unix", "/run/rs/replica.sock", "--tls-dir", "/tls"]
    assert "--unix" not in replica_server_argv("n1", "127.0.0.1", 9500, ["/d"], "/tls")
    e = engine_argv("v", 1, ["r0@h:1", "r1@g:1"], "r0", "127.0.0.1", 0, "/c", local_unix="/s")
    assert e[e.index("--local") : e.index("--local") + 4] == ["--local", "r0", "--local-unix", "/s"]
    # no local replica: nothing to reach over the socket
    assert "--local-unix" not in engine_argv(
        "v", 1, ["r1@g:1"], None, "127.0.0.1", 0, "/c", local_unix="/s"
    )


async def test_an_upgrade_adopts_the_server_an_older_agent_started_without_a_socket(
    tmp_path, monkeypatch
):
    """Handover across the upgrade that brought the socket: the running server's command
    line has no --unix; it is adopted as it runs (not stopped as a leftover: its replicas
    keep serving), and the next start of it gets the socket."""
    import asyncio

    from cargohold.agent.processes import ReplicaServerProcess
    from cargohold.agent.replicas import Replicas
    from cargohold.control.model import DiskReport

    async def adopt(self, pid):  # type: ignore[no-untyped-def]
        return "--unix" not in self.argv  # the old server runs exactly this

    monkeypatch.setattr(ReplicaServerProcess, "adopt", adopt)
    r = Replicas("n1", "127.0.0.1", str(tmp_path), 60.0, asyncio.Event(), lambda: None)
    r.disks = [DiskReport(name="d", path=str(tmp_path / "d"), capacity_bytes=1 << 30)]
    r.unix = replica_socket(str(tmp_path))
    state = {"replica_port": 9500, "children": {"replica_server": {"pid": 4321}}}
    assert await r.adopt(state, None) == 4321
    assert r.server is not None and "--unix" not in r.server.argv
    assert "--unix" in r._process(9500).argv  # what the next start runs


def test_the_agent_removes_its_temporary_socket_directories_at_shutdown(tmp_path):
    """A node directory too long for unix sockets has them under the temporary directory;
    once everything stopped, its sockets and directories go, but not what is not a socket."""
    import socket

    from cargohold.agent.node_state import control_path, remove_socket_dirs

    deep = str(tmp_path / ("x" * 90))
    rs, ctl = replica_socket(deep), control_path(deep, "vol-a")
    assert rs is not None and not rs.startswith(deep) and not ctl.startswith(deep)
    for path in (rs, ctl):  # sockets their servers left bound
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
    remove_socket_dirs(deep)
    assert not os.path.exists(os.path.dirname(rs)) and not os.path.exists(os.path.dirname(ctl))
    remove_socket_dirs(deep)  # nothing left: nothing to do
    ctl = control_path(deep, "vol-a")
    Path(os.path.dirname(ctl), "notes").write_text("kept")
    remove_socket_dirs(deep)
    assert os.path.exists(os.path.join(os.path.dirname(ctl), "notes"))
    shutil.rmtree(os.path.dirname(ctl))
    # a symlink planted where its directory goes is never followed: the sockets it points at stay
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(elsewhere / "other.sock"))
    s.close()
    os.symlink(elsewhere, os.path.dirname(ctl))
    try:
        remove_socket_dirs(deep)
        assert (elsewhere / "other.sock").exists()
    finally:
        os.unlink(os.path.dirname(ctl))
