"""The block cipher's tests run under its native and its pure-Python path alike
(tests/support/cipher_paths.py)."""

from tests.support.cipher_paths import cipher_path, pytest_generate_tests  # noqa: F401
