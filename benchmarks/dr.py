#!/usr/bin/env python3
"""Benchmark: disaster-recovery standbys (issue #18's figures; docs/disaster-recovery.md).

Two local clusters of real processes (A and B, SQLite, two nodes each, mutual TLS) share one
SeaweedFS S3 server on loopback. A's volume is backed up every ``--interval`` seconds while
a writer changes ``--change`` random bytes between two backups; B's standby follows (the
manager's ``standby_poll_interval`` is ``--poll``). Measured:

- RPO: for backup k, ``applied_k`` (when B's ``standby.applied`` became k, polled every
  0.25 s) minus ``start_{k-1}`` (when backup k-1 was asked for: a write acknowledged just
  after k-1's snapshot reaches B only with k). Median and worst over ``--backups`` backups;
  also the apply lag alone (``applied_k`` - ``done_k``).
- Bytes per apply: what B's engine fetched from S3 (``last_apply.fetched_bytes``, compressed
  and encrypted blobs) and wrote (``changed_bytes``) against the bytes A's writer changed.
- Activation of an in-sync standby of ``--size`` (the API call until ``standby.state`` is
  ``active``), and the same through the CLI (``volume activate --wait``).

    .venv/bin/python benchmarks/dr.py [--size 4GiB] [--interval 20] [--poll 2] \\
        [--backups 4] [--change 16MiB] [--json benchmarks/results/dr.json]

The issue asks for RPO at a 60 s interval; the default here is 20 s so that a run fits in a
few minutes on a shared 2-core machine (``--interval 60`` for the full figure): the RPO is
the interval plus the backup's and the apply's durations plus up to one poll.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cargohold.cli.units import parse_size  # noqa: E402
from cargohold.control.client import ManagerClient  # noqa: E402
from cargohold.launcher.cluster import LocalCluster  # noqa: E402
from tests.support.s3_server import S3Server  # noqa: E402

MiB = 1 << 20
DEFAULT_JSON = os.path.join(ROOT, "benchmarks", "results", "dr.json")


def cli(d: Path, *args: str, timeout: float = 600) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "cargohold", *args, "--dir", str(d)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if p.returncode != 0:
        raise RuntimeError(f"cargohold {' '.join(args)}: {p.stderr}")
    return p.stdout


def jcli(d: Path, *args: str, timeout: float = 600) -> Any:
    return json.loads(cli(d, *args, "-o", "json", timeout=timeout))


def write_random(uri: str, tmp: Path, offset: int, size: int) -> None:
    src = tmp / "rand.bin"
    src.write_bytes(os.urandom(size))
    p = subprocess.run(
        ["qemu-io", "-f", "raw", "-c", f"write -s {src} {offset} {size}", uri],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if p.returncode != 0 or "error" in (p.stdout + p.stderr).lower():
        raise RuntimeError(f"qemu-io: {p.stdout}{p.stderr}")


def load() -> float:
    return os.getloadavg()[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    size, change = parse_size(args.size), parse_size(args.change)
    os.environ["CARGOHOLD_MANAGER_STANDBY_POLL_INTERVAL"] = str(args.poll)
    tmp = Path(tempfile.mkdtemp(prefix="dr-bench-"))
    da, db = Path(f"/tmp/drbench-a-{os.getpid()}"), Path(f"/tmp/drbench-b-{os.getpid()}")
    out: dict[str, Any] = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "size_bytes": size,
        "interval_s": args.interval,
        "poll_s": args.poll,
        "change_bytes": change,
    }
    with S3Server() as s3:
        a = LocalCluster.create(str(da), nodes=2).up(timeout=120)
        b = LocalCluster.create(str(db), nodes=2).up(timeout=120)
        try:
            creds = tmp / "s3.creds"
            creds.write_text(f"access_key={s3.access_key}\nsecret_key={s3.secret_key}\n")
            key = tmp / "repo.key"
            url = f"s3://{s3.bucket}/site-a"
            s3a = ("--endpoint", s3.endpoint, "--credentials-file", str(creds))
            cli(da, "backup-target", "add", "site-a", url, *s3a, "--generate-key", str(key))
            cli(db, "backup-target", "add", "site-a", url, *s3a, "--key-file", str(key))
            cli(da, "volume", "create", "db", "--size", str(size), "--replicas", "2")
            uri = cli(da, "volume", "attach", "db", "--node", "node-1").strip()
            for off in range(0, min(size, 256 * MiB), 64 * MiB):  # 256 MiB of data
                write_random(uri, tmp, off, 64 * MiB)
            jcli(da, "backup", "create", "db", "--target", "site-a", "--wait")
            t0 = time.monotonic()
            cli(db, "volume", "create-standby", "db-dr", "--from-target", "site-a",
                "--source-volume", "db", "--replicas", "2", "--wait")  # fmt: skip
            out["first_restore_s"] = round(time.monotonic() - t0, 2)
            print(f"standby restored in {out['first_restore_s']} s", flush=True)
            rows = []
            with ManagerClient.discover(None, db) as cb:
                prev_start = time.time()
                next_at = time.monotonic() + args.interval
                for k in range(args.backups):
                    write_random(uri, tmp, (k * change) % (size - change), change)
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    next_at += args.interval
                    start = time.time()
                    bk = jcli(da, "backup", "create", "db", "--target", "site-a", "--wait")
                    done = time.time()
                    rid = bk["repository_id"]
                    while (sb := cb.volume("db-dr")["standby"])["applied"] != rid:
                        if time.time() - done > 300:
                            raise RuntimeError(f"backup {rid} not applied in 300 s: {sb}")
                        time.sleep(0.25)
                    applied = time.time()
                    la = sb["last_apply"]
                    row = {
                        "backup_s": round(done - start, 2),
                        "apply_lag_s": round(applied - done, 2),
                        "rpo_s": round(applied - prev_start, 2),
                        "changed_bytes": la.get("changed_bytes"),
                        "fetched_bytes": la.get("fetched_bytes"),
                        "apply_s": la.get("seconds"),
                        "load": round(load(), 2),
                    }
                    print(row, flush=True)
                    rows.append(row)
                    prev_start = start
                out["backups"] = rows
                rpo = [r["rpo_s"] for r in rows]
                out["rpo_median_s"], out["rpo_worst_s"] = statistics.median(rpo), max(rpo)
                out["apply_lag_median_s"] = statistics.median(r["apply_lag_s"] for r in rows)
                # activation of the in-sync standby: API call until active
                t0 = time.monotonic()
                cb.activate("db-dr")
                cb.wait_volume("db-dr", lambda v: v["standby"]["state"] == "active", 120)
                out["activation_s"] = round(time.monotonic() - t0, 2)
            print(f"activation: {out['activation_s']} s", flush=True)
        finally:
            b.down(purge=True)
            a.down(purge=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="4GiB", help="the volume's size (256 MiB of it written)")
    p.add_argument("--interval", type=float, default=20.0, help="seconds between backups")
    p.add_argument("--poll", type=float, default=2.0, help="the standby's poll interval")
    p.add_argument("--backups", type=int, default=4)
    p.add_argument("--change", default="16MiB", help="random bytes written between backups")
    p.add_argument("--json", default=DEFAULT_JSON)
    args = p.parse_args()
    r = run(args)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(r, f, indent=2)
    print(json.dumps({k: v for k, v in r.items() if k != "backups"}, indent=2))


if __name__ == "__main__":
    main()
