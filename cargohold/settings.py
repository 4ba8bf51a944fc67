"""Typed settings: the one style every cargohold component uses, and the settings of the
data-path daemons (replica server, engine, NBD frontend) and of every process.

One settings class per daemon or layer, each in its layer's ``settings.py``:
``control/settings.py`` (manager), ``agent/settings.py``, ``csi/settings.py``,
``audit/settings.py``, ``cli/settings.py``; the data path's are here because the engine and
the NBD frontend share ``NBDSettings`` and neither may import the other. Every class is a
frozen dataclass built on ``Settings`` below, not a pydantic-settings model: one engine runs
per attached volume, and importing pydantic-settings costs about 21 MiB of RSS and 0.4 s of
start-up in each of them (``tests/unit/test_settings.py`` keeps pydantic out of the engine).

Each field says its type, default, bounds and purpose (``setting``); ``EngineSettings(**given)``
takes arguments first (the CLI's flags), then ``CARGOHOLD_ENGINE_<FIELD>``, then the default,
and raises ConfigError naming the field or the variable and the rule on bad values (unknown
names included). ``python -m cargohold.settings_doc docs/configuration.md`` writes the table
of every variable from these classes.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import os
import re
from typing import Any, ClassVar

from cargohold.constants import DEFAULT_REPLICA_PORT, STORE_WRITE_CHUNK
from cargohold.errors import ConfigError, InvalidArgument
from cargohold.qos_limits import parse_bandwidth

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def setting(
    default: Any = dataclasses.MISSING,
    description: str = "",
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    multiple_of: int | None = None,
    default_factory: Any = dataclasses.MISSING,
    parse: Any = None,
    shown: str | None = None,
) -> Any:
    """A field with its bounds, checked when the settings are made. ``parse``: turns the
    text of an environment variable into the value, for types the loader does not know
    (arguments of other types are taken as they are); ``shown``: the type as the docs show
    it."""
    rules = {"gt": gt, "ge": ge, "le": le, "multiple_of": multiple_of}
    meta = {"description": description, **{k: v for k, v in rules.items() if v is not None}}
    if parse is not None:
        meta["parse"] = parse
    if shown is not None:
        meta["shown"] = shown
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Settings:
    """Base of the settings classes: arguments, then the environment, then the defaults."""

    env_prefix: ClassVar[str] = "CARGOHOLD_"
    component: ClassVar[str] = ""  # who reads them, in docs/configuration.md

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of the field ``name``."""
        return cls.env_prefix + name.upper()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each field's default."""
        return {f.name: _default(f) for f in _fields(cls)}

    @classmethod
    def variables(cls) -> list[tuple[str, str, Any, str]]:
        """(variable, type, default, description) of every field, in order."""
        return [
            (
                cls.variable(f.name),
                f.metadata.get("shown") or str(f.type).replace(" ", ""),
                _default(f),
                f.metadata.get("description", ""),
            )
            for f in _fields(cls)
        ]

    def __init__(self, **given: Any) -> None:
        fields = {f.name: f for f in _fields(self)}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise ConfigError(
                f"{type(self).__name__}: unknown setting(s) {', '.join(unknown)} "
                f"(known: {', '.join(fields)})"
            )
        for name, f in fields.items():
            var = self.env_prefix + name.upper()
            if name in given:
                value = _convert(f, given[name], name)
            elif var in os.environ:
                value = _convert(f, os.environ[var], var)
            else:
                value = _default(f)
            _check(f, value, var if name not in given else name)
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in _fields(self))
        return f"{type(self).__name__}({values})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and repr(other) == repr(self)


# sizes, the Kubernetes way (the one parser: CLI options, agent --disk, settings)
BINARY_UNITS = {
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "Pi": 1 << 50,
    "Ei": 1 << 60,
}
# decimal or binary depending on whom you ask (Kubernetes: 10G = 10^10, cargohold before
# 0.x and many tools: 10 GiB): refused with a hint rather than read either way
AMBIGUOUS_UNITS = ("K", "M", "G", "T", "P", "E")
MAX_SIZE = 1 << 63  # no size is larger (a signed 64-bit integer, as everywhere)
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")


RATE = "bytes/s (e.g. 200Mi, 500M)"  # how the docs show a bandwidth setting


def parse_rate(text: str) -> int:
    """A bandwidth setting's text: bytes per second as a Kubernetes quantity — ``400Mi``
    (2^20), ``500M`` (10^6), or plain bytes (qos_limits.parse_bandwidth). Bandwidths take
    decimal units and sizes do not (``parse_size``): docs/qos.md, "Units"."""
    try:
        return parse_bandwidth(text)
    except InvalidArgument as e:
        raise ValueError(str(e)) from None


def parse_size(text: str, option: str = "size") -> int:
    """'10Gi', '10GiB', '512Mi', '4Ki', '4096', '4096B', '1.5Gi' -> bytes: binary units
    as Kubernetes writes them (Ki, Mi, Gi, Ti, Pi, Ei; with or without a trailing B) or
    plain bytes. K/M/G/T (and KB/MB/GB/TB) are refused with a hint: they mean powers of
    ten in Kubernetes and powers of two in many tools. ``option`` names the user's option
    in the error (``--size``). Raises ConfigError: no negatives, inf, nan, fractions of
    a byte, or sizes of 2^63 bytes or more."""
    raw = text if isinstance(text, str) else str(text)
    examples = "examples: 4096, 512Mi, 10Gi, 1.5GiB"
    if raw.strip().startswith("-"):
        raise ConfigError(f"{option}: a size cannot be negative, got {raw.strip()!r}")
    m = _SIZE.fullmatch(raw)
    if m is None:
        raise ConfigError(f"{option}: cannot read {raw.strip()!r} as a size ({examples})")
    number, given = m.group(1), m.group(2)
    unit = given[:-1] if given.lower().endswith("ib") else given  # GiB -> Gi
    unit = "" if unit.lower() == "b" else unit
    canonical = {u.lower(): u for u in BINARY_UNITS}
    if unit.lower() in canonical:
        unit = canonical[unit.lower()]
    elif unit.upper().removesuffix("B") in AMBIGUOUS_UNITS:
        u = unit.upper().removesuffix("B")
        raise ConfigError(
            f"{option}: {raw.strip()!r} is ambiguous ({given}: powers of ten to Kubernetes, "
            f"of two to other tools): write {number}{u}i for {u}iB (binary), or the size in bytes"
        )
    elif unit:
        raise ConfigError(f"{option}: unknown unit {given!r} in {raw.strip()!r} ({examples})")
    try:  # exact: 60 digits hold any size below 2^63 with any fraction that matters
        ctx = decimal.Context(prec=60, traps=[decimal.Overflow, decimal.InvalidOperation])
        value = ctx.multiply(decimal.Decimal(number), BINARY_UNITS.get(unit, 1))
    except (decimal.Overflow, decimal.InvalidOperation):
        value = decimal.Decimal(MAX_SIZE)
    if value >= MAX_SIZE:
        raise ConfigError(f"{option}: {raw.strip()!r} is too large (at most 8Ei - 1 byte)")
    if value != value.to_integral_value():
        raise ConfigError(f"{option}: {raw.strip()!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """Bytes -> an exact spelling that ``parse_size`` reads back: 10737418240 -> '10Gi',
    1536 -> '1.5Ki', 1000 -> '1000'."""
    if n < 0:
        raise ValueError(f"a size is never negative: {n}")
    for unit, mult in reversed(BINARY_UNITS.items()):
        if n >= mult and (n * 4) % mult == 0:  # exact with at most two decimals (.25, .5, .75)
            q = decimal.Decimal(n) / mult
            return f"{q.normalize():f}{unit}"
    return str(n)


def _fields(obj: Any) -> tuple[dataclasses.Field, ...]:
    """The fields of a settings class or object (every subclass is a dataclass; the base,
    which declares none, is not)."""
    return dataclasses.fields(obj)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _convert(f: dataclasses.Field, value: Any, where: str) -> Any:
    kind = str(f.type).replace(" ", "")
    text = value.strip() if isinstance(value, str) else None
    try:
        if "parse" in f.metadata:
            return f.metadata["parse"](text) if text is not None else value
        if kind in ("int|None", "float|None"):
            if value is None or text == "":
                return None
            kind = kind.removesuffix("|None")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if text is not None and text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError("expected true or false")
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError("expected an integer")
            try:
                return int(value)
            except ValueError:
                raise ValueError("expected an integer") from None
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError("expected a number")
            try:
                return float(value)
            except ValueError:
                raise ValueError("expected a number") from None
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
        if kind == "str|None":
            if value is None or isinstance(value, str):
                return value or None
            raise ValueError("expected a string")
        if kind == "list[str]":
            if text is not None:
                value = json.loads(text) if text.startswith("[") else text.split(",")
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ValueError("expected a list of strings")
            return [x.strip() for x in value if x.strip()]
    except ConfigError as e:
        raise ConfigError(f"{where}: {value!r}: {e}") from None
    except (ValueError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: {value!r}: {e}") from None
    raise TypeError(f"setting {f.name}: unsupported type {f.type}")  # a bug in this module


def _check(f: dataclasses.Field, value: Any, where: str) -> None:
    m = f.metadata
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    if "gt" in m and not value > m["gt"]:
        raise ConfigError(f"{where}: {value!r} must be greater than {m['gt']}")
    if "ge" in m and not value >= m["ge"]:
        raise ConfigError(f"{where}: {value!r} must be at least {m['ge']}")
    if "le" in m and not value <= m["le"]:
        raise ConfigError(f"{where}: {value!r} must be at most {m['le']}")
    if "multiple_of" in m and value % m["multiple_of"]:
        raise ConfigError(f"{where}: {value!r} must be a multiple of {m['multiple_of']}")


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class ReplicaServerSettings(Settings):
    """The replica server of one node (``cargohold replica-server``)."""

    env_prefix: ClassVar[str] = "CARGOHOLD_REPLICA_"
    component: ClassVar[str] = "replica server"

    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(DEFAULT_REPLICA_PORT, "TCP port (0: any free one)", ge=0, le=65535)
    unix_socket: str | None = setting(None, "also listen on this unix socket")
    disks: list[str] = setting(default_factory=list, description="directories holding replicas")  # noqa: RUF009
    node: str = setting("local", "the node's name, in logs and answers")
    workers: int = setting(1, "processes serving replicas", ge=1, le=64)
    max_connections: int = setting(
        4096,
        "connections in all (also never more than RLIMIT_NOFILE minus fd_headroom)",
        ge=1,
    )
    idle_close_seconds: float = setting(0.0, "0 = never close idle sessions", ge=0)
    fd_headroom: int = setting(
        256, "file descriptors kept free of connections: replica files, listeners, logs", ge=16
    )
    reserved_connections: int = setting(
        64,
        "of the connection limit, places only the node's own peers may take: the unix "
        "socket, the listen address and trusted_addresses (the agent, local engines)",
        ge=0,
    )
    max_connections_per_address: int = setting(
        512, "connections from one address other than the node's own", ge=1
    )
    trusted_addresses: list[str] = setting(  # noqa: RUF009
        default_factory=list,
        description="more client addresses that may use the reserved places",
    )
    first_request_timeout: float = setting(
        10.0, "seconds a new connection has to send its first complete request", gt=0
    )
    evict_idle_after: float = setting(
        10.0,
        "at a limit, a connection with no replica open that has been silent this long is "
        "closed (the longest silent first) to let a new one in; 0 = never",
        ge=0,
    )
    tls_dir: str | None = setting(
        None, "credentials directory (tls.crt, tls.key, ca.crt, ca.crl): TLS on the TCP socket"
    )
    plaintext: bool = setting(False, "no TLS, no authentication (benchmarks only; loud)")
    wire_version: int = setting(
        2,
        "newest replica wire protocol version served (1: no batched writes, as before 2)",
        ge=1,
        le=2,
    )
    store_write_chunk: int = setting(
        STORE_WRITE_CHUNK,
        "bytes per pwrite of a replica's large writes (0: each write in one). The kernel "
        "sizes page-cache folios by the write; 4 KiB writes into large folios cost several "
        "times more system time (docs/benchmarks.md, Replica server: large folios)",
        ge=0,
        multiple_of=4096,
    )


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class EngineSettings(Settings):
    """One volume's engine (``cargohold engine``)."""

    env_prefix: ClassVar[str] = "CARGOHOLD_ENGINE_"
    component: ClassVar[str] = "engine"

    replica_timeout: float = setting(
        5.0, "seconds a replica may take to answer before it is dropped (ERR)", gt=0
    )
    min_replicas: int = setting(
        1, "below this many replicas in the write set, I/O fails (EIO)", ge=1
    )
    rebuild_bandwidth: int = setting(
        0, "bytes per second a rebuild may copy (0 = unlimited)", ge=0, parse=parse_rate, shown=RATE
    )
    rebuild_window: int = setting(
        64 * 1024 * 1024, "bytes of volume a rebuild step covers", ge=1 << 20
    )
    local_reads: bool = setting(
        True,
        "read the local replica's files directly, beside its server "
        "(engine/local_reads.py); off: every read goes through a replica server",
    )
    scrub_interval_hours: float = setting(
        168.0, "hours between scrub passes of every replica (0 = on demand only)", ge=0
    )
    scrub_bandwidth: int = setting(
        32 * 1024 * 1024,
        "bytes per second a scrub reads per replica (0 = unlimited)",
        ge=0,
        parse=parse_rate,
        shown=RATE,
    )
    scrub_window: int = setting(
        4 * 1024 * 1024,
        "bytes of volume each replica verifies per scrub request",
        ge=4096,
        multiple_of=4096,
    )
    backup_rate_mb: int = setting(
        0, "MB per second a backup reads from a replica (0 = unlimited)", ge=0
    )
    import_bandwidth: int = setting(
        0,
        "bytes per second a clone's import may copy (0 = unlimited)",
        ge=0,
        parse=parse_rate,
        shown=RATE,
    )
    restore_bandwidth: int = setting(
        0,
        "bytes per second a restore may write (0 = unlimited)",
        ge=0,
        parse=parse_rate,
        shown=RATE,
    )
    rekey_bandwidth: int = setting(
        0,
        "bytes per second an encrypted volume's data-key rotation may read and rewrite "
        "(0 = unlimited; it still yields to the consumer)",
        ge=0,
        parse=parse_rate,
        shown=RATE,
    )
    background_yield_max: float = setting(
        0.05,
        "seconds background work (rebuild, scrub, backup, import, restore, rekey) waits per chunk "
        "while the volume's consumer is busy (0 = never yields)",
        ge=0,
        le=1,
    )
    tls_dir: str | None = setting(
        None, "credentials directory of this volume's engine certificate: TLS to replicas"
    )
    plaintext: bool = setting(False, "talk to replica servers without TLS (benchmarks only)")
    tag_cache_blocks: int = setting(
        1024,
        "an encrypted volume's tag blocks the engine caches (4 KiB each; 1024 = 4 MiB, "
        "covering 256 MiB of data)",
        ge=4,
    )
    batch_writes: bool = setting(
        True, "send the writes of one event-loop pass to a replica as one WRITE_BATCH frame"
    )


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class NBDSettings(Settings):
    """The NBD frontend of an engine or of ``cargohold nbd-serve``: how many connections it
    takes and how long it waits for them (docs/operations.md, "Connection limits")."""

    env_prefix: ClassVar[str] = "CARGOHOLD_NBD_"
    component: ClassVar[str] = "engine, nbd-serve"

    handshake_timeout: float = setting(
        10.0, "seconds a client has to finish the handshake (option haggling)", gt=0
    )
    max_connections: int = setting(1024, "connections in all, handshakes included", ge=1)
    max_connections_per_address: int = setting(64, "connections from one client address", ge=1)
    idle_timeout: float = setting(
        0.0,
        "close a connection with no request in flight after this many seconds of silence "
        "(0 = never: kernel NBD clients keep idle connections for days)",
        ge=0,
    )
    evict_idle_after: float = setting(
        60.0,
        "at a connection limit, a connection idle this long with nothing in flight is "
        "closed (the longest idle first) to let a new client in; 0 = never evict",
        ge=0,
    )


@dataclasses.dataclass(init=False, repr=False, eq=False, frozen=True)
class ProcessSettings(Settings):
    """What every cargohold process reads first, before its own settings: the log level
    (``cargohold.logs``) and the memory tuning (``cargohold.memtune``). Those two modules sit
    below this one and read the variables themselves, so that a process can log about a bad
    setting; this class types and documents them, and a test checks that the names match."""

    env_prefix: ClassVar[str] = "CARGOHOLD_"
    component: ClassVar[str] = "every process"

    log: str = setting(
        "INFO",
        "log level: DEBUG, INFO, WARNING, ERROR, CRITICAL or a number (any other value: "
        "INFO and a warning)",
    )
    malloc_tune: str = setting(
        "1", "0: leave glibc's malloc untuned (1: it gives freed memory back to the system)"
    )
    gc_default: str = setting(
        "0",
        "1: keep Python's garbage-collector thresholds (0: raised after start-up, fewer "
        "pauses in the data path)",
    )
    version_override: str = setting(
        "",
        "the version this process reports instead of its package's: a hook for the upgrade "
        "test (control/version_skew.py); never set it in production",
    )
    spawn_prefix: str = setting(
        "",
        "a command that runs the long-lived processes an agent or CSI node plugin starts "
        "(engines, the replica server, nbdfuse) by exec'ing them, e.g. `systemd-run --scope "
        "--quiet --collect --slice=cargohold.slice --`: in Kubernetes they then live in a "
        "host cgroup and outlive the pod (docs/upgrades.md); empty: started directly",
    )
    tls_dir: str = setting(
        "",
        "a daemon's credentials directory: tls.crt, tls.key, ca.crt, ca.crl (--tls-dir; "
        "docs/security.md); for a client of the manager (the CLI, the CSI driver) the "
        "certificate it presents (default: the cluster directory's tls/)",
    )
    no_native: str = setting(
        "0",
        "1: the block cipher's pure-Python loop even where its C extension is built "
        '(cargohold.encryption.native reads it; docs/encryption.md, "Cost")',
    )
