"""``cargohold verify ...``: write a checkable workload to a volume over NBD, and check it.

    cargohold verify run data --yes --seconds 30 --history run.jsonl   # volume data
    cargohold verify run nbd://127.0.0.1:10809/vol --yes                 # any NBD server
    cargohold verify check data --history run.jsonl -o json

TARGET is what ``cargohold bench`` takes too (cli/targets.py): a volume's name (it must be
attached: its endpoint comes from the manager) or an NBD URI. ``run`` overwrites the data:
it asks first, as ``bench`` does (``--yes`` to go on; refused without a terminal).

``run`` drives the workload (cargohold/verify/workload.py) over several connections,
streams its history to ``--history`` (when given), then reads the blocks back and checks
them (rule ``acked`` by default: nothing crashed). ``check`` judges an existing history
against the volume as it is now — after a fault, a crash, a restart — with rule
``flushed`` by default. Exit codes: 0 no violation, 1 violations found, 2 bad usage,
3 the volume could not be reached or the history could not be read. docs/verify.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer

from cargohold.cli.main import app
from cargohold.cli.output import API, DIR, EXIT_USAGE, OUTPUT, Format, console, fail
from cargohold.cli.targets import TARGET_HELP, confirm_overwrite, is_uri, volume_endpoint
from cargohold.errors import CargoholdError, ConfigError

verify_app = typer.Typer(help="Check a volume's durability: workload, history, checker.")
app.add_typer(verify_app, name="verify", no_args_is_help=True)

EXIT_VIOLATIONS = 1
EXIT_UNREACHABLE = 3
T = TypeVar("T")


def parse_blocks(text: str) -> tuple[int, int]:
    """'FIRST-LAST' (inclusive block numbers) or 'FIRST+COUNT' -> (first, count)."""
    try:
        if "+" in text:
            a, b = text.split("+", 1)
            first, count = int(a), int(b)
        else:
            a, b = text.split("-", 1)
            first, count = int(a), int(b) - int(a) + 1
    except ValueError:
        raise ConfigError(f"bad block range {text!r}: expected FIRST-LAST or FIRST+COUNT") from None
    if first < 0 or count <= 0:
        raise ConfigError(f"bad block range {text!r}: empty or negative")
    return first, count


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        return asyncio.run(coro)


def _exit_for(e: Exception) -> int:
    """Bad usage: 2; anything else (unreachable, refused, unreadable history): 3."""
    return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_UNREACHABLE


def _finish(result: Any, output: Format) -> None:
    from cargohold.verify.report import check_json, render_check

    if output is Format.TABLE:
        render_check(result, console)
    else:
        typer.echo(check_json(result))
    if not result.ok:
        raise typer.Exit(EXIT_VIOLATIONS)


def _endpoint(target: str, api: str | None, dir: str | None) -> str:
    """TARGET as an NBD URI: itself, or the endpoint of the attached volume it names."""
    if is_uri(target):
        return target
    from cargohold.control.client import ManagerClient

    with ManagerClient.discover(api, dir) as c:
        return volume_endpoint(c.volume(target))


@verify_app.command("run")
def run(
    target: str = typer.Argument(..., metavar="TARGET", help=TARGET_HELP),
    connections: int = typer.Option(4, "--connections", "-c", min=1, help="NBD connections"),
    depth: int = typer.Option(8, "--depth", min=1, help="requests in flight per connection"),
    seconds: float = typer.Option(None, "--seconds", min=0, help="run this long (default 10)"),
    writes: int = typer.Option(None, "--writes", min=1, help="stop after this many writes"),
    blocks: str = typer.Option(
        None, "--blocks", help="block range FIRST-LAST or FIRST+COUNT (default: the volume)"
    ),
    history: str = typer.Option(None, "--history", help="stream the history to this file"),
    seed: int = typer.Option(None, "--seed", help="the run id (default random)"),
    rule: str = typer.Option("acked", "--rule", help="acked (nothing crashed) or flushed"),
    fua_ratio: float = typer.Option(0.05, "--fua-ratio", min=0, max=1),
    flush_ratio: float = typer.Option(0.03, "--flush-ratio", min=0, max=1),
    read_ratio: float = typer.Option(0.15, "--read-ratio", min=0, max=1),
    yes: bool = typer.Option(False, "--yes", "-y", help="the workload overwrites data: go on"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Run the workload against a volume (OVERWRITES its data), then read it back and
    check every block."""
    from cargohold.verify.checker import RULES, check_volume
    from cargohold.verify.client import Pool
    from cargohold.verify.workload import Workload, WorkloadSpec

    confirm_overwrite("the workload", target if is_uri(target) else f"volume {target}", yes)
    try:
        uri = _endpoint(target, api, dir)
        if rule not in RULES:
            raise ConfigError(f"--rule {rule!r}: expected one of {', '.join(RULES)}")
        first, count = parse_blocks(blocks) if blocks else (0, None)
        if seconds is None and writes is None:
            seconds = 10.0
        spec = WorkloadSpec(
            seconds=seconds,
            writes=writes,
            depth=depth,
            first_block=first,
            nblocks=count,
            fua_ratio=fua_ratio,
            flush_ratio=flush_ratio,
            read_ratio=read_ratio,
            seed=seed,
        )

        async def main() -> Any:
            pool = await Pool.connect(uri, connections)
            try:
                stream = open(history, "w") if history else None
                try:
                    h = await Workload(pool, spec, stream).run()
                finally:
                    if stream is not None:
                        stream.close()
                return await check_volume(pool, h, rule)
            finally:
                await pool.close()

        result = _run(main())
    except (CargoholdError, OSError) as e:
        raise fail(str(e), _exit_for(e)) from None
    _finish(result, output)


@verify_app.command("check")
def check(
    target: str = typer.Argument(..., metavar="TARGET", help=TARGET_HELP),
    history: str = typer.Option(..., "--history", help="a history written by `verify run`"),
    rule: str = typer.Option("flushed", "--rule", help="flushed (after a crash) or acked"),
    connections: int = typer.Option(4, "--connections", "-c", min=1, help="NBD connections"),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Check the volume as it is now against a saved history (after a fault or restart);
    reads only."""
    from cargohold.verify.checker import RULES, check_volume
    from cargohold.verify.client import Pool
    from cargohold.verify.history import History

    try:
        uri = _endpoint(target, api, dir)
        if rule not in RULES:
            raise ConfigError(f"--rule {rule!r}: expected one of {', '.join(RULES)}")
        h = History.load(history)

        async def main() -> Any:
            pool = await Pool.connect(uri, connections)
            try:
                return await check_volume(pool, h, rule)
            finally:
                await pool.close()

        result = _run(main())
    except (CargoholdError, OSError) as e:
        raise fail(str(e), _exit_for(e)) from None
    _finish(result, output)
