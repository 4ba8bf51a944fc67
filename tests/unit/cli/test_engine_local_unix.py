"""``cargohold engine --local R --local-unix PATH``: the local replica's spec carries its
server's socket (tried before its TCP address, which stays the fallback and what the
status shows); the other replicas go over TCP; without --local it is a clear error."""

from __future__ import annotations

from cargohold.cli import engine_cmd
from cargohold.engine import daemon

BASE = ["--volume", "v", "--epoch", "1", "--plaintext"]
REPLICAS = ["--replica", "r0@10.0.0.1:9500", "--replica", "r1@10.0.0.2:9500"]


def test_the_local_replica_gets_the_socket(monkeypatch):
    seen = []
    monkeypatch.setattr(daemon, "run", seen.append)
    argv = [*BASE, *REPLICAS, "--local", "r0", "--local-unix", "/run/rs/replica.sock"]
    assert engine_cmd.main(argv) == 0
    (config,) = seen
    assert [(s.id, s.local, s.unix) for s in config.replicas] == [
        ("r0", True, "/run/rs/replica.sock"),
        ("r1", False, None),
    ]
    assert str(config.replicas[0]) == "r0@10.0.0.1:9500"  # the text form is unchanged


def test_without_local_the_socket_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(daemon, "run", lambda config: None)
    assert engine_cmd.main([*BASE, *REPLICAS, "--local-unix", "/run/rs/replica.sock"]) == 2
    assert "--local-unix needs --local" in capsys.readouterr().err
