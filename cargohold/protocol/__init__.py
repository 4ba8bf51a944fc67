"""Sans-I/O codecs for every wire and stream format. Bytes in, events out; no sockets here.

- ``replica_wire``   frames of the replica protocol (engine <-> replica server)
- ``extent_stream``  a range of a replica as a stream of allocated extents (rebuild, backup)
- ``nbd``            NBD, server side: ``ServerConnection`` (transmission phase, replies) and
                     every NBD name, re-exported from ``nbd_handshake`` (the option phase,
                     STARTTLS), ``nbd_events`` and ``nbd_wire`` (constants and structs)
- ``nbd_client``     NBD, client side (tests, benchmarks, ``cargohold verify``)
- ``framing``        ``StreamBuffer``: large payloads received straight into their buffer;
                     ``coalesce``: small frames joined into TLS-record-sized writes
"""
