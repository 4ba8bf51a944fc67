"""Is the ceiling experiment's local replica really written? (Run from a tree with
local_writes_ceiling.patch applied; never part of the suite.)

One engine over three replica servers (the local one on its unix socket: with the patch
its mutations are applied in the engine), fio writes to it, then the engine's scrub:
every replica's blocks checked against their CRCs by their own servers (the local one's
server reads what the engine's in-process store wrote, through the shared block maps and
page cache), and the three replicas' checksum maps compared. Exit status 0 only when no
block is bad or diverged and every replica stayed RW at the engine's generation.

    PYTHONPATH=.:benchmarks .venv/bin/python benchmarks/experiments/local_writes_check.py
"""

from __future__ import annotations

import json
import sys
import tempfile

from engine_lab import EngineLab, fio  # benchmarks/engine_lab.py


def main() -> int:
    size = 64 << 20
    with tempfile.TemporaryDirectory(prefix="lw-check-") as work:
        lab = EngineLab(work, size, "chk", local_unix=True)
        try:
            lab.start()
            assert lab.engine is not None
            lab.fill()
            # the random writes last: a sequential pass after them would overwrite them all
            fio(lab.engine.uri, "write", "1M", 4, size, 2)
            fio(lab.engine.uri, "randwrite", "4k", 16, size, 4)
            fio(lab.engine.uri, "randwrite", "4k", 1, size, 2)
            st = lab.engine.ctl(op="status")
            report = lab.engine.ctl(op="scrub", wait=True)["scrub"]
            st2 = lab.engine.ctl(op="status")
        finally:
            lab.stop()
    reps = [(r["id"], r["mode"], r["generation"], r.get("transport")) for r in st2["replicas"]]
    print("replicas:", reps, "engine generation:", st2["generation"])
    print("written_bytes:", st["counters"].get("written_bytes"))
    keys = [k for k in report if "bad" in k or "diverged" in k or "checked" in k]
    print("scrub:", json.dumps({k: report[k] for k in keys}))
    ok = all(m == "RW" and g == st2["generation"] for _, m, g, _ in reps)
    ok = ok and not report.get("bad") and not report.get("diverged_found")
    ok = ok and report.get("checked_blocks", 0) > 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
