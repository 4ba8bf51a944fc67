"""Printing what the checker found: rich tables for people, JSON for scripts.

``render_check`` prints one ``CheckResult`` (a summary, then the violations, if any);
``SoakSummary`` collects the outcome of each scenario of a soak run (fault scenarios run
the workload, inject a fault, wait for the volume to converge and check) and prints the
summary table: scenarios run, writes checked, violations (must be 0), mean and worst time
to converge. Called by ``cargohold verify`` and by the soak tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cargohold.verify.checker import CheckResult


def _obs(o: dict[str, Any]) -> str:
    kind = o.get("kind")
    if kind in ("payload", "foreign", "corrupt"):
        text = f"write #{o.get('write')} (block {o.get('block')}, writer {o.get('writer')})"
        return text if kind == "payload" else f"{kind}: {text}"
    return str(kind)


def _expected(v: dict[str, Any]) -> str:
    items = []
    for e in v["expected"]:
        items.append(e if isinstance(e, str) else f"#{e['write']} ({e['status']})")
    more = v["expected_count"] - len(v["expected"])
    text = ", ".join(items) or "nothing"
    return text + (f" and {more} more" if more > 0 else "")


def render_check(result: CheckResult, console: Console | None = None, title: str = "") -> None:
    console = console or Console()
    h = result.history
    t = Table(show_header=False, title=title or None, title_justify="left", box=None)
    t.add_column(style="bold")
    t.add_column()
    verdict = "[green]OK[/green]" if result.ok else "[red]VIOLATIONS[/red]"
    t.add_row("verdict", verdict)
    t.add_row("rule", result.rule)
    t.add_row(
        "blocks checked",
        f"{result.blocks_checked} from block {result.first_block} "
        f"({result.blocks_written} written)",
    )
    t.add_row(
        "writes",
        f"{h['writes']} ({h['writes_acked']} acknowledged, {h['writes_failed']} failed, "
        f"{h['writes_lost']} lost, {h['writes_in_flight']} unanswered; {h['writes_fua']} FUA)",
    )
    t.add_row("flushes", f"{h['flushes']} ({h['flushes_acked']} acknowledged)")
    t.add_row("reads checked while writing", str(h["reads_checked"]))
    t.add_row(
        "violations",
        str(result.violations_total)
        + (
            f" ({', '.join(f'{k}: {n}' for k, n in result.by_reason.items())})"
            if result.by_reason
            else ""
        ),
    )
    t.add_row("read violations", str(len(result.read_violations)))
    mib = result.bytes_read / (1 << 20)
    t.add_row("read back", f"{mib:.1f} MiB in {result.seconds:.2f} s")
    console.print(t)
    if result.violations:
        vt = Table(
            "BLOCK", "REASON", "OBSERVED", "EXPECTED", title="violations", title_justify="left"
        )
        for v in result.violations:
            j = v.to_json()
            vt.add_row(str(v.block), v.reason, escape(_obs(j["observed"])), escape(_expected(j)))
        console.print(vt)
        if result.violations_total > len(result.violations):
            console.print(f"... and {result.violations_total - len(result.violations)} more")
    if result.read_violations:
        rt = Table("BLOCK", "REASON", "OBSERVED", title="read violations", title_justify="left")
        for rv in result.read_violations[:100]:
            rt.add_row(
                str(rv.get("block")), str(rv.get("reason")), escape(_obs(rv.get("observed", {})))
            )
        console.print(rt)


def check_json(result: CheckResult) -> str:
    return json.dumps(result.to_json(), indent=2)


# --- soak runs ---------------------------------------------------------------------------------


@dataclass
class ScenarioOutcome:
    name: str
    writes_checked: int
    violations: int
    converge_seconds: float | None = None  # from the fault to a healthy, checked volume
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "writes_checked": self.writes_checked,
            "violations": self.violations,
            "converge_seconds": self.converge_seconds,
            "detail": self.detail,
        }


@dataclass
class SoakSummary:
    outcomes: list[ScenarioOutcome] = field(default_factory=list)

    def add(
        self,
        name: str,
        result: CheckResult,
        converge_seconds: float | None = None,
        detail: str = "",
    ) -> ScenarioOutcome:
        o = ScenarioOutcome(
            name,
            result.history["writes"],
            result.violations_total + len(result.read_violations),
            converge_seconds,
            detail,
        )
        self.outcomes.append(o)
        return o

    @property
    def violations(self) -> int:
        return sum(o.violations for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return self.violations == 0

    def totals(self) -> dict[str, Any]:
        times = [o.converge_seconds for o in self.outcomes if o.converge_seconds is not None]
        return {
            "scenarios": len(self.outcomes),
            "writes_checked": sum(o.writes_checked for o in self.outcomes),
            "violations": self.violations,
            "converge_mean_seconds": sum(times) / len(times) if times else None,
            "converge_worst_seconds": max(times) if times else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            **self.totals(),
            "scenarios_run": [o.to_json() for o in self.outcomes],
        }

    def render(self, console: Console | None = None) -> None:
        console = console or Console()
        detail = Table("SCENARIO", "WRITES CHECKED", "VIOLATIONS", "CONVERGED IN", "DETAIL")
        for o in self.outcomes:
            v = f"[red]{o.violations}[/red]" if o.violations else "0"
            c = "" if o.converge_seconds is None else f"{o.converge_seconds:.2f} s"
            detail.add_row(escape(o.name), str(o.writes_checked), v, c, escape(o.detail))
        console.print(detail)
        tot = self.totals()
        t = Table(show_header=False, title="soak summary", title_justify="left", box=None)
        t.add_column(style="bold")
        t.add_column()
        t.add_row("scenarios run", str(tot["scenarios"]))
        t.add_row("writes checked", str(tot["writes_checked"]))
        colour = "green" if self.ok else "red"
        t.add_row("violations (must be 0)", f"[{colour}]{tot['violations']}[/{colour}]")
        for key, label in (("converge_mean_seconds", "mean"), ("converge_worst_seconds", "worst")):
            value = tot[key]
            t.add_row(f"{label} time to converge", "-" if value is None else f"{value:.2f} s")
        console.print(t)
