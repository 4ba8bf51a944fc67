"""One logging setup for every cargohold process, and the line that marks a child's start
in its log file.

Every daemon and long-running command (manager, agent, engine, replica server, CSI driver,
nbd-serve) calls ``setup_logging`` once, first thing: lines go to standard error as
``TIME LEVEL LOGGER: MESSAGE`` at the level ``CARGOHOLD_LOG`` names (default ``INFO``).
Whoever starts a daemon with its output in a log file (the node agent, the launcher of
local clusters) writes ``start_line`` into that file first, so restarts are easy to find.

Standard library only: the engine imports this and is kept lean (no typer, pydantic, ...).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable

LOG_ENV = "CARGOHOLD_LOG"
DEFAULT_LEVEL = "INFO"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_level(text: str) -> int | None:
    """A level name (any case, e.g. ``debug``) or number -> the level; None if it is neither."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    level = logging.getLevelName(text.upper())
    return level if isinstance(level, int) else None


def setup_logging(quiet: Iterable[str] = ()) -> None:
    """Log to standard error at the level of ``$CARGOHOLD_LOG`` (default INFO).

    ``quiet``: loggers of libraries that log a line per request at INFO (``httpx``: one per
    heartbeat or etcd request) are set to WARNING. A ``CARGOHOLD_LOG`` that is not a level
    does not stop the process: it logs at INFO and says so in a warning.
    """
    given = os.environ.get(LOG_ENV, DEFAULT_LEVEL)
    level = parse_level(given)
    logging.basicConfig(
        level=logging.INFO if level is None else level, stream=sys.stderr, format=FORMAT
    )
    if level is None:
        logging.getLogger("cargohold").warning(
            "%s=%r is not a log level (%s or a number): logging at INFO",
            LOG_ENV,
            given,
            ", ".join(LEVELS),
        )
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def start_line(starter: str, command: str) -> bytes:
    """The line a parent writes into a child's log file before starting it:
    ``--- 2026-12-06 08:43:43 agent starts: python -m cargohold engine ...``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"--- {stamp} {starter}: {command}\n".encode()
