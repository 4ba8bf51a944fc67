"""Run a test module's tests under both of the block cipher's paths: the C extension
(``cargohold.encryption._gcm_runs``) and the pure-Python loop (docs/encryption.md, "Cost").

A conftest imports ``cipher_path`` (an autouse fixture) and ``pytest_generate_tests``; the
tests of the modules named in ``BOTH_PATHS`` run twice, ``[native]`` and ``[python]``
(``[native]`` skips where the extension is not built); the others run on the default path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cargohold.encryption import native

BOTH_PATHS = {
    "test_block_cipher",
    "test_block_cipher_v2",
    "test_slot_codec",
    "test_encrypted_volume_sample",
    "test_encrypted_volume_sample_v2",
    "test_encrypted_device",
    "test_encrypted_device_crashes",
    "test_encrypted_write_callbacks",
    "test_encrypted_write_races",
    "test_encrypted_write_machine",
}


def pytest_generate_tests(metafunc: Any) -> None:
    name = metafunc.module.__name__.rsplit(".", 1)[-1]
    if name in BOTH_PATHS and "cipher_path" in metafunc.fixturenames:
        metafunc.parametrize("cipher_path", ["native", "python"], indirect=True)


@pytest.fixture(autouse=True)
def cipher_path(request: Any) -> Iterator[str]:
    """The block cipher's path for this test: ``native``, ``python`` or ``default``."""
    path = getattr(request, "param", "default")
    if path == "default":
        yield path
        return
    if path == "native" and native.built is None:
        pytest.skip(f"the block cipher's C extension is not built: {native.why}")
    before = native.runs, native.why
    native.use(path == "native")
    try:
        yield path
    finally:
        native.runs, native.why = before
