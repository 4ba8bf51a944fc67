"""Fixtures of the auditor tests; the helpers themselves live in audit_helpers.py."""

from __future__ import annotations

import pytest
from audit_helpers import recorded_reader

from cargohold.audit.cluster import ClusterReader


@pytest.fixture
def cluster_reader() -> ClusterReader:
    """The recorded cluster; listing ReplicationControllers is forbidden (403)."""
    return recorded_reader(failing={"list_replication_controller_for_all_namespaces": 403})
