"""The manager's own hands on backup repositories: what it does to a repository directly
(check a target when it is added, read the catalog to import backups, delete a backup, run
GC), as opposed to backups and restores, which engines run (docs/backups.md).

The calls of cargohold.backup are synchronous and may take a while (the network, a slow
NFS mount): ``Service`` (service_backups.py) runs every one in a thread
(``asyncio.to_thread``) so the manager's event loop never waits on a target.

``open_repository`` is the only place the control plane imports cargohold.backup; unit
tests replace it (``Service.open_backup_repository``) with an in-memory one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from collections.abc import Callable
from typing import Any, Protocol

from cargohold.control.backup_records import BackupTarget, TargetSecrets
from cargohold.errors import (
    CargoholdError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)


class BackupRepository(Protocol):
    """What the manager uses of ``cargohold.backup.repository.Repository``."""

    def backups(self) -> list[Any]: ...  # BackupInfo: to_dict()

    def delete(self, backup_id: str) -> None: ...

    def gc(self) -> dict[str, Any]: ...

    def pin(self, holder: str, backups: list[str], ttl: float) -> str: ...  # standbys

    def unpin(self, holder: str) -> None: ...


Opener = Callable[[BackupTarget, TargetSecrets, bool], BackupRepository]


def secrets_for_engine(target: BackupTarget, secrets: TargetSecrets) -> dict[str, str]:
    """The ``secrets`` of a BACKUP or RESTORE assignment (the contract with the engine):
    where the repository is and how to open it."""
    return {
        "url": target.url,
        "endpoint": target.endpoint,
        "region": target.region,
        "access_key": secrets.access_key.get_secret_value(),
        "secret_key": secrets.secret_key.get_secret_value(),
        "ca_bundle": target.ca_bundle,
        "repository_key": secrets.repository_key.get_secret_value(),
    }


def open_repository(
    target: BackupTarget, secrets: TargetSecrets, create: bool = False
) -> BackupRepository:
    """The target's repository, opened with its key (blocking: call it in a thread).
    ``create``: make a new repository when the target holds none. Errors: InvalidArgument
    naming the target (unreachable, refused credentials, a wrong key for the repository
    there, no repository and not ``create``)."""
    from cargohold.backup.repository import Repository  # the one place
    from cargohold.backup.targets import open_target

    where = f"backup target {target.name} ({target.url})"
    key = base64.b64decode(secrets.repository_key.get_secret_value())
    ca_file = None
    try:
        ca_file = _ca_file(target.ca_bundle)
        store = open_target(
            target.url,
            endpoint=target.endpoint or None,
            access_key=secrets.access_key.get_secret_value() or None,
            secret_key=secrets.secret_key.get_secret_value() or None,
            region=target.region or None,
            ca_bundle=ca_file,
        )
        try:
            return Repository.open(store, key)
        except NotFound as e:
            if "bucket" in e.detail:  # the bucket is missing, not the repository in it
                raise InvalidArgument(f"{where}: {e}") from None
            if not create:
                raise InvalidArgument(f"{where} holds no backup repository") from None
            return Repository.init(store, key)
    except PermissionDenied as e:
        raise InvalidArgument(
            f"{where}: the repository key does not open the repository there ({e}); "
            "use the key it was made with"
        ) from None
    except InvalidArgument:
        raise
    except CargoholdError as e:
        raise InvalidArgument(f"{where}: {e}") from None
    except OSError as e:
        raise InvalidArgument(f"{where} is not usable: {e}") from None


_CA_FILES: dict[str, str] = {}


def _ca_file(pem: str) -> str | None:
    """A file holding ``pem`` (boto3 takes a path), made once per bundle."""
    if not pem:
        return None
    path = _CA_FILES.get(pem)
    if path is None:
        name = hashlib.sha256(pem.encode()).hexdigest()[:16]
        path = os.path.join(tempfile.gettempdir(), f"cargohold-ca-{os.getuid()}-{name}.pem")
        with open(path, "w", encoding="ascii") as f:
            f.write(pem)
        _CA_FILES[pem] = path
    return path
