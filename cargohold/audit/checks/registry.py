"""The registry that ties check functions to rule ids, and the ``Hit`` they yield.

Each check module decorates its functions with ``@check("CH0xx")``; ``engine`` looks the
functions up by the ids of ``catalog.RULES`` and turns every ``Hit`` into a ``Finding``
with the rule's texts, the object and the file/line of the field the hit names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cargohold.audit.inventory import Inventory
from cargohold.audit.manifest import FieldPath, Manifest
from cargohold.audit.workloads import Workload


@dataclass(frozen=True, eq=False)
class Hit:
    """One violation: the object, the field path inside it, and a one-line message."""

    manifest: Manifest
    path: FieldPath
    message: str


CheckFn = Callable[[Inventory], Iterable[Hit]]
CHECKS: dict[str, CheckFn] = {}


def check(rule_id: str) -> Callable[[CheckFn], CheckFn]:
    """Register the decorated function as the check of ``rule_id``."""

    def register(fn: CheckFn) -> CheckFn:
        if rule_id in CHECKS:
            raise RuntimeError(f"two checks registered for {rule_id}")
        CHECKS[rule_id] = fn
        return fn

    return register


def names(workloads: Sequence[Workload], limit: int = 3) -> str:
    """``"StatefulSet db/pg, Deployment web/app and 2 more"``."""
    shown = [str(w) for w in workloads[:limit]]
    rest = len(workloads) - len(shown)
    if rest > 0:
        return ", ".join(shown) + f" and {rest} more"
    return ", ".join(shown)
