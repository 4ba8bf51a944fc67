"""The engine loads its credentials directory once per start (engine/daemon.py): the
replica links share the NBD endpoint's credentials when both are the same directory."""

from __future__ import annotations

import pytest

from cargohold.engine import daemon
from cargohold.engine.replica_link import ReplicaSpec
from cargohold.errors import ConfigError
from cargohold.security import tls as tls_mod
from cargohold.settings import EngineSettings


def run_config(tls_dir, plaintext=False, host="10.1.2.3"):  # type: ignore[no-untyped-def]
    return daemon.EngineRun(
        volume="v",
        replicas=[ReplicaSpec.parse("r1@127.0.0.1:1")],
        epoch=1,
        settings=EngineSettings(tls_dir=tls_dir, plaintext=plaintext),
        host=host,
        node="node-1",
        tls_dir=tls_dir,
        plaintext=plaintext,
    )


def test_one_load_for_the_nbd_endpoint_and_the_replica_links(pki, monkeypatch):
    loads = []
    real = tls_mod.Credentials.load.__func__  # type: ignore[attr-defined]

    def counting(cls, directory, **kw):  # type: ignore[no-untyped-def]
        loads.append(str(directory))
        return real(cls, directory, **kw)

    monkeypatch.setattr(tls_mod.Credentials, "load", classmethod(counting))
    config = run_config(pki.dir("engine", "v"))
    nbd = daemon.nbd_credentials(config)  # off loopback: NBD over TLS
    assert nbd is not None
    assert daemon.replica_credentials(config, nbd) is nbd
    assert len(loads) == 1
    local = run_config(pki.dir("engine", "v"), host="127.0.0.1")  # NBD in clear on loopback
    assert daemon.nbd_credentials(local) is None
    assert daemon.replica_credentials(local, None) is not None
    assert len(loads) == 2


def test_the_old_refusals_stand(pki):
    with pytest.raises(ConfigError, match="needs TLS credentials"):
        daemon.replica_credentials(run_config(None, host="127.0.0.1"), None)
    both = run_config(pki.dir("engine", "v"), plaintext=True, host="127.0.0.1")
    with pytest.raises(ConfigError, match="not both"):
        daemon.replica_credentials(both, None)
