"""Shared pytest setup: the tests run against the source tree and the project venv."""

from __future__ import annotations

import os
import sys

# rich fixes a Console's width when COLUMNS is set as it is made (the CLI's consoles are made
# at import): a COLUMNS inherited by the test process (pytest-xdist's workers have one) would
# freeze every table at that width, while the CLI tests give each call its own COLUMNS
os.environ.pop("COLUMNS", None)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# The properties are what the tests check, not how fast hypothesis makes examples: on this
# shared 2-core machine a loaded moment made "too_slow" health checks and per-example
# deadlines fail tests whose properties held. Seeds still print on a real failure.
settings.register_profile("cargohold", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cargohold")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The test cluster's CA (tests/support/tls.py): credentials for servers and clients."""
    from tests.support.tls import PKI

    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test item (``item.rep_call``): a fixture's teardown
    can then tell a failed test from a passed one (tests/support/cluster_logs.py)."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
