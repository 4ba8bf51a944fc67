"""Fixtures of the backup integration tests: a real S3 server (SeaweedFS) for the session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.s3_server import S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS for the whole session (it takes a few seconds to start); tests keep
    apart by key prefix (``s3_prefix``)."""
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_prefix() -> str:
    """A fresh key prefix in the session's bucket, so tests never see each other's objects."""
    return f"t-{uuid.uuid4().hex[:12]}"
