"""Errors of the auditor: the input could not be read, so nothing was audited.

All of them are ``ConfigError``s (exit code 2): a file that cannot be read, a document that
is not YAML, a kustomize directory that does not render, a cluster that cannot be reached.
``cargohold.cli.audit_cmd`` turns them into one clear line on stderr. Findings are never
errors: they are data in an ``AuditResult``.
"""

from __future__ import annotations

from cargohold.errors import ConfigError


class AuditError(ConfigError):
    """The audit could not run on the given input."""


class InputError(AuditError):
    """A manifest file, directory or stdin could not be read or parsed."""


class KustomizeError(AuditError):
    """``kubectl kustomize`` is missing or failed to render a directory."""


class ClusterError(AuditError):
    """The live cluster could not be reached or read."""
