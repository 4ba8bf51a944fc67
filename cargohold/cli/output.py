"""What the manager commands (node, disk, volume, snapshot) share: their common options, how
they print, and how they fail.

Output (``--output/-o``): ``table`` (rich, for people: sizes in binary units, states in
colour), ``json`` (exactly the API's JSON, indented 2) or ``yaml`` (the same data). Tables
and messages go to stdout, progress bars and errors to stderr (progress only when stderr
is a terminal).

Exit codes of every command here:

    0  done
    1  failed (an operation ended in ``failed``, an unexpected manager answer)
    2  usage: bad option or argument (also 400/422 from the manager: InvalidArgument)
    3  no manager: none answered, or no local cluster and no --api (ManagerUnavailable)
    4  not found (404)
    5  conflict: exists already, or the object's state does not allow it (409)
    6  unschedulable: no room to place replicas (507)
    7  timed out waiting (the manager accepted the request; it is still in progress)
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cargohold.control.client import WaitTimeout
from cargohold.control.settings import ClientSettings
from cargohold.errors import (
    AlreadyExists,
    Busy,
    CargoholdError,
    ConfigError,
    InvalidArgument,
    ManagerUnavailable,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unschedulable,
    WrongState,
)

console = Console()
err_console = Console(stderr=True)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_UNSCHEDULABLE = 6
EXIT_TIMEOUT = 7
EXIT_DENIED = 8  # 401 Unauthenticated, 403 PermissionDenied

EXIT_CODES: list[tuple[type[CargoholdError], int]] = [
    (ManagerUnavailable, EXIT_UNAVAILABLE),
    (NotFound, EXIT_NOT_FOUND),
    (AlreadyExists, EXIT_CONFLICT),
    (WrongState, EXIT_CONFLICT),
    (Busy, EXIT_CONFLICT),
    (Unschedulable, EXIT_UNSCHEDULABLE),
    (InvalidArgument, EXIT_USAGE),
    (ConfigError, EXIT_USAGE),
    (WaitTimeout, EXIT_TIMEOUT),
    (Unauthenticated, EXIT_DENIED),
    (PermissionDenied, EXIT_DENIED),
]


class Format(StrEnum):
    TABLE = "table"
    WIDE = "wide"  # a table with every column, however wide (read as TABLE + ``wide()``)
    JSON = "json"
    YAML = "yaml"


_wide: list[bool] = [False]


def _output(value: Format | None) -> Format | None:
    """-o wide is a table that leaves out no column: commands see TABLE, and a table
    that would drop columns at the terminal's width asks ``wide()``."""
    if value is Format.WIDE or value == "wide":
        _wide[0] = True
        return Format.TABLE
    return value


def wide() -> bool:
    """-o wide was given: print every column."""
    return _wide[0]


# --- the options every manager command takes -------------------------------------------
API = typer.Option(
    None,
    "--api",
    envvar=ClientSettings.variable("api"),
    help="manager URL: http://HOST:PORT or unix:/PATH (default: the local cluster's)",
)
DIR = typer.Option(
    None,
    "--dir",
    envvar=ClientSettings.variable("dir"),
    help="local cluster directory with cluster.json (default ~/.cargohold)",
)
OUTPUT = typer.Option(
    Format.TABLE, "--output", "-o", callback=_output, help="table, wide, json or yaml"
)
TIMEOUT = typer.Option(300.0, "--timeout", min=0, help="seconds to wait at most")


# --- errors -------------------------------------------------------------------------------
def exit_code(e: CargoholdError) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(e, cls):
            return code
    return getattr(e, "exit_code", EXIT_FAILED) or EXIT_FAILED


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr; the exception to raise to exit with ``code``."""
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a CargoholdError into ``error: message`` on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CargoholdError as e:
            raise fail(str(e), exit_code(e)) from None

    return wrapper


# --- printing -----------------------------------------------------------------------------
def dump(data: Any, output: Format) -> None:
    """Print the API's JSON as json or yaml, unchanged."""
    if output is Format.YAML:
        import yaml  # here: every command imports this module, few print yaml

        typer.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), nl=False)
    else:
        typer.echo(json.dumps(data, indent=2))


def render(data: Any, output: Format, table: Callable[[Any], None]) -> None:
    """json/yaml: dump ``data``; table: call ``table(data)`` to print it for people."""
    if output is Format.TABLE:
        table(data)
    else:
        dump(data, output)


def say(message: str) -> None:
    """A line for people on stdout (rich markup allowed)."""
    console.print(message, soft_wrap=True, highlight=False)


STATE_STYLES = {
    # volumes' robustness, nodes, replicas, snapshots, operations
    "healthy": "green",
    "up": "green",
    "running": "green",
    "ready": "green",
    "succeeded": "green",
    "attached": "green",
    "degraded": "yellow",
    "rebuilding": "yellow",
    "cordoned": "yellow",
    "pending": "yellow",
    "attaching": "yellow",
    "detaching": "yellow",
    "creating": "yellow",
    "deleting": "yellow",
    "faulted": "red",
    "down": "red",
    "failed": "red",
    "error": "red",
    "unknown": "dim",
    "released": "dim",
}


def styled(state: Any) -> str:
    text = "" if state is None else str(state)
    style = STATE_STYLES.get(text)
    return f"[{style}]{escape(text)}[/{style}]" if style else escape(text)


def human_size(n: Any) -> str:
    """1073741824 -> '1 GiB', 1610612736 -> '1.5 GiB', 0 -> '0 B'."""
    if not isinstance(n, int | float):
        return "" if n is None else str(n)
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            text = f"{size:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def age(ts: Any, now: float | None = None) -> str:
    """Seconds since the epoch -> '4s ago', '3m ago', '2h ago', '5d ago'; '' when unset."""
    if not ts:
        return ""
    d = max(0.0, (time.time() if now is None else now) - float(ts))
    if d < 60:
        return f"{d:.0f}s ago"
    if d < 3600:
        return f"{d / 60:.0f}m ago"
    if d < 86400:
        return f"{d / 3600:.0f}h ago"
    return f"{d / 86400:.0f}d ago"


def tags(values: Any) -> str:
    if isinstance(values, dict):
        return ",".join(f"{k}={v}" for k, v in values.items())
    return ",".join(str(v) for v in values or ())


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """Print rows (cells are rich markup; build them with ``styled`` and ``escape``)."""
    t = Table(*columns, title=title, title_justify="left", header_style="bold")
    for row in rows:
        t.add_row(*("" if c is None else str(c) for c in row))
    console.print(t)


def fields(data: dict[str, Any], keys: Sequence[str], title: str | None = None) -> None:
    """Print one object as a two-column field/value table."""
    t = Table(show_header=False, title=title, title_justify="left", box=None, padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for k in keys:
        if k in data:
            t.add_row(k, _cell(k, data[k]))
    console.print(t)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key.endswith("_bytes"):
        return escape(human_size(value))
    if key in ("state", "robustness"):
        return styled(value)
    if key.endswith("_at") or key == "down_since":
        return escape(f"{age(value)}") if value else ""
    if isinstance(value, dict):
        nested = any(isinstance(v, dict | list) for v in value.values())
        return escape(json.dumps(value) if nested else tags(value))
    if isinstance(value, list):
        nested = any(isinstance(v, dict | list) for v in value)
        return escape(json.dumps(value) if nested else tags(value))
    return escape(str(value))


# --- progress -----------------------------------------------------------------------------
Update = Callable[[float | None, str], None]


def _no_update(fraction: float | None, text: str = "") -> None:
    """``progress``'s update without a terminal: shows nothing."""


@contextmanager
def progress(description: str) -> Iterator[Update]:
    """A progress bar on stderr while waiting (nothing when stderr is not a terminal).

    Yields ``update(fraction, text)``: fraction 0..1, or None when unknown (a pulse)."""
    if not err_console.is_terminal:
        yield _no_update
        return
    from rich.progress import (  # here: only a terminal shows one
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    with bar:
        task = bar.add_task(escape(description), total=None)

        def update(fraction: float | None, text: str = "") -> None:
            desc = escape(f"{description} ({text})" if text else description)
            if fraction is None:
                bar.update(task, total=None, description=desc)
            else:
                bar.update(
                    task, total=1.0, completed=min(max(fraction, 0.0), 1.0), description=desc
                )

        yield update


def operation_progress(update: Update) -> Callable[[dict[str, Any]], None]:
    """An ``on_progress`` for ``ManagerClient.wait_operation`` driving a progress bar."""

    def on(op: dict[str, Any]) -> None:
        state = str(op.get("state", ""))
        update(float(op.get("progress") or 0.0) if state == "running" else None, state)

    return on
