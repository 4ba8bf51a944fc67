"""A volume's QoS limits: their names, their allowed values, and the one check of them.

Every layer that takes limits from a user calls ``check`` (the REST API's models, the
CLI, the CSI driver's StorageClass and VolumeAttributesClass parameters, the engine's
``qos`` control op), so an error reads the same wherever it came from: it names the
parameter and its allowed values. ``parse_text`` reads the text forms (``10k``,
``100Mi``, ``2s``) the CLI and CSI parameters use. Pure, no I/O; imports only errors.

Units, one rule everywhere a rate is written (limits, the agent's ``--node-bandwidth``,
the engine's bandwidth settings): a Kubernetes quantity — ``k``, ``M``, ``G``, ``T`` are
powers of ten, ``Ki``, ``Mi``, ``Gi``, ``Ti`` powers of two, an optional ``B`` or ``B/s``
after them — because StorageClass and VolumeAttributesClass authors write them so. Sizes
are the other rule (settings.parse_size: only binary units; ``M`` is refused as
ambiguous). docs/qos.md, "Units".

Limits are a dict with only the limits that are set (canonical form: ``check`` drops
``None``); ``{}`` means unlimited. The engine enforces them (``frontend/qos.py``);
docs/qos.md says what each one means.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cargohold.errors import InvalidArgument

OP_BYTES = 256 * 1024  # the cost model: a request counts one op per started 256 KiB
MIN_IOPS, MAX_IOPS = 10, 10_000_000
MIN_BANDWIDTH, MAX_BANDWIDTH = 1 << 20, 10**12  # bytes/s: 1 MiB/s .. 1 TB/s
MAX_BURST_SECONDS = 60.0
# fair sharing of a node's disk (docs/qos.md, "Weights and guaranteed minimums"): not limits
# the engine enforces, but what the node's agent divides the node's IOPS budget by
MIN_WEIGHT, MAX_WEIGHT, DEFAULT_WEIGHT = 1, 1000, 100
SHARES = ("weight", "min_iops")  # in LIMITS, but the engine's gate ignores them


@dataclass(frozen=True)
class Limit:
    name: str  # the REST / engine name (snake_case)
    csi: str  # the CSI parameter name (camelCase)
    flag: str  # the CLI option
    lo: float
    hi: float
    unit: str

    @property
    def allowed(self) -> str:
        if self.name == "burst_seconds":
            return f"a number of seconds from 0 to {self.hi:g}"
        if self.name == "weight":
            return f"an integer from {MIN_WEIGHT} to {MAX_WEIGHT}, or unset for {DEFAULT_WEIGHT}"
        lo, hi = int(self.lo), int(self.hi)
        return f"an integer from {lo} to {hi} ({self.unit}), or unset for no limit"


_IOPS = (MIN_IOPS, MAX_IOPS, "operations per second")
_BW = (MIN_BANDWIDTH, MAX_BANDWIDTH, "bytes per second")
LIMITS = (
    Limit("max_iops", "maxIops", "--max-iops", *_IOPS),
    Limit("max_read_iops", "maxReadIops", "--max-read-iops", *_IOPS),
    Limit("max_write_iops", "maxWriteIops", "--max-write-iops", *_IOPS),
    Limit("max_bandwidth", "maxBandwidth", "--max-bandwidth", *_BW),
    Limit("max_read_bandwidth", "maxReadBandwidth", "--max-read-bandwidth", *_BW),
    Limit("max_write_bandwidth", "maxWriteBandwidth", "--max-write-bandwidth", *_BW),
    Limit("burst_seconds", "burstSeconds", "--burst", 0.0, MAX_BURST_SECONDS, "seconds"),
    Limit("weight", "weight", "--weight", MIN_WEIGHT, MAX_WEIGHT, "share of a busy node"),
    Limit("min_iops", "minIops", "--min-iops", *_IOPS),
)
BY_NAME = {lim.name: lim for lim in LIMITS}
BY_CSI = {lim.csi: lim for lim in LIMITS}


def check(limits: Mapping[str, Any], where: str = "") -> dict[str, int | float]:
    """The limits in canonical form (unset ones dropped), or InvalidArgument naming the
    first bad parameter and its allowed values. ``where`` prefixes the message."""
    if not isinstance(limits, Mapping):
        raise InvalidArgument(f"{where}qos limits are an object of {', '.join(BY_NAME)}")
    out: dict[str, int | float] = {}
    for key, value in limits.items():
        lim = BY_NAME.get(key)
        if lim is None:
            raise InvalidArgument(
                f"{where}unknown qos limit {key!r}: the limits are {', '.join(BY_NAME)}"
            )
        if value is None:
            continue
        out[key] = _value(lim, value, where)
    return out


def _value(lim: Limit, value: Any, where: str) -> int | float:
    bad = InvalidArgument(f"{where}{lim.name}={value!r} is not valid: use {lim.allowed}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad
    if lim.name == "burst_seconds":
        if not math.isfinite(value) or not lim.lo <= value <= lim.hi:
            raise bad
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise bad
        value = int(value)
    if not lim.lo <= value <= lim.hi:
        raise bad
    return value


def merge(current: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, int | float]:
    """``current`` with ``change`` applied: a key set to None (or 0) removes that limit;
    both are checked."""
    out = dict(check(current))
    for key, value in change.items():
        if key not in BY_NAME:
            check({key: value})  # raises: unknown
        if value is None or (value == 0 and key != "burst_seconds"):
            out.pop(key, None)
        else:
            out[key] = value
    return check(out)


_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMGT]i?)?\s*(?:B?(?:/s)?)?\s*$")
_SCALE = {
    None: 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "ki": 1 << 10,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}


def parse_text(name: str, text: str, where: str = "") -> int | float | None:
    """One limit from text: ``1000``, ``10k`` (IOPS), ``100Mi`` / ``100MB/s`` (bytes/s:
    Ki, Mi, Gi are binary, k, M, G decimal), ``2``/``2s`` (burst). ``""``, ``none``, ``0``
    and ``unlimited`` -> None (no limit). InvalidArgument names the parameter."""
    lim = BY_NAME[name]
    t = text.strip()
    if t.lower() in ("", "none", "unlimited", "0"):
        return None
    if lim.name == "burst_seconds":
        t = t.removesuffix("s")
        try:
            return _value(lim, float(t), where)
        except ValueError:
            raise InvalidArgument(
                f"{where}{name}={text!r} is not valid: use {lim.allowed}"
            ) from None
    m = _NUMBER.match(t)
    rate = "bandwidth" in lim.name
    if m is None:
        raise InvalidArgument(
            f"{where}{name}={text!r} is not valid: use {lim.allowed}; "
            + (f"e.g. {_QUANTITY}" if rate else "e.g. 5000, 10k")
        )
    value = float(m[1]) * _SCALE[m[2]]
    try:
        return _value(lim, float(round(value)), where)
    except InvalidArgument:  # say what the user wrote, and what it was read as
        read = f" (read as {round(value):,} bytes/s: {_QUANTITY})" if rate and m[2] else ""
        raise InvalidArgument(
            f"{where}{name}={text!r} is not valid: use {lim.allowed}{read}"
        ) from None


_QUANTITY = "a Kubernetes quantity: 100Mi = 100 x 2^20 bytes/s, 200M = 200 x 10^6"


def parse_bandwidth(text: str, where: str = "") -> int:
    """A node's bandwidth (the agent's ``--node-bandwidth``): bytes per second as a
    Kubernetes quantity, like the limits — ``400Mi`` (MiB/s), ``500M`` (MB/s), ``2Gi``,
    a plain number of bytes; ``0`` for none. InvalidArgument says what was expected."""
    m = _NUMBER.match(text)
    if m is None:
        raise InvalidArgument(
            f"{where}{text!r} is not a bandwidth: use bytes per second as {_QUANTITY} "
            "(or 0 for none)"
        )
    return round(float(m[1]) * _SCALE[m[2]])


def bandwidth_text(value: int) -> str:
    """``104857600`` -> ``100Mi/s``; a value that is no whole MiB stays in bytes."""
    return f"{value >> 20}Mi/s" if value % (1 << 20) == 0 else f"{value} bytes/s"


def describe(limits: Mapping[str, Any]) -> str:
    """One line for people: ``max_iops=1000 max_bandwidth=100Mi/s`` or ``unlimited``."""
    if not limits:
        return "unlimited"
    parts = []
    for key, value in limits.items():
        if "bandwidth" in key and isinstance(value, int):
            if value % (1 << 20) == 0:
                parts.append(f"{key}={bandwidth_text(value)}")
                continue
        parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)
