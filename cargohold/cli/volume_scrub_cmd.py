"""``cargohold volume scrub NAME`` (verify every block of every replica now, repair what is
bad) and ``cargohold volume recover-epoch NAME`` (raise a fenced volume's epoch): the
operations on a volume's integrity, beside the everyday commands of ``volume_cmd``.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    TIMEOUT,
    Format,
    handle_errors,
    operation_progress,
    progress,
    render,
    say,
    table,
)
from cargohold.cli.volume_cmd import diverged_text, volume_app
from cargohold.control.client import ManagerClient

__all__ = ["print_scrub", "recover_epoch", "scrub"]


@volume_app.command("scrub")
@handle_errors
def scrub(
    name: str,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait for the pass to end"),
    timeout: float = TIMEOUT,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Verify every block of every replica (head and snapshots) now; bad blocks are read
    from a healthy replica and repaired in place (an operation on the volume's engine)."""
    with ManagerClient.discover(api, dir) as c:
        op = c.scrub(name)
        if wait:
            with progress(f"scrubbing {name}") as update:
                op = c.wait_operation(op["id"], timeout, operation_progress(update))
    render(op, output, lambda o: print_scrub(name, o))


@volume_app.command("recover-epoch")
@handle_errors
def recover_epoch(
    name: str,
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Raise the volume's epoch above every epoch its replicas report: for a volume whose
    error says "fenced by epoch X on replica R" (a replica accepted an epoch the manager
    never issued). Its next engine opens every replica at the new epoch."""
    with ManagerClient.discover(api, dir) as c:
        vol = c.recover_epoch(name)
    render(
        vol,
        output,
        lambda v: say(
            f"volume [bold]{escape(name)}[/bold]: epoch raised to {v.get('epoch')}; "
            "its next engine starts above it"
        ),
    )


def print_scrub(name: str, op: dict[str, Any]) -> None:
    rep = (op.get("result") or {}).get("scrub")
    if not rep:
        say(f"volume [bold]{escape(name)}[/bold]: scrub requested (operation {op['id']})")
        return
    say(
        f"volume [bold]{escape(name)}[/bold] scrubbed in {rep.get('seconds', 0):.1f} s: "
        f"{rep.get('checked_blocks', 0)} blocks checked, {rep.get('found', 0)} bad, "
        f"{rep.get('repaired', 0)} repaired, {rep.get('unrepaired', 0)} not repaired"
        f"{diverged_text(rep)}"
    )
    rows = [
        [
            escape(rid),
            r.get("checked_blocks", 0),
            r.get("found", 0),
            r.get("repaired", 0),
            escape(str(r.get("error", ""))),
        ]
        for rid, r in sorted((rep.get("replicas") or {}).items())
    ]
    if rows:
        table(["replica", "checked blocks", "bad", "repaired", "error"], rows)
    bad = rep.get("bad") or []
    if bad:
        table(
            ["replica", "layer", "block", "outcome"],
            [
                [escape(b["replica"]), escape(b["layer"]), b["block"], escape(b["outcome"])]
                for b in bad
            ],
        )
    diverged = rep.get("diverged") or []
    if diverged:
        table(
            ["layer", "block", "crc32c per replica", "outcome"],
            [
                [
                    escape(str(d.get("layer", ""))),
                    d.get("block", ""),
                    escape(" ".join(f"{k}={v:08x}" for k, v in (d.get("crc32c") or {}).items())),
                    escape(str(d.get("outcome", ""))),
                ]
                for d in diverged
            ],
        )
