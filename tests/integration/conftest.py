from __future__ import annotations

import pytest

from tests.support.processes import ServerProc


@pytest.fixture
def server(tmp_path):
    (tmp_path / "disk").mkdir()
    s = ServerProc([str(tmp_path / "disk")], unix=str(tmp_path / "replica.sock")).start()
    yield s
    s.stop()
