"""The replica store: one replica of one volume on one node's disk.

- ``base``         the contract every store keeps (ReplicaStore) and its value types
- ``format``       on-disk headers: encode, decode, check (no I/O)
- ``layer``        one layer of a replica: a sparse data file and an mmap'd block map
- ``file_store``   the real store, built from layers, crash-safe
- ``integrity``    settle a crash, scrub, repair
- ``flush_gate``   FLUSH in a thread, ordered after the flushes under way
- ``memory_store`` the in-memory twin with the same contract, for engine tests
"""
