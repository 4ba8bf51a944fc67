"""The check functions, one per rule, grouped by the object they look at.

Importing this package registers every check in ``registry.CHECKS``; ``engine`` runs them.
"""

from cargohold.audit.checks import claims, classes, pods, snapshots
from cargohold.audit.checks.registry import CHECKS, CheckFn, Hit, check

__all__ = ["CHECKS", "CheckFn", "Hit", "check", "claims", "classes", "pods", "snapshots"]
