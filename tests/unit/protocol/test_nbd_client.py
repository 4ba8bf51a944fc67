"""The NBD client codec (cargohold.protocol.nbd_client): the handshake and every request
kind against our server codec (round trips), the reply forms a server may choose (simple,
structured with holes and split chunks, errors), the fallback to EXPORT_NAME, refusals,
and fuzzing: whatever a server sends, the codec only ever raises ProtocolError (or the
refusal errors of the handshake)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cargohold.errors import NotFound, ProtocolError, RemoteProtocolError, RequestError
from cargohold.protocol import nbd
from cargohold.protocol import nbd_client as nc

SIZE = 1 << 20


def handshake(
    structured: bool = True, name: str = "vol", export: nbd.Export | None = None
) -> tuple[nc.ClientConnection, nbd.ServerConnection, nc.Ready]:
    """Pump bytes between a client and our server codec until both are transmitting."""
    server = nbd.ServerConnection(export or nbd.Export(name="vol"), lambda: SIZE)
    client = nc.ClientConnection(name, structured)
    events = client.feed(server.greeting())
    ready = None
    for _ in range(10):
        out = client.data_to_send()
        if not out:
            break
        server_events = server.feed(out)
        assert all(isinstance(e, nbd.Ready) for e in server_events)
        events += client.feed(server.data_to_send())
    ready = next(e for e in events if isinstance(e, nc.Ready))
    return client, server, ready


def serve(client: nc.ClientConnection, server: nbd.ServerConnection, bufs: list, store: bytearray):
    """Let the server codec decode the request bytes and answer them from ``store``."""
    replies = []
    for ev in server.feed(b"".join(bytes(b) for b in bufs)):
        if isinstance(ev, nbd.Request):
            if ev.cmd == nbd.CMD_READ:
                replies += server.reply_read(
                    ev.handle, ev.offset, store[ev.offset : ev.offset + ev.length]
                )
            elif ev.cmd == nbd.CMD_WRITE:
                assert ev.data is not None
                store[ev.offset : ev.offset + ev.length] = ev.data
                replies += server.reply_ok(ev.handle)
            else:
                replies += server.reply_ok(ev.handle)
        elif isinstance(ev, nbd.Invalid):
            replies += server.reply_error(ev.handle, ev.errno, ev.message)
    return b"".join(bytes(r) for r in replies)


@pytest.mark.parametrize("structured", [True, False])
def test_handshake_with_our_server(structured):
    client, server, ready = handshake(structured)
    assert ready.size == SIZE and ready.structured is structured
    assert ready.can_flush and ready.can_fua and ready.multi_conn and not ready.read_only
    assert ready.min_block == 4096 and ready.max_block == 32 << 20  # asked for block sizes
    assert server.block_sizes and server.structured is structured
    assert client.data_to_send() == b""


@pytest.mark.parametrize("structured", [True, False])
def test_write_flush_read_round_trip(structured):
    client, server, _ = handshake(structured)
    store = bytearray(SIZE)
    payload = bytes(range(256)) * 32  # 8 KiB
    h1, b1 = client.write(4096, payload, fua=True)
    h2, b2 = client.flush()
    h3, b3 = client.read(0, 16384)
    # pipelined: all three sent before any reply
    out = serve(client, server, b1 + b2 + b3, store)
    events = client.feed(out)
    assert [(e.handle, e.cmd, e.error) for e in events] == [
        (h1, nbd.CMD_WRITE, 0),
        (h2, nbd.CMD_FLUSH, 0),
        (h3, nbd.CMD_READ, 0),
    ]
    assert bytes(events[2].data) == bytes(4096) + payload + bytes(4096)
    assert client.in_flight == {}


def test_replies_split_anywhere_decode_the_same():
    client, server, _ = handshake()
    store = bytearray(SIZE)
    store[:8192] = b"\xab" * 8192
    h, bufs = client.read(0, 8192)
    out = serve(client, server, bufs, store)
    events = []
    for i in range(len(out)):
        events += client.feed(out[i : i + 1])
    assert len(events) == 1 and events[0].handle == h and bytes(events[0].data) == b"\xab" * 8192


def test_error_replies_structured_and_simple():
    for structured in (True, False):
        client, server, _ = handshake(structured)
        h, bufs = client.read(SIZE - 4096, 4096)
        out = b"".join(server.reply_error(h, 5, "disk on fire"))
        client._pending(h)  # it is in flight
        server.feed(b"".join(bytes(b) for b in bufs))
        (ev,) = client.feed(out)
        assert ev.error == nbd.EIO and ev.data is None
        assert ev.message == ("disk on fire" if structured else "")


def test_a_request_the_server_rejects_is_an_error_reply():
    client, server, _ = handshake()
    client.ready = nc.Ready(SIZE * 2, client.ready.flags, True, 4096)  # pretend it is bigger
    h, bufs = client.write(SIZE, b"x" * 4096)
    (ev,) = client.feed(serve(client, server, bufs, bytearray(SIZE)))
    assert ev.handle == h and ev.error == nbd.ENOSPC


def chunk(flags: int, rtype: int, handle: int, body: bytes) -> bytes:
    return struct.pack(">IHHQI", nbd.STRUCTURED_REPLY_MAGIC, flags, rtype, handle, len(body)) + body


def test_structured_read_in_pieces_with_a_hole_and_a_final_none():
    client, _, _ = handshake()
    h, _ = client.read(8192, 12288)
    out = (
        chunk(0, nbd.REPLY_TYPE_OFFSET_DATA, h, struct.pack(">Q", 16384) + b"c" * 4096)
        + chunk(0, nbd.REPLY_TYPE_OFFSET_HOLE, h, struct.pack(">QI", 12288, 4096))
        + chunk(0, nbd.REPLY_TYPE_OFFSET_DATA, h, struct.pack(">Q", 8192) + b"a" * 4096)
    )
    assert client.feed(out) == []
    (ev,) = client.feed(chunk(nbd.REPLY_FLAG_DONE, nbd.REPLY_TYPE_NONE, h, b""))
    assert bytes(ev.data) == b"a" * 4096 + bytes(4096) + b"c" * 4096


def test_an_error_chunk_among_data_chunks_fails_the_read():
    client, _, _ = handshake()
    h, _ = client.read(0, 8192)
    err = struct.pack(">IH", nbd.EIO, 3) + b"bad" + struct.pack(">Q", 4096)
    out = chunk(0, nbd.REPLY_TYPE_OFFSET_DATA, h, struct.pack(">Q", 0) + b"a" * 4096)
    out += chunk(nbd.REPLY_FLAG_DONE, nbd.REPLY_TYPE_ERROR_OFFSET, h, err)
    (ev,) = client.feed(out)
    assert ev.error == nbd.EIO and ev.message == "bad" and ev.data is None


@pytest.mark.parametrize(
    "bad",
    [
        struct.pack(">IIQ", 0xDEADBEEF, 0, 1),  # bad magic
        struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, 0, 99),  # a handle not in flight
        chunk(1, nbd.REPLY_TYPE_OFFSET_DATA, 1, struct.pack(">Q", 1 << 19) + b"x"),  # outside
        chunk(1, 77, 1, b""),  # unknown non-error type
        chunk(1, nbd.REPLY_TYPE_ERROR, 1, struct.pack(">IH", 0, 0)),  # error 0
        chunk(1, nbd.REPLY_TYPE_OFFSET_HOLE, 1, b"short"),
        chunk(1, nbd.REPLY_TYPE_NONE, 1, b"x" * 70000),  # oversized metadata chunk
    ],
)
def test_protocol_violations_by_the_server(bad):
    client, _, _ = handshake()
    client.read(0, 4096)  # handle 1
    with pytest.raises(RemoteProtocolError):
        client.feed(bad)


def test_simple_read_reply_after_structured_is_a_violation():
    client, _, _ = handshake()
    h, _ = client.read(0, 4096)
    with pytest.raises(RemoteProtocolError):
        client.feed(struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, 0, h) + bytes(4096))


def opt_reply(option: int, rtype: int, body: bytes = b"") -> bytes:
    return struct.pack(">QIII", nbd.OPT_REPLY_MAGIC, option, rtype, len(body)) + body


def test_unknown_export_name_is_not_found():
    with pytest.raises(NotFound):
        handshake(name="nope")


def test_fallback_to_export_name_when_go_is_unsupported():
    client = nc.ClientConnection("vol", structured=False)
    greeting = struct.pack(">QQH", nbd.NBDMAGIC, nbd.IHAVEOPT, nbd.FLAG_FIXED_NEWSTYLE)
    assert client.feed(greeting) == []
    sent = client.data_to_send()
    assert struct.unpack_from(">I", sent)[0] == nbd.FLAG_C_FIXED_NEWSTYLE  # no NO_ZEROES
    assert struct.unpack_from(">QI", sent, 4)[1] == nbd.OPT_GO
    assert client.feed(opt_reply(nbd.OPT_GO, nbd.REP_ERR_UNSUP)) == []
    sent = client.data_to_send()
    assert struct.unpack_from(">QII", sent) == (nbd.IHAVEOPT, nbd.OPT_EXPORT_NAME, 3)
    (ready,) = client.feed(struct.pack(">QH", 12345 * 4096, 0b1101) + bytes(124))
    assert ready.size == 12345 * 4096 and ready.flags == 0b1101 and not ready.structured


def test_structured_refused_then_go():
    client = nc.ClientConnection("")
    greeting = struct.pack(
        ">QQH", nbd.NBDMAGIC, nbd.IHAVEOPT, nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES
    )
    client.feed(greeting)
    client.data_to_send()
    client.feed(opt_reply(nbd.OPT_STRUCTURED_REPLY, nbd.REP_ERR_UNSUP, b"no"))
    assert struct.unpack_from(">QI", client.data_to_send())[1] == nbd.OPT_GO
    info = struct.pack(">HQH", nbd.INFO_EXPORT, 1 << 30, 1)
    (ready,) = client.feed(opt_reply(nbd.OPT_GO, nbd.REP_INFO, info) + opt_reply(nbd.OPT_GO, 1))
    assert ready.size == 1 << 30 and not ready.structured and ready.min_block == 1


@pytest.mark.parametrize(
    "greeting",
    [
        struct.pack(">QQH", 0, nbd.IHAVEOPT, 1),
        struct.pack(">QQH", nbd.NBDMAGIC, 0x00420281861253, 1),  # oldstyle
        struct.pack(">QQH", nbd.NBDMAGIC, nbd.IHAVEOPT, 0),  # not fixed newstyle
    ],
)
def test_bad_greetings(greeting):
    with pytest.raises(RemoteProtocolError):
        nc.ClientConnection("").feed(greeting)


def test_requests_before_the_handshake_or_out_of_range_are_local_errors():
    from cargohold.errors import LocalProtocolError

    with pytest.raises(LocalProtocolError):
        nc.ClientConnection("").read(0, 4096)
    client, _, _ = handshake()
    with pytest.raises(LocalProtocolError):
        client.read(SIZE - 4096, 8192)
    with pytest.raises(LocalProtocolError):
        client.write(-1, b"x")
    with pytest.raises(LocalProtocolError):  # we asked for block sizes: 4 KiB aligned
        client.write(512, bytes(4096))


# --- fuzzing ----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.lists(st.integers(1, 64), max_size=8))
def test_fuzz_reply_decoding_only_raises_protocol_errors(data, cuts):
    client, _, _ = handshake()
    client.read(0, 4096)
    client.write(0, b"x" * 4096)
    client.flush()
    pos = 0
    try:
        for n in [*cuts, len(data)]:
            for ev in client.feed(data[pos : pos + n]):
                assert isinstance(ev, nc.Reply)
            pos += n
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda h, f, t, body: chunk(f, t, h, body),
                st.integers(1, 4),
                st.integers(0, 1),
                st.sampled_from([0, 1, 2, 5, 32769, 32770, 32800, 9]),
                st.binary(max_size=40),
            ),
            st.builds(
                lambda h, e: struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, e, h),
                st.integers(1, 4),
                st.integers(0, 5),
            ),
        ),
        max_size=6,
    )
)
def test_fuzz_well_framed_replies(frames):
    client, _, _ = handshake()
    client.ready = nc.Ready(SIZE, client.ready.flags, True)  # min block 1: any length
    client.read(0, 4096)
    client.read(4096, 16)
    client.write(0, b"x")
    client.flush()
    try:
        for f in frames:
            for ev in client.feed(f):
                assert isinstance(ev, nc.Reply)
                if ev.cmd == nbd.CMD_READ and not ev.error:
                    assert ev.data is not None and len(ev.data) in (4096, 16)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_handshake(data):
    client = nc.ClientConnection("vol")
    greeting = struct.pack(
        ">QQH", nbd.NBDMAGIC, nbd.IHAVEOPT, nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES
    )
    try:
        client.feed(greeting + data)
    except (ProtocolError, RequestError):
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(0, 255), st.integers(0, 4))
def test_round_trip_writes_through_our_server(blocks, seed, where):
    client, server, _ = handshake(structured=bool(where % 2))
    store = bytearray(SIZE)
    data = bytes((seed + i) % 251 for i in range(blocks * 4096))
    _, wb = client.write(where * 4096, data)
    _, rb = client.read(where * 4096, len(data))
    events = client.feed(serve(client, server, wb + rb, store))
    assert [e.error for e in events] == [0, 0]
    assert bytes(events[1].data) == data
