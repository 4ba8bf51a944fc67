"""``cargohold engine``: run one volume's engine — replicate to its replicas, serve it
over NBD — until SIGTERM/SIGINT. Normally started by the node agent; by hand for tests.

    cargohold engine --volume pvc-1 --epoch 3 \\
        --replica r0@10.0.0.1:9500 --replica r1@10.0.0.2:9500 --replica r2@10.0.0.3:9500 \\
        --local r0 --local-unix /var/lib/cargohold/run/replica-server/replica.sock \\
        --listen 127.0.0.1:10809 --control /run/cargohold/pvc-1.sock --require 2:1288

The NBD endpoint is local by default (``--listen`` on loopback, ``--unix``). On another
address it requires TLS: ``--tls-dir DIR`` (env CARGOHOLD_TLS_DIR; the engine's
credentials) and ``--node NODE`` (only ``agent/NODE`` may connect), or ``--plaintext``.

``--require EPOCH:GEN``: the newest (epoch, generation) the manager recorded for the
volume; if every reachable replica is older, the engine refuses to start (exit 1) instead
of serving a volume that lacks acknowledged writes (invariant 4).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys

from cargohold.cli.units import split_addr
from cargohold.constants import DEFAULT_NBD_PORT
from cargohold.errors import CargoholdError, ConfigError
from cargohold.logs import setup_logging
from cargohold.qos_limits import check as check_qos
from cargohold.qos_limits import parse_bandwidth
from cargohold.settings import ProcessSettings

# The node agent runs one engine per attached volume (``python -m cargohold engine ...``):
# ``cargohold/__main__.py`` hands those arguments to ``main`` here before anything else is
# imported, and this module parses them with argparse and hands them to the engine's
# process wiring (``engine/daemon.py``), which imports only the data path. Going
# through the typer app would load typer, pydantic and every other command's modules: about
# 30 MiB more per engine (docs/benchmarks.md, "Idle cost").


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cargohold engine", description="Serve a replicated volume over NBD."
    )
    p.add_argument("--volume", required=True, help="volume name")
    p.add_argument("--replica", action="append", required=True, help="ID@HOST:PORT (repeatable)")
    p.add_argument(
        "--epoch", type=int, required=True, help="this engine's epoch: older engines are fenced"
    )
    p.add_argument(
        "--epoch-jump",
        action="store_true",
        help="the manager raised the volume's epoch with `volume recover-epoch`: replicas "
        "may be opened more than 65,536 epochs above their own",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        help="NBD clients may only read: writes, trims and zeroes are refused (EPERM)",
    )
    p.add_argument("--local", help="id of the replica on this node (read first)")
    p.add_argument(
        "--local-unix",
        metavar="PATH",
        help="the unix socket of this node's replica server (with --local): the local "
        "replica is reached through it, in clear, and over TCP (TLS) only when it fails",
    )
    p.add_argument("--listen", help=f"NBD on HOST:PORT (default 127.0.0.1:{DEFAULT_NBD_PORT})")
    p.add_argument("--unix", help="NBD also on this unix socket (mode 0600, in clear)")
    p.add_argument(
        "--node",
        default="",
        help="the node the volume is attached to: only agent/NODE may use NBD over TLS",
    )
    p.add_argument(
        "--tls-dir",
        default=os.environ.get(ProcessSettings.variable("tls_dir")) or None,
        help="credentials of this volume's engine (role engine, name the volume; tls.crt, "
        "tls.key, ca.crt, ca.crl; env CARGOHOLD_TLS_DIR): mutual TLS to the replica servers, "
        "and NBD over TLS when --listen is not loopback",
    )
    p.add_argument(
        "--nbd-tls",
        action="store_true",
        help="require NBD over TLS on --listen even on loopback (tests, proxies)",
    )
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS: replica servers in clear, and a network NBD endpoint without TLS "
        "(benchmarks only; announced loudly)",
    )
    p.add_argument("--control", help="control API (JSON lines) on this unix socket")
    p.add_argument("--min-replicas", type=int, help="fewest replicas to keep serving (1)")
    p.add_argument("--replica-timeout", type=float, help="seconds before a replica is dropped (5)")
    p.add_argument(
        "--rebuild-bandwidth",
        help="rebuild copy rate in bytes/s, a Kubernetes quantity: 200Mi = 200 MiB/s, "
        "200M = 200 MB/s (0 = unlimited)",
    )
    p.add_argument(
        "--qos",
        metavar="JSON",
        help="QoS limits to start with, e.g. '{\"max_iops\": 1000}' (docs/qos.md); the "
        "control op qos changes them online",
    )
    p.add_argument(
        "--require",
        metavar="EPOCH:GEN",
        help="refuse to start if every reachable replica is older than this (epoch, generation)",
    )
    p.add_argument(
        "--last-scrub-at",
        type=float,
        default=0.0,
        metavar="UNIX_TIME",
        help="when the volume's last scrub pass ended: the next periodic pass counts from it "
        "(default: from the engine's start)",
    )
    p.add_argument(
        "--data-key-fd",
        type=int,
        metavar="N",
        help="an encrypted volume: read its 32-byte AES-256 data key (raw bytes) from file "
        "descriptor N to its end, then close it; during a data-key rotation more keys follow, "
        "32 bytes each, newest first (the key never goes to argv, the environment or a file; "
        "docs/encryption.md)",
    )
    p.add_argument(
        "--encryption-key-id",
        metavar="HEX32",
        help="an encrypted volume's 16-byte encryption id, in hex (with --data-key-fd)",
    )
    return p


def read_data_key(fd: int) -> tuple[bytes, ...]:
    """The data keys from file descriptor ``fd`` (read to its end, then closed): 32 bytes
    each, 1 to MAX_KEYS of them, the newest first (the one that seals writes; the others
    are older keys a data-key rotation still needs, docs/keys.md)."""
    from cargohold.encryption.block_cipher import KEY_BYTES, MAX_KEYS

    buf = bytearray()
    try:
        while len(buf) <= KEY_BYTES * MAX_KEYS:
            chunk = os.read(fd, KEY_BYTES * MAX_KEYS + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        raise ConfigError(f"--data-key-fd {fd}: cannot read the data key: {e.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    n = len(buf)
    if n == 0 or n % KEY_BYTES or n > KEY_BYTES * MAX_KEYS:
        buf[:] = bytes(n)
        raise ConfigError(
            f"--data-key-fd {fd}: expected exactly {KEY_BYTES} bytes of data key per key "
            f"(1 to {MAX_KEYS} keys), got "
            + (f"more than {KEY_BYTES * MAX_KEYS}" if n > KEY_BYTES * MAX_KEYS else str(n))
        )
    out = tuple(bytes(buf[i : i + KEY_BYTES]) for i in range(0, n, KEY_BYTES))
    buf[:] = bytes(n)
    return out


def parse_encryption(
    a: argparse.Namespace,
) -> tuple[tuple[bytes, ...] | None, bytes | None]:
    """(data keys, encryption id) from --data-key-fd and --encryption-key-id, or (None,
    None) for a plain volume; ConfigError unless both or neither are given."""
    if a.data_key_fd is None and a.encryption_key_id is None:
        return None, None
    if a.data_key_fd is None or a.encryption_key_id is None:
        raise ConfigError("--data-key-fd and --encryption-key-id go together")
    try:
        vid = bytes.fromhex(a.encryption_key_id)
    except ValueError:
        vid = b""
    if len(vid) != 16:
        raise ConfigError(
            f"--encryption-key-id {a.encryption_key_id!r}: expected 32 hex digits (16 bytes)"
        )
    return read_data_key(a.data_key_fd), vid


def parse_qos(text: str) -> dict:
    """``--qos JSON`` -> the limits, checked (InvalidArgument names a bad one)."""
    try:
        limits = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--qos: not JSON: {e}") from None
    return check_qos(limits, "--qos: ")


def main(argv: list[str]) -> int:
    """Run the engine until SIGTERM/SIGINT. -> the exit status (2: bad arguments)."""
    a = parser().parse_args(argv)
    if a.epoch < 1:
        return _fail("--epoch must be at least 1", 2)
    from cargohold.engine import daemon  # the data path: only once the arguments are good
    from cargohold.engine.replica_link import ReplicaSpec
    from cargohold.settings import EngineSettings, NBDSettings

    setup_logging()
    try:
        specs = [ReplicaSpec.parse(r, local=r.split("@", 1)[0] == a.local) for r in a.replica]
        if a.local_unix:  # the local replica's server socket: tried before its TCP address
            if not any(s.local for s in specs):
                raise ConfigError("--local-unix needs --local, the id of one of the replicas")
            specs = [dataclasses.replace(s, unix=a.local_unix) if s.local else s for s in specs]
        given = {"min_replicas": a.min_replicas, "replica_timeout": a.replica_timeout}
        given |= {"tls_dir": a.tls_dir, "plaintext": a.plaintext or None}
        if a.rebuild_bandwidth:
            given["rebuild_bandwidth"] = parse_bandwidth(
                a.rebuild_bandwidth, "--rebuild-bandwidth: "
            )
        settings = EngineSettings(**{k: v for k, v in given.items() if v is not None})
        host, port = (
            split_addr(a.listen, DEFAULT_NBD_PORT) if a.listen else ("127.0.0.1", DEFAULT_NBD_PORT)
        )
        data_key, encryption_id = parse_encryption(a)
        config = daemon.EngineRun(
            volume=a.volume,
            replicas=specs,
            epoch=a.epoch,
            settings=settings,
            nbd=NBDSettings(),  # CARGOHOLD_NBD_*: connection limits and timeouts
            host=host,
            port=port,
            unix=a.unix,
            control=a.control,
            require=parse_require(a.require) if a.require else (0, 0),
            epoch_jump=a.epoch_jump,
            last_scrub_at=a.last_scrub_at,
            node=a.node,
            tls_dir=a.tls_dir,
            nbd_tls=a.nbd_tls,
            plaintext=a.plaintext,
            qos=parse_qos(a.qos) if a.qos else {},
            read_only=a.read_only,
            data_key=data_key,
            encryption_id=encryption_id,
        )
    except CargoholdError as e:
        return _fail(str(e), 2)
    try:
        daemon.run(config)
    except (CargoholdError, OSError) as e:
        return _fail(str(e), getattr(e, "exit_code", 1))
    return 0


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def parse_require(text: str) -> tuple[int, int]:
    """``EPOCH:GEN`` -> (epoch, generation), both non-negative integers."""
    epoch, sep, gen = text.partition(":")
    try:
        pair = (int(epoch), int(gen))
    except ValueError:
        pair = (-1, -1)
    if not sep or min(pair) < 0:
        raise ConfigError(f"--require {text!r}: expected EPOCH:GEN, e.g. 3:1288")
    return pair
