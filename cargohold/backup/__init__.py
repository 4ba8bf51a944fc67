"""Backups: an encrypted, deduplicated, verifiable repository of volume backups in an object
store or a directory (docs/formats/backup-repository.md). A library: it works offline, without
a cluster; the engine drives it for backup and restore operations, the CLI for verify.

Modules: targets (object stores), format (codecs), keys (crypto), chunk_map, packs, index,
catalog, leases, writer, reader, repository (the face), gc, verify.
"""
