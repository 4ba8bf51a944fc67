"""Reading sizes and addresses from the command line. No CLI app here, so benchmarks and
tools can import it on its own."""

from __future__ import annotations

from cargohold.constants import DEFAULT_REPLICA_PORT
from cargohold.errors import ConfigError
from cargohold.settings import format_size, parse_size  # settings read sizes too

__all__ = ["format_size", "parse_size", "positive_size", "split_addr"]


def positive_size(text: str, option: str) -> int:
    """A size option that must be more than 0 bytes (``--size``): bytes, or ConfigError
    naming ``option`` (exit 2) before anything reaches the manager."""
    n = parse_size(text, option)
    if n <= 0:
        raise ConfigError(f"{option} must be more than 0 bytes, got {text.strip()!r}")
    return n


def split_addr(addr: str, default_port: int = DEFAULT_REPLICA_PORT) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', or a bare HOST) -> (host, port)."""
    host, _, port = addr.rpartition(":")
    if not host:
        return addr, default_port
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"bad address {addr!r}, expected HOST:PORT") from None
