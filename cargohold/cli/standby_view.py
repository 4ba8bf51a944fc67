"""How ``cargohold volume get`` shows a standby volume's state and lag (standby_cmd.py has
the commands; docs/disaster-recovery.md)."""

from __future__ import annotations

from typing import Any

from cargohold.cli.output import fields, human_size

STANDBY_FIELDS = (
    "standby",
    "target",
    "source",
    "applied",
    "applied_at",
    "applying",
    "lag",
    "last_poll",
    "poll_error",
    "applies",
    "last_apply",
)


def _secs(x: float | None) -> str:
    return "?" if x is None else f"{x:.0f} s"


def print_standby(sb: dict[str, Any]) -> None:
    lag = sb.get("lag") or {}
    last = sb.get("last_apply") or {}
    fields(
        {
            "standby": sb.get("state"),
            "target": sb.get("target"),
            "source": f"{sb.get('source_volume')} ({sb.get('source_volume_id') or '?'})",
            "applied": sb.get("applied") or "(none yet)",
            "applied_at": sb.get("applied_created") or None,  # shown as an age
            "applying": f"{sb.get('applying')} ({sb.get('phase')})" if sb.get("applying") else "",
            "lag": f"{_secs(lag.get('seconds'))} behind the newest backup, "
            f"{lag.get('backups', 0)} backup(s); data age {_secs(lag.get('data_age_seconds'))}",
            "last_poll": f"{_secs(lag.get('since_poll_seconds'))} ago",
            "poll_error": sb.get("poll_error") or "",
            "applies": sb.get("applies", 0),
            "last_apply": (
                f"{human_size(last.get('changed_bytes', 0))} changed, "
                f"{human_size(last.get('fetched_bytes', 0))} fetched, {last.get('seconds', '?')} s"
                if last
                else ""
            ),
        },
        STANDBY_FIELDS,
    )
