from __future__ import annotations

import pytest

from tests import netns


@pytest.fixture
def lab():
    why = netns.available()
    if why:
        pytest.skip(why)
    lab = netns.Lab()
    try:
        yield lab
    finally:
        lab.close()
