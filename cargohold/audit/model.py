"""Value types of the auditor: severities, rules, findings, advice and the audit result.

Plain frozen dataclasses and one enum, no I/O. ``catalog`` builds the ``Rule`` records,
``checks`` and ``engine`` produce ``Finding`` and ``Advice`` values, and ``report`` /
``sarif`` render an ``AuditResult``.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass


class Severity(enum.IntEnum):
    """How bad a finding is; ordered so that ``CRITICAL > HIGH > ... > INFO``."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def sarif_level(self) -> str:
        """The SARIF ``level`` of a result with this severity."""
        if self >= Severity.HIGH:
            return "error"
        if self == Severity.MEDIUM:
            return "warning"
        return "note"

    @classmethod
    def parse(cls, text: str) -> Severity:
        """``"high"`` -> ``Severity.HIGH``; raises ``ValueError`` naming the valid levels."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            levels = ", ".join(s.label for s in sorted(cls, reverse=True))
            raise ValueError(f"unknown severity {text!r} (expected one of: {levels})") from None


@dataclass(frozen=True)
class Rule:
    """One entry of the rule table (``catalog.RULES``): the single source of the rule's
    id, severity and texts for the checks, the reports, SARIF metadata and docs/audit.md."""

    id: str
    severity: Severity
    title: str
    why: str
    fix: str
    fix_yaml: str = ""
    example: str = ""
    """A complete, bad set of manifests that triggers the rule (shown in docs, run in tests)."""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObjectRef:
    """The Kubernetes object a finding or advice points to."""

    kind: str
    name: str
    namespace: str | None = None

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Location:
    """Where an object came from: a file (with a line when known), stdin, a kustomize
    directory or a live cluster (``is_file`` False)."""

    source: str
    line: int | None = None
    is_file: bool = True

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True)
class Finding:
    """One rule violated by one object, at one field."""

    rule: Rule
    message: str
    object: ObjectRef
    field: str
    location: Location
    suppressed_by: str | None = None

    @property
    def rule_id(self) -> str:
        return self.rule.id

    @property
    def severity(self) -> Severity:
        return self.rule.severity

    def sort_key(self) -> tuple[int, str, int, str, str]:
        return (
            -self.severity,
            self.location.source,
            self.location.line or 0,
            self.rule.id,
            str(self.object),
        )


@dataclass(frozen=True)
class Advice:
    """The decision-matrix view of one PVC: which storage pattern it follows and whether
    that pattern fits the workloads it serves."""

    claim: str
    """What the claim is: ``PVC data``, ``volumeClaimTemplate data of StatefulSet pg``..."""
    object: ObjectRef
    field: str
    location: Location
    pattern: str
    workloads: tuple[str, ...]
    scenario: str
    recommended: str
    verdict: str
    """``fits``, ``mismatch`` or ``unknown`` (no workload, or a workload of no known kind)."""
    note: str


@dataclass(frozen=True)
class AuditResult:
    """Everything one audit produced, sorted most severe first."""

    findings: tuple[Finding, ...]
    suppressed: tuple[Finding, ...] = ()
    advice: tuple[Advice, ...] = ()
    warnings: tuple[str, ...] = ()
    objects: int = 0

    def at_or_above(self, severity: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity >= severity]

    def counts(self) -> dict[Severity, int]:
        """Active findings per severity, most severe first, zeros included."""
        counter = Counter(f.severity for f in self.findings)
        return {s: counter.get(s, 0) for s in sorted(Severity, reverse=True)}
