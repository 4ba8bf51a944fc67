"""Version skew between the manager and its node agents: which agent versions a manager
works with (a pure policy function), and the version this process reports.

The rule (docs/upgrades.md): the manager accepts an agent of the same major version and at
most one minor version behind or ahead of its own; patch levels and pre-release suffixes
never matter. An agent older than version reporting (it sends no version) counts as 0.1,
the last release without it. Called by the manager on every registration and heartbeat
(``control/service_nodes.py``); agents report ``running_version()``.

``CARGOHOLD_VERSION_OVERRIDE`` makes a process report another version than the package's:
a hook for the upgrade test (tests/integration/test_upgrade.py), which "upgrades" a cluster
by restarting the same code under a new version string. Never set it in production.
"""

from __future__ import annotations

import os
import re

from cargohold import __version__
from cargohold.errors import VersionSkew
from cargohold.settings import ProcessSettings

VERSION_OVERRIDE_ENV = ProcessSettings.variable("version_override")
UNREPORTED = "0.1"  # what an agent that reports no version is: the last release without it
MINOR_SKEW = 1  # minor versions an agent may be behind or ahead of its manager
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+.]?[0-9A-Za-z.+-]*)?$")


def running_version() -> str:
    """The version this process reports: the package's, unless the test hook says other."""
    return os.environ.get(VERSION_OVERRIDE_ENV, "").strip() or __version__


def major_minor(version: str) -> tuple[int, int]:
    """``"0.2.1"``, ``"v1.4"``, ``"0.3.0rc1"`` -> (major, minor); ValueError otherwise."""
    m = _VERSION.match(version.strip())
    if not m:
        raise ValueError(f"{version!r} is not a version (MAJOR.MINOR[.PATCH])")
    return int(m.group(1)), int(m.group(2))


def skew_problem(manager: str, agent: str) -> str:
    """Why a manager at version ``manager`` must refuse an agent at version ``agent``
    ("" when it works with it). ``agent`` "" is an agent that reports no version."""
    shown = agent or f"unreported (older than version reporting: {UNREPORTED})"
    try:
        a_major, a_minor = major_minor(agent or UNREPORTED)
    except ValueError as e:
        return f"the agent's version is not understood: {e}"
    m_major, m_minor = major_minor(manager)
    if a_major != m_major:
        gap = "a different major version"
    elif abs(a_minor - m_minor) > MINOR_SKEW:
        gap = f"{abs(a_minor - m_minor)} minor versions apart"
    else:
        return ""
    side = "older" if (a_major, a_minor) < (m_major, m_minor) else "newer"
    fix = (
        "upgrade the agent on this node"
        if side == "older"
        else "upgrade the manager first (managers, then agents node by node, then CSI pods)"
    )
    return (
        f"agent version {shown} is {side} than manager version {manager} by {gap}; "
        f"a manager works with agents at most {MINOR_SKEW} minor version behind or ahead "
        f"of its own: {fix} (docs/upgrades.md)"
    )


def check_agent(node: str, agent: str, manager: str | None = None) -> None:
    """Raise VersionSkew (HTTP 409) when this manager must refuse node ``node``'s agent."""
    problem = skew_problem(manager or running_version(), agent)
    if problem:
        raise VersionSkew(f"node {node}: {problem}", node=node, agent_version=agent)
