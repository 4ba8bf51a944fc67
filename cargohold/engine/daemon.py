"""The engine as a process: one volume's engine, its scrubber, its control socket and its
NBD server, wired together and run on uvloop until SIGTERM/SIGINT.

``cargohold engine`` (``cli/engine_cmd.py``) parses its arguments into an ``EngineRun`` and
calls ``run``; the node agent starts one such process per attached volume. Memory tuning
(``memtune``: malloc thresholds, a frozen GC after the start) and the unix sockets' cleanup
live here too. Logging is set up by the caller (``cargohold.logs``) before ``run``.

The NBD endpoint is local by default: loopback (or a unix socket) on the node the volume
is attached to, in clear. On any other address it requires TLS (``nbd_credentials``):
the engine's ``--tls-dir`` and only ``agent/<node>`` as client (``policy.nbd_authorizer``),
or ``--plaintext``, announced loudly. docs/security.md, "The NBD endpoint".

This module is imported by every engine process: it must stay lean (no typer, pydantic,
numpy, rich or httpx; ``tests/unit/test_settings.py`` checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from cargohold import memtune
from cargohold.constants import DEFAULT_NBD_PORT
from cargohold.encryption.block_cipher import MAX_EPOCH, BlockCipher
from cargohold.engine.background import Pace, foreground_ops
from cargohold.engine.control import serve_control
from cargohold.engine.copies import ReplicaCopies
from cargohold.engine.replica_link import ReplicaSpec
from cargohold.engine.scrubber import Scrubber
from cargohold.engine.volume import Volume
from cargohold.errors import ConfigError
from cargohold.frontend.encrypted_device import EncryptedDevice
from cargohold.frontend.nbd_server import serve
from cargohold.frontend.qos_gate import QosGate
from cargohold.frontend.rekey_sweep import Rekey
from cargohold.security.policy import nbd_authorizer
from cargohold.security.tls import (
    Credentials,
    credentials_or_plaintext,
    is_loopback,
    warn_plaintext,
)
from cargohold.settings import EngineSettings, NBDSettings


@dataclass(frozen=True)
class EngineRun:
    """What one engine process serves, and where (``cargohold engine``'s options)."""

    volume: str
    replicas: list[ReplicaSpec]
    epoch: int
    settings: EngineSettings = field(default_factory=EngineSettings)
    nbd: NBDSettings = field(default_factory=NBDSettings)  # CARGOHOLD_NBD_*
    host: str = "127.0.0.1"
    port: int = DEFAULT_NBD_PORT
    unix: str | None = None  # NBD also on this unix socket
    control: str | None = None  # the control API (JSON lines) on this unix socket
    require: tuple[int, int] = (0, 0)  # refuse to start below this (epoch, generation)
    epoch_jump: bool = False
    last_scrub_at: float = 0.0  # when the volume's last scrub pass ended (UNIX time)
    node: str = ""  # the node the volume is attached to: agent/<node> may use NBD over TLS
    tls_dir: str | None = None  # the engine's credentials directory (security/tls.py)
    nbd_tls: bool = False  # TLS on the NBD endpoint even on loopback (else: off network)
    plaintext: bool = False  # a network NBD endpoint without TLS (benchmarks; loud)
    qos: dict = field(default_factory=dict)  # QoS limits to start with (cargohold.qos_limits)
    read_only: bool = False  # NBD clients may only read (a read-only attach: EngineSpec)
    # an encrypted volume (docs/encryption.md): its AES-256 data keys, newest first (read
    # from --data-key-fd; never in argv, the environment, a log or a file; more than one
    # during a data-key rotation) and its 16-byte encryption id (--encryption-key-id).
    # None: a plain volume.
    data_key: tuple[bytes, ...] | None = field(default=None, repr=False)
    encryption_id: bytes | None = None


def nbd_credentials(config: EngineRun) -> Credentials | None:
    """The credentials the TCP NBD endpoint requires TLS with; None: it speaks in clear
    (loopback, or ``--plaintext``, announced). ConfigError when a network endpoint has
    neither ``--tls-dir`` nor ``--plaintext``, or TLS is on without ``--node``."""
    local = is_loopback(config.host)
    if local and not config.nbd_tls:
        return None
    if config.tls_dir:
        if not config.node:
            raise ConfigError(
                "NBD over TLS needs --node: the node the volume is attached to (its agent's "
                "certificate is the only one admitted)"
            )
        return Credentials.load(config.tls_dir)
    if config.plaintext and not config.nbd_tls:
        print(warn_plaintext(f"the NBD endpoint of volume {config.volume} on {config.host}"))
        return None
    where = "--nbd-tls" if local else f"--listen {config.host} (not loopback)"
    raise ConfigError(
        f"{where}: an NBD endpoint on the network needs TLS: give --tls-dir (or "
        "CARGOHOLD_TLS_DIR), or --plaintext for a benchmark"
    )


def replica_credentials(config: EngineRun, nbd: Credentials | None) -> Credentials | None:
    """The credentials of the replica links: TLS, or --plaintext said out loud (nothing
    else starts an engine). Loaded once per engine start — each load parses the
    certificate, key, CAs and CRL, ~50 ms on a busy node — and shared with the NBD
    endpoint's (``nbd``) when they are the same directory."""
    s = config.settings
    if (
        nbd is not None
        and s.tls_dir
        and not s.plaintext
        and os.path.realpath(nbd.directory) == os.path.realpath(s.tls_dir)
    ):
        return nbd
    return credentials_or_plaintext(s.tls_dir, s.plaintext, f"the engine of {config.volume}")


def run(config: EngineRun) -> None:
    """Serve the volume until SIGTERM/SIGINT, then close it and remove its unix sockets.
    Raises CargoholdError (e.g. stale replicas, ``exit_code`` set) or OSError (e.g. the
    address is in use)."""
    memtune.tune_malloc()
    try:
        import uvloop

        uvloop.run(serve_engine(config))
    finally:
        for path in (config.unix, config.control):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


async def serve_engine(config: EngineRun) -> None:
    """The engine in the running event loop, until SIGTERM/SIGINT."""
    tls = nbd_credentials(config)  # before anything starts: a bad setup fails at once
    creds = replica_credentials(config, tls)
    cipher = None
    if config.data_key is not None:
        if config.encryption_id is None:
            raise ConfigError("an encrypted volume needs its encryption id (--encryption-key-id)")
        if config.epoch > MAX_EPOCH:
            raise ConfigError(f"epoch {config.epoch}: an encrypted volume's epoch fits 32 bits")
        cipher = BlockCipher(config.data_key, config.encryption_id)
    vol = Volume(
        config.volume,
        config.replicas,
        config.epoch,
        config.settings,
        require=config.require,
        epoch_jump=config.epoch_jump,
        tls=creds,
    )
    vol.read_only = config.read_only  # the NBD export's flag: writes answered EPERM
    await vol.start()
    device: Any = vol
    rekey: Rekey | None = None
    s = config.settings
    if cipher is not None:  # encrypted: the NBD server serves the logical volume
        enc = EncryptedDevice(
            vol,
            cipher,
            config.epoch,
            vol.counters,
            copies=ReplicaCopies(vol),
            cache_blocks=config.settings.tag_cache_blocks,
            layout_version=lambda: vol.local.layout,  # a revert: the tag cache is dropped
        )
        await enc.check_key()  # a wrong key: writes refused, reads fail (logged)
        vol.io.sections["encryption"] = enc.status
        device = enc
        # data-key rotation: the ``data-keys`` op, and a sweep while there are older keys
        pace = Pace(vol.counters, s.rekey_bandwidth, most=s.background_yield_max)
        rekey = Rekey(
            enc,
            config.data_key or (),
            pace=pace.chunk,
            own_ops=lambda: foreground_ops(vol.counters),
            layout_version=lambda: vol.local.layout,
        )
        vol.io.sections["rekey"] = rekey.status
        rekey.start()
    memtune.freeze_gc()

    def listening(addresses: list[str]) -> None:
        tcp = next((a for a in addresses if not a.startswith("unix:")), None)
        if tcp is not None:
            vol.endpoint = endpoint_uri(tcp, config.volume, tls=tls is not None)

    scrubber = Scrubber(vol, last_scrub_at=config.last_scrub_at)
    scrubbing = asyncio.get_running_loop().create_task(scrubber.run())  # periodic and asked
    qos = QosGate(config.qos)  # the control op ``qos`` changes its limits online
    ctl = await serve_control(vol, config.control, scrubber, qos, rekey) if config.control else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await serve(
            device,
            config.host,
            config.port,
            unix=config.unix,
            settings=config.nbd,
            name=config.volume,
            description=config.volume,
            stop=stop,
            ready=listening,
            started=lambda server: setattr(vol, "nbd_clients", server.clients),
            tls=tls,
            authorize=nbd_authorizer(config.volume, config.node) if tls is not None else None,
            qos=qos,
        )
    finally:
        if ctl is not None:
            ctl.close()
        scrubbing.cancel()
        await asyncio.gather(scrubbing, return_exceptions=True)
        if rekey is not None:
            await rekey.close()
        await vol.close()


def endpoint_uri(bound: str, volume: str, tls: bool = False) -> str:
    """The NBD URI clients use for a bound ``HOST:PORT`` (``nbds://`` with TLS). A
    wildcard address is reported as the loopback address of its family (the consumer runs
    on the engine's node)."""
    host, _, port = bound.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'nbds' if tls else 'nbd'}://{host}:{port}/{volume}"
