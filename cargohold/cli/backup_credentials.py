"""Where the backup commands take secrets from: never the command line (``ps`` and shell
histories show it). A repository key from a file (``--key-file``; 32 raw bytes or their
base64) or made into a new file (``--generate-key``, mode 0600, never overwritten); an
object store's credentials from a file (``--credentials-file``) or the environment.

Used by backup_target_cmd.py (``backup-target add``) and backup_cmd.py (``backup verify``).
"""

from __future__ import annotations

import base64
import binascii
import configparser
import os
import secrets
from pathlib import Path

from cargohold.errors import ConfigError

KEY_BYTES = 32
ENV_ACCESS = ("CARGOHOLD_BACKUP_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
ENV_SECRET = ("CARGOHOLD_BACKUP_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
LOSS_WARNING = (
    "Keep a copy of the repository key away from this cluster: without it nobody, "
    "cargohold included, can read the backups"
)


def read_key(path: str) -> bytes:
    """The 32-byte key in ``path``: raw, or base64 text (what --generate-key writes)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the key file {path}: {e.strerror}") from None
    if len(raw) == KEY_BYTES:
        return raw
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"the key file {path} holds no 32-byte key (32 raw bytes, or their base64)"
        )
    return key


def generate_key(path: str) -> bytes:
    """A new random key, written as base64 to a NEW file ``path`` of mode 0600."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists: a key file is never overwritten") from None
    except OSError as e:
        raise ConfigError(f"cannot create the key file {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def write_secret_file(path: str, text: str) -> None:
    """``text`` into a NEW file of mode 0600 (an exported key)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists: not overwritten") from None
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def read_credentials(path: str | None) -> tuple[str, str]:
    """(access key, secret key): from ``path`` — ``access_key=...`` / ``secret_key=...``
    lines, or an AWS credentials file (its ``[default]`` section) — else from the
    environment (CARGOHOLD_BACKUP_ACCESS_KEY / _SECRET_KEY, or AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY); ("", "") when none is given."""
    if path is None:
        access = next((os.environ[v] for v in ENV_ACCESS if os.environ.get(v)), "")
        secret = next((os.environ[v] for v in ENV_SECRET if os.environ.get(v)), "")
        if bool(access) != bool(secret):
            raise ConfigError("the environment holds only one of the access and secret keys")
        return access, secret
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the credentials file {path}: {e}") from None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text if text.lstrip().startswith("[") else "[default]\n" + text)
    except configparser.Error as e:
        raise ConfigError(f"the credentials file {path} is not KEY=VALUE lines: {e}") from None
    sec = parser["default"] if parser.has_section("default") else {}
    access = sec.get("access_key") or sec.get("aws_access_key_id") or ""
    secret = sec.get("secret_key") or sec.get("aws_secret_access_key") or ""
    if not access or not secret:
        raise ConfigError(
            f"the credentials file {path} needs access_key and secret_key "
            "(or aws_access_key_id and aws_secret_access_key)"
        )
    return access.strip(), secret.strip()


def read_ca_bundle(path: str | None) -> str:
    if path is None:
        return ""
    try:
        pem = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the CA bundle {path}: {e}") from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigError(f"{path} holds no PEM certificate")
    return pem
