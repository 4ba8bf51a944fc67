"""Where the agent's engines put their NBD endpoint: loopback in clear by default (the
consumer runs on this node), NBD over TLS (``nbds://``, ``--tls-dir``, ``--node``) on any
other address, and no network endpoint without credentials."""

from __future__ import annotations

import pytest

from cargohold.agent.agent import nbd_tls_dir
from cargohold.agent.engine_process import EngineProcess
from cargohold.agent.settings import AgentSettings
from cargohold.control.model import EngineAssignment
from cargohold.errors import ConfigError
from cargohold.security.tls import is_loopback

SPEC = EngineAssignment(volume="v", epoch=2, size_bytes=1 << 20, replicas=["v-r1@h:1"])


def argv_of(eng: EngineProcess) -> list[str]:
    return eng.argv()


def test_the_default_is_loopback_in_clear():
    cfg = AgentSettings(node="node-1", nbd_tls_dir="/creds")
    assert cfg.nbd_address == "127.0.0.1" and nbd_tls_dir(cfg) == ""
    eng = EngineProcess(SPEC, cfg.nbd_address, "/run/v.sock", "/dev/null", 10809, node="node-1")
    assert eng.endpoint == "nbd://127.0.0.1:10809/v"
    argv = argv_of(eng)
    assert argv[argv.index("--listen") + 1] == "127.0.0.1:10809"
    assert "--tls-dir" not in argv and argv[argv.index("--node") + 1] == "node-1"


def test_a_network_endpoint_speaks_tls_and_names_the_node():
    cfg = AgentSettings(node="node-1", nbd_address="10.0.0.7", nbd_tls_dir="/creds")
    assert nbd_tls_dir(cfg) == "/creds"
    eng = EngineProcess(
        SPEC, cfg.nbd_address, "/run/v.sock", "/dev/null", 10809, node="node-1", tls_dir="/creds"
    )
    assert eng.endpoint == "nbds://10.0.0.7:10809/v"
    argv = argv_of(eng)
    assert argv[argv.index("--listen") + 1] == "10.0.0.7:10809"
    assert argv[argv.index("--tls-dir") + 1] == "/creds"
    assert argv[argv.index("--node") + 1] == "node-1"


@pytest.mark.parametrize("address", ["10.0.0.7", "0.0.0.0", "::"])
def test_a_network_endpoint_without_credentials_is_refused(address):
    with pytest.raises(ConfigError, match="--nbd-tls-dir"):
        nbd_tls_dir(AgentSettings(node="n", nbd_address=address))


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
     ("node-1.example", False)],
)  # fmt: skip
def test_is_loopback(host, local):
    assert is_loopback(host) is local
