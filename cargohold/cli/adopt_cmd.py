"""``cargohold volume adopt``: recreate a volume's records from its orphaned replicas, after
the manager's state store was lost (docs/operations.md, "Recovering from a lost state
store"). The rules and refusals are in ``cargohold/control/adoption.py``.

    cargohold volume adopt data --dry-run         # what would be adopted, and why
    cargohold volume adopt data                   # do it
    cargohold volume adopt data --replica data-r1a2b3c   # only these (after a refusal)
    cargohold volume adopt --all                  # every volume that has orphans
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from cargohold.cli.output import (
    API,
    DIR,
    OUTPUT,
    Format,
    dump,
    err_console,
    exit_code,
    fail,
    handle_errors,
    human_size,
    say,
    table,
)
from cargohold.cli.volume_cmd import volume_app
from cargohold.control.client import ManagerClient
from cargohold.errors import CargoholdError, ConfigError


def print_plan(plan: dict[str, Any]) -> None:
    what = "would adopt" if plan.get("dry_run") else "adopted"
    say(
        f"volume {escape(plan['volume'])}: {what} {len(plan['replicas'])} replica(s), "
        f"{human_size(plan['size_bytes'])}, current at epoch {plan['current_epoch']}, "
        f"generation {plan['current_generation']} (next engine's epoch > {plan['epoch']})"
    )
    table(
        ("REPLICA", "NODE", "ROLE", "GENERATION", "LAST EPOCH"),
        [
            (
                escape(r["id"]),
                escape(r["node"]),
                r["role"],
                str(r["generation"]),
                str(r["last_epoch"]),
            )
            for r in plan["replicas"]
        ],
    )
    for x in plan.get("left_out", []):
        say(f"left as an orphan: {escape(x['id'])} on {escape(x['node'])}: {escape(x['reason'])}")
    if plan.get("snapshots"):
        say(f"snapshots: {', '.join(escape(n) for n in plan['snapshots'])}")
    if plan.get("partial_snapshots"):
        say(
            "on some replicas only (not recorded; a scrub takes them again on all or they can "
            f"be deleted by name): {', '.join(escape(n) for n in plan['partial_snapshots'])}"
        )
    if not plan.get("dry_run"):
        say("the volume is detached, with reclaim policy Retain; attach it to use it")


@volume_app.command("adopt")
@handle_errors
def adopt(
    name: str | None = typer.Argument(None, help="the volume whose orphans to adopt"),
    all_: bool = typer.Option(False, "--all", help="every volume that has orphans and no record"),
    replica: list[str] = typer.Option(
        [], "--replica", help="adopt only this orphan replica id (repeatable)"
    ),
    accept_fork: bool = typer.Option(
        False,
        "--accept-fork",
        help="adopt although some replicas hold writes the newest do not (they stay orphans)",
    ),
    replicas: int | None = typer.Option(
        None, "--replicas", min=1, max=16, help="replicas the volume should have"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="show the plan, change nothing"),
    tenant: str | None = typer.Option(
        None, "--tenant", help="the tenant whose volume it was (replicas do not record it)"
    ),
    output: Format = OUTPUT,
    api: str | None = API,
    dir: str | None = DIR,
) -> None:
    """Recreate a volume's records from the replicas its nodes still hold, after the
    manager's state was lost. The newest replicas (by their epoch history and generation)
    are current; refused, saying why, when histories fork or another cluster's replicas
    would be taken."""
    if bool(name) == all_:
        raise ConfigError("give a volume name or --all")
    if all_ and replica:
        raise ConfigError("--replica goes with one volume, not --all")
    with ManagerClient.discover(api, dir) as c:
        if name:
            names = [name]
        else:  # orphans of a volume that has records are not its lost state: left alone
            existing = {v["name"] for v in c.volumes()}
            names = sorted({o["volume"] for o in c.orphans()} - existing)
        if not names:
            say("no orphan replicas: nothing to adopt")
            return
        plans, failed = [], 0
        for vol in names:
            try:
                plans.append(c.adopt(vol, replica, accept_fork, replicas, dry_run, tenant))
            except CargoholdError as e:
                if not all_:
                    raise
                failed = failed or exit_code(e)
                err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
    if output is Format.TABLE:
        for plan in plans:
            print_plan(plan)
    else:
        dump(plans if all_ else plans[0], output)
    if failed:
        raise fail(f"{len(names) - len(plans)} of {len(names)} volume(s) not adopted", failed)
