"""Sans-I/O codecs for every wire and stream format. Bytes in, events out; no sockets here.

- ``replica_wire``   frames of the replica protocol (engine <-> replica server)
- ``extent_stream``  a range of a replica as a stream of allocated extents (rebuild, backup)
"""
