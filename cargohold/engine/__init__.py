"""The volume engine: one per attached volume.

- ``replica_link`` one replica as the engine sees it: its connection, mode (RW/WO/ERR) and
  generation
- ``volume``       the block device the NBD frontend serves: fan-out of every mutation to
  the write set, reads from a current replica with checksum repair, failover, start-up
  from persisted generations, consistent snapshots
- ``rebuild``      online rebuild of a stale or new replica (delta from its generation)
- ``fanout``       the write fan-out: one mutation to every replica of the write set, the
  answers collected, failed replicas dropped, ``min_replicas`` enforced
- ``interface``    what the helpers see of a volume (``VolumeCore``: ``hold``, ``window``,
  ``readers``, ``check_usable``, ``spawn``, ...) and how the modules depend one way
"""
