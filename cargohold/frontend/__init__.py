"""The frontends of a volume: how a consumer reaches a block device.

- ``device``       the BlockDevice contract every frontend serves (the engine keeps it)
- ``nbd_server``   the NBD server: an asyncio shell around ``protocol.nbd``
- ``local_device`` a BlockDevice on one in-process replica store (1 replica, no network)
"""
