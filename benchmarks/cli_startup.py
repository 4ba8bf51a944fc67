"""How long a ``cargohold`` command takes to start: wall time, CPU time, import time and
the number of modules imported, for a few everyday commands (docs/benchmarks.md,
"CLI start-up").

Every command runs as ``python -m cargohold ...`` (how tests/support/cli.py runs it, and
what the ``cargohold`` script does), ``--runs`` times; the table shows medians. CPU time
(user + system of the child, from ``wait4``) moves less than wall time on a loaded
machine; the module count does not move at all. Import time comes from ``-X importtime``
(the sum of the top-level imports' cumulative times), in a separate run.

    .venv/bin/python benchmarks/cli_startup.py --dir /tmp/c   # a running local cluster
    .venv/bin/python benchmarks/cli_startup.py                 # no cluster: skips volume list

To measure another checkout the same way (before/after a change), run it from outside
the source tree with that checkout first on the path: ``cd /tmp && PYTHONPATH=/old/tree
/path/to/.venv/bin/python /path/to/benchmarks/cli_startup.py`` (one warm-up run per command
writes its .pyc files first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

COMMANDS: list[tuple[str, list[str], bool]] = [
    # (label, arguments, needs a cluster)
    ("python -c pass", [], False),
    ("cargohold version", ["version"], False),
    ("cargohold --help", ["--help"], False),
    ("cargohold volume --help", ["volume", "--help"], False),
    ("cargohold volume list", ["volume", "list"], True),
    ("cargohold agent --help", ["agent", "--help"], False),  # a daemon's start, the same way
    ("cargohold manager --help", ["manager", "--help"], False),
]


def _argv(args: list[str], *, importtime: bool = False) -> list[str]:
    head = [sys.executable] + (["-X", "importtime"] if importtime else [])
    if not args:
        return [*head, "-c", "pass"]
    return [*head, "-m", "cargohold", *args]


def run_once(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; fails unless it exits 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(_argv(args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else b""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{args} exited {proc.returncode}: {err.decode(errors='replace')}")
    return wall, usage.ru_utime + usage.ru_stime


def import_profile(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(import seconds, modules imported) from one ``-X importtime`` run."""
    p = subprocess.run(_argv(args, importtime=True), env=env, capture_output=True, text=True)
    total_us = 0
    modules = 0
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        modules += 1
        _, cumulative, name = line.split("|")
        if not name.startswith("  "):  # " name": top level; nested ones are indented more
            total_us += int(cumulative)
    return total_us / 1e6, modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="a running local cluster's directory (for volume list)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    opts = parser.parse_args()
    env = {**os.environ, "COLUMNS": "200"}
    if opts.dir:
        env["CARGOHOLD_DIR"] = opts.dir
    rows: list[dict[str, Any]] = []
    print(f"load average {os.getloadavg()[0]:.1f}; {opts.runs} runs each; medians")
    print(f"{'command':<28} {'wall ms':>8} {'cpu ms':>8} {'import ms':>10} {'modules':>8}")
    for label, args, needs_cluster in COMMANDS:
        if needs_cluster and not opts.dir:
            continue
        run_once(args, env)  # warm-up: .pyc files, the page cache
        runs = [run_once(args, env) for _ in range(opts.runs)]
        imports, modules = import_profile(args, env)
        row = {
            "command": label,
            "wall_ms": round(statistics.median(w for w, _ in runs) * 1000),
            "cpu_ms": round(statistics.median(c for _, c in runs) * 1000),
            "import_ms": round(imports * 1000),
            "modules": modules,
        }
        rows.append(row)
        print(
            f"{label:<28} {row['wall_ms']:>8} {row['cpu_ms']:>8} {row['import_ms']:>10}"
            f" {row['modules']:>8}"
        )
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"load": os.getloadavg()[0], "runs": opts.runs, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
