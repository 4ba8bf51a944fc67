"""Reading sizes and addresses from the command line. No CLI app here, so benchmarks and
tools can import it on its own."""

from __future__ import annotations

from cargohold.constants import DEFAULT_REPLICA_PORT
from cargohold.errors import ConfigError
from cargohold.settings import parse_size  # settings read sizes too

__all__ = ["parse_size", "split_addr"]


def split_addr(addr: str, default_port: int = DEFAULT_REPLICA_PORT) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', or a bare HOST) -> (host, port)."""
    host, _, port = addr.rpartition(":")
    if not host:
        return addr, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"bad address {addr!r}, expected HOST:PORT") from None
