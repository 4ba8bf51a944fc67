"""Reading sizes and addresses from the command line. No CLI app here, so benchmarks and
tools can import it on its own."""

from __future__ import annotations

from cargohold.constants import DEFAULT_REPLICA_PORT
from cargohold.errors import ConfigError


def parse_size(text: str) -> int:
    """'10GiB', '512MiB', '4096', '1G' -> bytes."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise ConfigError(f"cannot read size {text!r} (examples: 4096, 512MiB, 10GiB)") from None


def split_addr(addr: str, default_port: int = DEFAULT_REPLICA_PORT) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', or a bare HOST) -> (host, port)."""
    host, _, port = addr.rpartition(":")
    if not host:
        return addr, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"bad address {addr!r}, expected HOST:PORT") from None
