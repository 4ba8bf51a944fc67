"""The launcher's plan of a cluster: lab names and addresses, node zones, bad input.
Nothing is started here."""

from __future__ import annotations

import pytest

from cargohold.errors import ConfigError
from cargohold.launcher import LocalCluster
from cargohold.launcher.netns import LabLayout


def test_lab_layout_is_a_function_of_the_directory(tmp_path):
    a = LabLayout.for_dir(str(tmp_path / "a"))
    assert a == LabLayout.for_dir(str(tmp_path / "a" / ".." / "a"))
    assert a != LabLayout.for_dir(str(tmp_path / "b"))
    assert a.prefix.startswith("ch") and len(a.prefix) == 8
    x, y = (int(p) for p in a.subnet.split(".")[1:])
    assert a.subnet.startswith("10.") and 64 <= x < 192 and 0 <= y < 256
    assert a.manager_address == f"{a.subnet}.2"
    assert a.node_address(1) == f"{a.subnet}.11" and a.node_address(16) == f"{a.subnet}.26"
    assert a.namespaces(2) == [
        f"{a.prefix}-br",
        f"{a.prefix}-mgr",
        f"{a.prefix}-node-1",
        f"{a.prefix}-node-2",
    ]
    assert len(a.node_port(16)) <= 15  # an interface name


def test_plan_spreads_zones_and_names_everything(tmp_path):
    d = str(tmp_path / "c")
    c = LocalCluster.create(d, nodes=4, zones=["a", "b", "c"], command=["true"])
    assert [(n.name, n.zone) for n in c.nodes.values()] == [
        ("node-1", "a"),
        ("node-2", "b"),
        ("node-3", "c"),
        ("node-4", "a"),
    ]
    assert c.api == f"unix:{d}/api.sock" and c.backend == "sqlite" and len(c.managers) == 1
    assert c.nodes["node-2"].dir == f"{d}/nodes/node-2"
    assert c.nodes["node-2"].log == f"{d}/logs/node-2.log"
    assert c._agent_argv(c.nodes["node-2"])[:4] == ["true", "agent", "--node", "node-2"]
    etcd = LocalCluster.create(d, nodes=1, backend="etcd", command=["true"])
    assert [m.unix for m in etcd.managers] == [f"{d}/api.sock", f"{d}/api-2.sock"]
    argv = etcd._manager_argv(etcd.managers[1])
    assert argv[3].startswith("etcd:https://127.0.0.1:")  # TLS, client certificates
    assert argv[argv.index("--etcd-tls-dir") + 1] == f"{d}/etcd-tls/client"
    assert "--client-cert-auth=true" in etcd._etcd_argv()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 0}, "--nodes must be 1 to 16"),
        ({"nodes": 17}, "--nodes must be 1 to 16"),
        ({"zones": ["Zone A"]}, "not a DNS label"),
        ({"backend": "redis"}, "sqlite or etcd"),
        ({"managers": 2}, "SQLite serves one manager"),
    ],
)
def test_bad_plans_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LocalCluster.create(str(tmp_path), command=["true"], **kwargs)


def test_a_directory_too_long_for_a_unix_socket_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="too long"):
        LocalCluster.create(str(tmp_path / ("x" * 120)), command=["true"])


def test_netns_without_root_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match="--netns needs root"):
        LocalCluster.create(str(tmp_path), netns=True, command=["true"])


def test_agents_get_the_cluster_ca_unless_the_cluster_is_plaintext(tmp_path):
    """`cargohold up` runs the data path over mutual TLS: each agent issues its replica
    server's and engines' certificates from DIR/ca; `--plaintext` is asked for, and kept in
    cluster.json so that a later `down`/`status` sees the same cluster."""
    d = str(tmp_path / "c")
    c = LocalCluster.create(d, nodes=1, command=["true"])
    argv = c._agent_argv(c.nodes["node-1"])
    assert argv[argv.index("--ca-dir") + 1] == f"{d}/ca" and "--plaintext" not in argv
    c.save()
    assert LocalCluster.load(d).plaintext is False
    p = LocalCluster.create(d, nodes=1, command=["true"], plaintext=True)
    assert "--ca-dir" not in p._agent_argv(p.nodes["node-1"])
    p.save()
    assert LocalCluster.load(d).plaintext is True
