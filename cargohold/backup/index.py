"""The chunk index: chunk id -> where its blob is (pack, offset, length, flags, size).

Index objects (``index/<id>``, sealed) are written once and never modified: each writer
writes one at commit for the packs it made; GC merges them. The catalog names the current
ones, so loading the index needs no LIST. In memory the index is a dict (about 200 bytes a
chunk in CPython: ~50 MiB per TiB of unique data at 4 MiB chunks). Called by the repository.
"""

from __future__ import annotations

import os

from cargohold.backup import format as fmt
from cargohold.backup.keys import RepoKeys
from cargohold.backup.targets import Target

PREFIX = "index/"


def new_index_name() -> str:
    return f"{PREFIX}{os.urandom(16).hex()}"


def write_index(
    target: Target, keys: RepoKeys, entries: dict[bytes, fmt.Location], name: str | None = None
) -> str:
    name = name or new_index_name()
    target.put(name, keys.seal(fmt.KIND_INDEX, name, fmt.encode_index(entries)))
    return name


def read_index(target: Target, keys: RepoKeys, name: str) -> dict[bytes, fmt.Location]:
    return fmt.decode_index(keys.open(fmt.KIND_INDEX, name, target.get(name)), name)
