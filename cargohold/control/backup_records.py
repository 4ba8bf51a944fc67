"""The manager's records of backups (their keys are in ``model.keys``; what they mean:
docs/backups.md): backup targets, their secrets, and the backups made to them.

A target's public half (``BackupTarget``: name, URL, endpoint, region, CA bundle) is what
the API serves. Its secrets (``TargetSecrets``: the object store's access and secret keys,
the 32-byte repository key) are a record of their own that no route serves: their fields
are ``SecretStr`` (``repr``, ``str``, ``model_dump`` and plain ``model_dump_json`` print
``**********``), written to the state store only by ``secret_json`` and handed to an engine
only in the heartbeat's assignment of a backup or restore (control/assignments.py).

The repository's catalog is the truth about which backups exist; a ``Backup`` record is the
manager's view of one (who asked, its operation, its progress, whose it is), imported from
the catalog by ``sync`` when the manager does not know it (a new cluster, after a disaster).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field, SecretStr, SerializationInfo, field_serializer

from cargohold.control.model import Record


class BackupTarget(Record):
    """An object store (``s3://BUCKET/PREFIX``) or a filesystem path (``file:///mnt/b``)
    that holds one backup repository. Admin-owned, shared by every tenant: a tenant names
    it when it backs up its volumes and sees only its own backups in it."""

    name: str
    url: str
    endpoint: str = ""  # S3: the endpoint URL ("" = AWS's)
    region: str = ""
    ca_bundle: str = ""  # PEM text: the CAs to trust for the endpoint ("" = the system's)
    created_at: float = 0.0
    has_credentials: bool = False  # an access key and secret key are held (never shown)
    last_sync: float | None = None  # when the catalog was last read into the records
    error: str = ""  # what the last check or sync ran into ("" when fine)


class TargetSecrets(Record):
    """A target's credentials and repository key: never served, never logged (see the
    module's docstring). ``repository_key`` is the base64 of the 32-byte key."""

    name: str
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    repository_key: SecretStr

    @field_serializer("access_key", "secret_key", "repository_key", when_used="json")
    def _reveal(self, v: SecretStr, info: SerializationInfo) -> str:
        ctx = info.context
        if isinstance(ctx, dict) and ctx.get("reveal") is True:
            return v.get_secret_value()
        return str(v)  # "**********"

    def secret_json(self) -> bytes:
        """The record with its secrets, for the state store only."""
        return self.model_dump_json(context={"reveal": True}).encode()


class BackupState(StrEnum):
    PENDING = "pending"  # its snapshot is being taken, or its operation waits for an engine
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DELETING = "deleting"  # being deleted from the repository
    DELETED = "deleted"  # gone (only the answer of DELETE says so: the record goes too)


class Backup(Record):
    """One backup of a volume: the manager's record (docs/backups.md)."""

    id: str  # the manager's: bk-<volume>-<yyyymmddhhmmss>-<4 hex>
    repository_id: str = ""  # the repository's id for it ("" until it succeeded)
    volume: str
    volume_id: str = ""  # the volume's uid at the time (a recreated volume differs)
    target: str
    snapshot: str = ""  # the volume's snapshot it was read from
    parent: str | None = None  # the repository id of the backup it is incremental to
    state: BackupState = BackupState.PENDING
    progress: float = 0.0
    size_bytes: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)  # the repository's BackupInfo (+ mode)
    operation: str = ""  # the BACKUP operation's id ("" when imported)
    created: float = 0.0
    finished: float | None = None
    error: str = ""
    tenant: str | None = None  # the volume's tenant (None: the provider's, or imported)
    imported: bool = False  # found in the repository's catalog, not made by this manager
