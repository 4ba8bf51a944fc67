"""cargohold — replicated, thin-provisioned block storage for Kubernetes.

The package layout is a picture of the architecture (see docs/architecture.md):

- ``protocol``  sans-I/O codecs for every wire and stream format (no sockets here)
- ``store``     the replica store: one replica of one volume on one node's disk
- ``replica``   the replica server (one per node) and its asyncio client
- ``cli``       the ``cargohold`` command
- ``audit``     the storage-pattern auditor for Kubernetes manifests

``errors``, ``constants`` and ``settings`` sit at the bottom and are imported by all.
"""

__version__ = "0.1.0"
