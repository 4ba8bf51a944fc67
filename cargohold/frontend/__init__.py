"""The frontends of a volume: how a consumer reaches a block device.

- ``device``       the BlockDevice contract every frontend serves (the engine keeps it)
- ``nbd_server``   the NBD server: listening, connection limits and eviction, ``serve``
- ``nbd_connection``   one client: the asyncio shell around ``protocol.nbd``, the option
  phase (handshake), flow control and reply batching
- ``nbd_transmission`` the transmission phase: what each NBD command does to the device
- ``local_device`` a BlockDevice on one in-process replica store (1 replica, no network)
"""
