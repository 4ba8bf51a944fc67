"""The replica server (one per node) and its asyncio client.

- ``registry``  which replicas live on which of the node's disks; open/create/delete
- ``session``   one connection: decode requests, check the epoch, call the store, reply
- ``server``    the asyncio/uvloop listener (TCP and unix socket), worker processes
- ``client``    the engine's side: pipelined requests over one connection
"""
