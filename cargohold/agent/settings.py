"""The node agent's settings (``cargohold agent``; env ``CARGOHOLD_AGENT_*``), in the one
settings style of cargohold (``cargohold/settings.py``). ``cli/agent_cmd.py`` gives its flags
as arguments (they win over the environment); ``agent.Agent`` takes the result."""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from cargohold.errors import ConfigError
from cargohold.settings import RATE, Settings, parse_rate, parse_size, setting


def parse_disk(text: str) -> tuple[str, int | None]:
    """'PATH' or 'PATH:CAPACITY' (e.g. /mnt/ssd0:500GiB) -> (path, capacity or None)."""
    path, sep, capacity = text.rpartition(":")
    if sep and path:
        try:
            return path, parse_size(capacity, f"--disk {text}")
        except ConfigError:
            if capacity[:1].isdigit():  # meant as a size (500G): say so, never a path
                raise
            # else a ':' that is part of the path
    if not text:
        raise ConfigError("--disk needs a path")
    return text, None


LATENCY = "duration (e.g. 2ms, 1500us; a plain number is µs; 0: off)"
MAX_LATENCY_TARGET_US = 10_000_000  # 10 s: beyond it no client waits
_UNITS_US = {"": 1.0, "us": 1.0, "µs": 1.0, "ms": 1e3, "s": 1e6}
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)\s*(us|µs|ms|s)?")


def parse_latency_target(text: str) -> int:
    """A node latency target's text -> microseconds: ``2ms``, ``1500us`` (or ``µs``),
    ``0.002s``, or a plain number of µs; 0 turns it off. ValueError says what is allowed."""
    allowed = (
        "use a duration from 50us to 10s such as 2ms, 1500us or 0.5ms (a plain number is "
        "microseconds), or 0 for no latency target"
    )
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"cannot read it as a duration: {allowed}")
    us = round(float(m.group(1)) * _UNITS_US[m.group(2) or ""])
    if us != 0 and not 50 <= us <= MAX_LATENCY_TARGET_US:
        raise ValueError(f"{us} µs is out of range: {allowed}")
    return us


def parse_disks(text: str) -> list[tuple[str, int | None]]:
    """'PATH[:CAPACITY],PATH[:CAPACITY]...' -> [(path, capacity or None), ...]."""
    return [parse_disk(d.strip()) for d in text.split(",") if d.strip()]


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class AgentSettings(Settings):
    """One node's agent (``cargohold agent``)."""

    env_prefix: ClassVar[str] = "CARGOHOLD_AGENT_"
    component: ClassVar[str] = "agent"

    node: str = setting("", "this node's name (a DNS-1123 label; --node)")
    api: list[str] = setting(  # noqa: RUF009
        default_factory=list,
        description="manager URLs, http://HOST:PORT or unix:/PATH, tried in turn (--api)",
    )
    address: str = setting("", "address the replica server listens on (--address)")
    dir: str = setting("", "node directory: agent.json, logs/, run/, the default disk (--dir)")
    zone: str = setting("", "failure zone of this node (--zone)")
    tags: list[str] = setting(  # noqa: RUF009
        default_factory=list, description="node tags for placement (--tag)"
    )
    disks: list[tuple[str, int | None]] = setting(  # noqa: RUF009
        default_factory=list,
        description="PATH[:CAPACITY],... holding replicas (--disk; default DIR/disk-0)",
        parse=parse_disks,
        shown="list[PATH[:CAPACITY]]",
    )
    replica_port: int | None = setting(
        None,
        "replica server port (--replica-port; none: the one used before, else any)",
        ge=1,
        le=65535,
    )
    heartbeat: float | None = setting(
        None,
        "seconds between heartbeats (--heartbeat; none: what the manager says)",
        ge=0.05,
    )
    nbd_address: str = setting(
        "127.0.0.1",
        "address the engines' NBD endpoints listen on: loopback, for the consumer on this "
        "node (default); any other address puts them on the network, with TLS (--nbd-address)",
    )
    nbd_tls_dir: str = setting(
        "",
        "credentials directory the engines serve NBD over TLS with, needed when nbd_address "
        "is not loopback (--nbd-tls-dir; docs/security.md)",
    )
    ca_dir: str | None = setting(
        None,
        "the cluster CA (local clusters: `cargohold up`): the agent issues its replica "
        "server's, its own and each engine's certificates from it, under DIR/tls/ (--ca-dir)",
    )
    tls_dir: str | None = setting(
        None,
        "the agent's credentials directory (role agent/NODE), without --ca-dir (--tls-dir; "
        "CARGOHOLD_TLS_DIR too)",
    )
    replica_tls_dir: str | None = setting(
        None, "the replica server's credentials (role replica/NODE) without --ca-dir"
    )
    join_token_file: str = setting(
        "",
        "a join file (cargohold node join-token create --output): with it and no certificate "
        "yet, the agent joins the cluster and gets its certificates (--join-token-file)",
    )
    disk_roots: list[str] = setting(  # noqa: RUF009
        default_factory=lambda: ["/var/lib/cargohold"],
        description="directories under which a disk added through the API may be created "
        "(besides the node directory and the --disk paths)",
    )
    handover: bool = setting(
        False,
        "on SIGTERM, exit leaving the engines and the replica server running for the next "
        "agent to adopt: a restart for an upgrade does not stop I/O (docs/upgrades.md); off: "
        "stop them first, the node is taken out of service",
    )
    metrics_port: int | None = setting(
        None,
        "port of the node's Prometheus scrape target, GET /metrics (--metrics-port; none: "
        "no metrics listener; docs/observability.md)",
        ge=0,
        le=65535,
    )
    metrics_address: str = setting(
        "", "address the metrics listener binds (--metrics-address; default: --address)"
    )
    node_iops: int = setting(
        0,
        "IOPS the node's disk sustains: when its busy volumes together reach it, they share "
        "it by their QoS weight and guaranteed minimum (--node-iops; docs/qos.md); 0: no sharing",
        ge=0,
    )
    node_bandwidth: int = setting(
        0,
        "bytes per second the node's disk sustains: when its busy volumes together reach it, "
        "they share it by their QoS weight (--node-bandwidth; docs/qos.md); 0: no sharing",
        ge=0,
        parse=parse_rate,
        shown=RATE,
    )
    node_latency_target: int = setting(
        0,
        "mean service latency the node's engines should see from their replicas, in µs: "
        "above it, the busy volumes share a budget that shrinks until it is met, by their "
        'QoS weight (--node-latency-target 2ms; docs/qos.md, "A latency target"); 0: off',
        ge=0,
        le=MAX_LATENCY_TARGET_US,
        parse=parse_latency_target,
        shown=LATENCY,
    )
    trash_grace: float = setting(
        86400.0,
        "seconds a deleted replica stays in its disk's trash (DISK/trash/) before it is "
        "really removed (--trash-grace)",
        ge=0,
    )
