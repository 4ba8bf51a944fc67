"""The NBD server codec (cargohold.protocol.nbd): every option path, request validation,
reply encodings, and fuzzing: random bytes only ever raise ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.errors import ProtocolError, RemoteProtocolError
from cargohold.protocol import nbd

SIZE = 1 << 20


def opt(option: int, body: bytes = b"") -> bytes:
    return struct.pack(">QII", nbd.IHAVEOPT, option, len(body)) + body


def info_body(name: str = "", requests: tuple[int, ...] = ()) -> bytes:
    n = name.encode()
    return (
        struct.pack(">I", len(n)) + n + struct.pack(f">H{len(requests)}H", len(requests), *requests)
    )


def meta_body(name: str = "", queries: tuple[str, ...] = ()) -> bytes:
    n = name.encode()
    out = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q.encode()
    return out


def replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """Option replies -> (option, type, payload), checking the framing."""
    out, pos = [], 0
    while pos < len(data):
        magic, option, rtype, length = struct.unpack_from(">QIII", data, pos)
        assert magic == nbd.OPT_REPLY_MAGIC
        out.append((option, rtype, data[pos + 20 : pos + 20 + length]))
        pos += 20 + length
    assert pos == len(data)
    return out


def request(cmd: int, offset: int = 0, length: int = 0, flags: int = 0, handle: int = 7) -> bytes:
    return struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, flags, cmd, handle, offset, length)


def connect(export: nbd.Export | None = None, cflags: int = 3, size: int = SIZE):
    c = nbd.ServerConnection(export or nbd.Export(name="vol"), lambda: size)
    magic, ihaveopt, hflags = struct.unpack(">QQH", c.greeting())
    assert (magic, ihaveopt) == (nbd.NBDMAGIC, nbd.IHAVEOPT)
    assert hflags == nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES
    assert c.feed(struct.pack(">I", cflags)) == []
    return c


def go(c, structured=True, meta=True, sizes=True, name="vol") -> nbd.Ready:
    data = b""
    if structured:
        data += opt(nbd.OPT_STRUCTURED_REPLY)
    if meta:
        data += opt(nbd.OPT_SET_META_CONTEXT, meta_body(name, ("base:allocation",)))
    reqs = (nbd.INFO_BLOCK_SIZE,) if sizes else ()
    events = c.feed(data + opt(nbd.OPT_GO, info_body(name, reqs)))
    assert isinstance(events[-1], nbd.Ready)
    c.data_to_send()
    return events[-1]


# --- handshake ------------------------------------------------------------------------------


def test_export_name_with_and_without_zeroes():
    for cflags, tail in ((3, 0), (1, 124)):
        c = connect(cflags=cflags)
        events = c.feed(opt(nbd.OPT_EXPORT_NAME, b"vol"))
        assert isinstance(events[0], nbd.Ready) and not events[0].block_sizes
        out = c.data_to_send()
        assert len(out) == 10 + tail
        size, flags = struct.unpack_from(">QH", out)
        assert size == SIZE and flags == events[0].flags
        assert flags & nbd.FLAG_HAS_FLAGS and not flags & nbd.FLAG_READ_ONLY
        assert not flags & nbd.FLAG_ROTATIONAL and not flags & nbd.FLAG_SEND_DF
        assert out[10:] == bytes(tail)


def test_export_name_unknown_hangs_up():
    c = connect()
    with pytest.raises(RemoteProtocolError):
        c.feed(opt(nbd.OPT_EXPORT_NAME, b"other"))


def test_default_export_name_is_accepted():
    c = connect()
    assert isinstance(c.feed(opt(nbd.OPT_EXPORT_NAME))[0], nbd.Ready)


@pytest.mark.parametrize("bad", [4, 1 << 31, 0xFFFFFFFC])
def test_unknown_client_flags_hang_up(bad):
    c = nbd.ServerConnection(nbd.Export(), lambda: SIZE)
    with pytest.raises(RemoteProtocolError):
        c.feed(struct.pack(">I", bad))


def test_go_replies_info_then_ack_and_enters_transmission():
    c = connect(nbd.Export(name="vol", description="a volume"))
    reqs = (nbd.INFO_NAME, nbd.INFO_DESCRIPTION, nbd.INFO_BLOCK_SIZE, 999)
    events = c.feed(opt(nbd.OPT_GO, info_body("vol", reqs)))
    assert events == [nbd.Ready(False, 0, True, events[0].flags)]
    rs = replies(c.data_to_send())
    assert all(o == nbd.OPT_GO for o, _, _ in rs)
    assert [t for _, t, _ in rs] == [nbd.REP_INFO] * 4 + [nbd.REP_ACK]
    infos = {struct.unpack_from(">H", p)[0]: p[2:] for _, _, p in rs[:-1]}
    assert struct.unpack(">QH", infos[nbd.INFO_EXPORT]) == (SIZE, events[0].flags)
    assert infos[nbd.INFO_NAME] == b"vol"
    assert infos[nbd.INFO_DESCRIPTION] == b"a volume"
    assert struct.unpack(">III", infos[nbd.INFO_BLOCK_SIZE]) == (4096, 4096, 32 << 20)


def test_go_without_block_size_request_advertises_minimum_one():
    c = connect()
    events = c.feed(opt(nbd.OPT_GO, info_body("")))
    assert not events[0].block_sizes
    rs = replies(c.data_to_send())
    bs = [p for _, t, p in rs if t == nbd.REP_INFO and p[:2] == b"\0\3"]
    assert struct.unpack(">III", bs[0][2:]) == (1, 4096, 32 << 20)


def test_info_does_not_end_haggling_and_errors_are_recoverable():
    c = connect()
    data = (
        opt(nbd.OPT_INFO, info_body("vol"))
        + opt(nbd.OPT_INFO, info_body("nope"))
        + opt(nbd.OPT_GO, b"\0\0\0\5ab")  # truncated
        + opt(nbd.OPT_GO, info_body("vol", (1,)) + b"x")  # trailing garbage
        + opt(nbd.OPT_LIST)
        + opt(nbd.OPT_LIST, b"x")
        + opt(nbd.OPT_STARTTLS)
        + opt(nbd.OPT_EXTENDED_HEADERS)
        + opt(4242, b"whatever")
        + opt(nbd.OPT_STRUCTURED_REPLY, b"x")
        + opt(nbd.OPT_LIST_META_CONTEXT, meta_body("vol"))  # before structured replies
    )
    assert c.feed(data) == []
    types = [(o, t) for o, t, _ in replies(c.data_to_send())]
    assert types == [
        (nbd.OPT_INFO, nbd.REP_INFO),
        (nbd.OPT_INFO, nbd.REP_INFO),
        (nbd.OPT_INFO, nbd.REP_ACK),
        (nbd.OPT_INFO, nbd.REP_ERR_UNKNOWN),
        (nbd.OPT_GO, nbd.REP_ERR_INVALID),
        (nbd.OPT_GO, nbd.REP_ERR_INVALID),
        (nbd.OPT_LIST, nbd.REP_SERVER),
        (nbd.OPT_LIST, nbd.REP_ACK),
        (nbd.OPT_LIST, nbd.REP_ERR_INVALID),
        (nbd.OPT_STARTTLS, nbd.REP_ERR_POLICY),  # a local endpoint: no TLS here
        (nbd.OPT_EXTENDED_HEADERS, nbd.REP_ERR_UNSUP),
        (4242, nbd.REP_ERR_UNSUP),
        (nbd.OPT_STRUCTURED_REPLY, nbd.REP_ERR_INVALID),
        (nbd.OPT_LIST_META_CONTEXT, nbd.REP_ERR_INVALID),
    ]
    assert c.state == "options"
    assert isinstance(c.feed(opt(nbd.OPT_GO, info_body("vol")))[0], nbd.Ready)


def test_list_names_the_export():
    c = connect()
    c.feed(opt(nbd.OPT_LIST))
    (_, t, p), _ = replies(c.data_to_send())
    assert t == nbd.REP_SERVER and p == b"\0\0\0\3vol"


def test_abort_acks_and_stops_reading():
    c = connect()
    assert c.feed(opt(nbd.OPT_ABORT)) == [nbd.Aborted()]
    assert replies(c.data_to_send()) == [(nbd.OPT_ABORT, nbd.REP_ACK, b"")]
    assert c.feed(b"anything at all") == []


def test_meta_contexts_list_and_set():
    c = connect()
    c.feed(opt(nbd.OPT_STRUCTURED_REPLY))
    c.feed(opt(nbd.OPT_LIST_META_CONTEXT, meta_body("vol")))
    c.feed(opt(nbd.OPT_LIST_META_CONTEXT, meta_body("vol", ("base:",))))
    c.feed(opt(nbd.OPT_LIST_META_CONTEXT, meta_body("vol", ("qemu:dirty-bitmap:x",))))
    c.feed(opt(nbd.OPT_SET_META_CONTEXT, meta_body("nope", ("base:allocation",))))
    c.feed(opt(nbd.OPT_SET_META_CONTEXT, meta_body("vol", ("x-y:z", "base:allocation"))))
    c.feed(opt(nbd.OPT_SET_META_CONTEXT, meta_body("vol", ("base:allocation",))[:-3]))
    rs = replies(c.data_to_send())
    ctx = b"\0\0\0\0base:allocation"
    assert rs == [
        (nbd.OPT_STRUCTURED_REPLY, nbd.REP_ACK, b""),
        (nbd.OPT_LIST_META_CONTEXT, nbd.REP_META_CONTEXT, ctx),
        (nbd.OPT_LIST_META_CONTEXT, nbd.REP_ACK, b""),
        (nbd.OPT_LIST_META_CONTEXT, nbd.REP_META_CONTEXT, ctx),
        (nbd.OPT_LIST_META_CONTEXT, nbd.REP_ACK, b""),
        (nbd.OPT_LIST_META_CONTEXT, nbd.REP_ACK, b""),
        (nbd.OPT_SET_META_CONTEXT, nbd.REP_ERR_UNKNOWN, b"no export named 'nope'"),
        (nbd.OPT_SET_META_CONTEXT, nbd.REP_META_CONTEXT, b"\0\0\0\1base:allocation"),
        (nbd.OPT_SET_META_CONTEXT, nbd.REP_ACK, b""),
        (nbd.OPT_SET_META_CONTEXT, nbd.REP_ERR_INVALID, b"malformed meta context request"),
    ]
    ready = c.feed(opt(nbd.OPT_GO, info_body("vol")))[0]
    assert ready.structured and ready.meta_context == nbd.META_CONTEXT_ID
    assert ready.flags & nbd.FLAG_SEND_DF


def test_set_meta_context_with_no_query_selects_nothing():
    c = connect()
    ready = go(c, meta=False)
    assert ready.meta_context == 0
    (ev,) = c.feed(request(nbd.CMD_BLOCK_STATUS, 0, 4096))
    assert isinstance(ev, nbd.Invalid) and ev.errno == nbd.EINVAL


def test_read_only_export_flags():
    c = connect(nbd.Export(read_only=True, multi_conn=False))
    ready = go(c, name="")
    f = ready.flags
    assert f & nbd.FLAG_READ_ONLY and not f & nbd.FLAG_CAN_MULTI_CONN
    assert not f & (nbd.FLAG_SEND_TRIM | nbd.FLAG_SEND_WRITE_ZEROES | nbd.FLAG_SEND_FAST_ZERO)
    for cmd, payload in (
        (nbd.CMD_WRITE, bytes(4096)),
        (nbd.CMD_TRIM, b""),
        (nbd.CMD_WRITE_ZEROES, b""),
    ):
        (ev,) = c.feed(request(cmd, 0, 4096) + payload)
        assert isinstance(ev, nbd.Invalid) and ev.errno == nbd.EPERM
    (ev,) = c.feed(request(nbd.CMD_READ, 0, 4096))
    assert isinstance(ev, nbd.Request)


@pytest.mark.parametrize("junk", [b"\0" * 16, struct.pack(">QII", 1, 1, 0)])
def test_bad_option_magic_hangs_up(junk):
    c = connect()
    with pytest.raises(RemoteProtocolError):
        c.feed(junk)


def test_oversized_option_hangs_up():
    c = connect()
    with pytest.raises(RemoteProtocolError):
        c.feed(struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, nbd.MAX_OPTION_BYTES + 1))


def test_endless_options_hang_up():
    c = connect()
    with pytest.raises(RemoteProtocolError):
        c.feed(opt(4242) * (nbd.MAX_OPTIONS + 1))


def test_handshake_split_byte_by_byte():
    c = nbd.ServerConnection(nbd.Export(name="vol"), lambda: SIZE)
    data = (
        struct.pack(">I", 3)
        + opt(nbd.OPT_STRUCTURED_REPLY)
        + opt(nbd.OPT_GO, info_body("vol", (3,)))
        + request(nbd.CMD_READ, 4096, 4096)
    )
    events = []
    for i in range(len(data)):
        events += c.feed(data[i : i + 1])
    assert isinstance(events[0], nbd.Ready)
    assert events[1] == nbd.Request(nbd.CMD_READ, 0, 7, 4096, 4096, None)


# --- transmission -----------------------------------------------------------------------------


def test_pipelined_requests_and_zero_copy_write_payloads():
    c = connect()
    go(c)
    data = bytes(range(256)) * 16
    stream = (
        request(nbd.CMD_WRITE, 8192, 4096, nbd.CMD_FLAG_FUA, handle=1)
        + data
        + request(nbd.CMD_READ, 0, 8192, handle=2)
        + request(nbd.CMD_FLUSH, handle=3)
        + request(nbd.CMD_TRIM, 0, 4096, handle=4)
        + request(nbd.CMD_WRITE_ZEROES, 0, 8192, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO, 5)
        + request(nbd.CMD_BLOCK_STATUS, 0, SIZE, nbd.CMD_FLAG_REQ_ONE, handle=6)
        + request(nbd.CMD_CACHE, 0, 4096, handle=8)
        + request(nbd.CMD_READ, 0, 4096, nbd.CMD_FLAG_DF, handle=9)
        + request(nbd.CMD_DISC)
        + b"ignored after DISC"
    )
    events = c.feed(stream)
    assert [type(e) for e in events] == [nbd.Request] * 8 + [nbd.Disconnect]
    w = events[0]
    assert (w.cmd, w.flags, w.handle, w.offset, w.length) == (1, 1, 1, 8192, 4096)
    assert isinstance(w.data, memoryview) and w.data == data
    assert [e.handle for e in events[:8]] == [1, 2, 3, 4, 5, 6, 8, 9]
    assert c.feed(request(nbd.CMD_READ, 0, 4096)) == []


def test_write_payload_split_across_many_chunks():
    c = connect()
    go(c)
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = request(nbd.CMD_WRITE, 0, len(payload)) + payload + request(nbd.CMD_FLUSH, handle=9)
    events = []
    for i in range(0, len(stream), 1000):
        events += c.feed(stream[i : i + 1000])
    assert len(events) == 2 and bytes(events[0].data) == payload and events[1].handle == 9


@pytest.mark.parametrize(
    ("cmd", "offset", "length", "flags", "errno"),
    [
        (nbd.CMD_READ, SIZE - 4096, 8192, 0, nbd.EINVAL),  # beyond the end
        (nbd.CMD_WRITE, SIZE, 4096, 0, nbd.ENOSPC),
        (nbd.CMD_TRIM, SIZE - 4096, 8192, 0, nbd.ENOSPC),
        (nbd.CMD_WRITE_ZEROES, 2**64 - 4096, 4096, 0, nbd.ENOSPC),
        (nbd.CMD_BLOCK_STATUS, SIZE, 4096, 0, nbd.EINVAL),
        (nbd.CMD_CACHE, SIZE, 4096, 0, nbd.EINVAL),
        (nbd.CMD_READ, 0, 0, 0, nbd.EINVAL),  # zero length
        (nbd.CMD_READ, 0, (32 << 20) + 4096, 0, nbd.EOVERFLOW),
        (nbd.CMD_READ, 512, 4096, 0, nbd.EINVAL),  # unaligned after negotiating sizes
        (nbd.CMD_WRITE, 0, 1000, 0, nbd.EINVAL),
        (nbd.CMD_READ, 0, 4096, nbd.CMD_FLAG_REQ_ONE, nbd.EINVAL),  # flag of another command
        (nbd.CMD_WRITE, 0, 4096, nbd.CMD_FLAG_NO_HOLE, nbd.EINVAL),
        (nbd.CMD_READ, 0, 4096, 1 << 9, nbd.EINVAL),  # unknown flag
        (nbd.CMD_FLUSH, 0, 4096, 0, nbd.EINVAL),  # FLUSH with a length
        (9, 0, 4096, 0, nbd.EINVAL),  # unknown command
        (nbd.CMD_READ + 100, 0, 0, 0, nbd.EINVAL),
    ],
)
def test_invalid_requests_get_the_spec_errno(cmd, offset, length, flags, errno):
    c = connect()
    go(c)
    payload = bytes(length) if cmd == nbd.CMD_WRITE else b""
    (ev,) = c.feed(request(cmd, offset, length, flags) + payload)
    assert isinstance(ev, nbd.Invalid), ev
    assert ev.errno == errno and ev.handle == 7 and ev.message
    # the connection goes on
    (ok,) = c.feed(request(nbd.CMD_READ, 0, 4096, handle=8))
    assert isinstance(ok, nbd.Request) and ok.handle == 8


def test_unaligned_requests_are_valid_without_negotiated_sizes():
    c = connect()
    go(c, sizes=False)
    (ev,) = c.feed(request(nbd.CMD_WRITE, 100, 333) + bytes(333))
    assert isinstance(ev, nbd.Request) and ev.length == 333


def test_df_needs_structured_replies():
    c = connect()
    go(c, structured=False, meta=False)
    (ev,) = c.feed(request(nbd.CMD_READ, 0, 4096, nbd.CMD_FLAG_DF))
    assert isinstance(ev, nbd.Invalid) and ev.errno == nbd.EINVAL


def test_oversized_write_and_bad_magic_hang_up():
    c = connect()
    go(c)
    with pytest.raises(RemoteProtocolError):
        c.feed(request(nbd.CMD_WRITE, 0, (32 << 20) + 1))
    c = connect()
    go(c)
    with pytest.raises(RemoteProtocolError):
        c.feed(b"\x25\x60\x95\x14" + bytes(24))


def test_size_is_asked_live():
    size = [8192]
    c = nbd.ServerConnection(nbd.Export(), lambda: size[0])
    c.feed(struct.pack(">I", 3))
    go(c, name="")
    assert isinstance(c.feed(request(nbd.CMD_READ, 8192, 4096))[0], nbd.Invalid)
    size[0] = 16384  # grown online
    assert isinstance(c.feed(request(nbd.CMD_READ, 8192, 4096))[0], nbd.Request)


# --- replies -------------------------------------------------------------------------------


def test_simple_replies():
    c = connect()
    go(c, structured=False, meta=False)
    assert b"".join(c.reply_ok(5)) == struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, 0, 5)
    hdr, data = c.reply_read(6, 0, memoryview(b"abc"))
    assert hdr == struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, 0, 6) and data == b"abc"
    (err,) = c.reply_error(7, 28, "full")  # ENOSPC, no message in simple replies
    assert err == struct.pack(">IIQ", nbd.SIMPLE_REPLY_MAGIC, nbd.ENOSPC, 7)
    (err,) = c.reply_error(7, 30, "read-only fs")  # EROFS -> EPERM
    assert struct.unpack(">IIQ", err)[1] == nbd.EPERM
    assert struct.unpack(">IIQ", c.reply_error(7, 12345)[0])[1] == nbd.EIO


def test_structured_replies():
    c = connect()
    go(c)
    hdr, _ = c.reply_read(6, 4096, b"x" * 10)
    assert struct.unpack(">IHHQIQ", hdr) == (
        nbd.STRUCTURED_REPLY_MAGIC,
        nbd.REPLY_FLAG_DONE,
        nbd.REPLY_TYPE_OFFSET_DATA,
        6,
        18,
        4096,
    )
    (err,) = c.reply_error(7, 22, "bad range")
    _, flags, rtype, handle, length = struct.unpack_from(">IHHQI", err)
    assert (rtype, flags, handle, length) == (nbd.REPLY_TYPE_ERROR, 1, 7, 6 + 9)
    assert struct.unpack_from(">IH", err, 20) == (nbd.EINVAL, 9) and err[26:] == b"bad range"
    (err,) = c.reply_error(7, 5, "m", offset=8192)
    assert struct.unpack_from(">HH", err, 4) == (1, nbd.REPLY_TYPE_ERROR_OFFSET)
    assert struct.unpack_from(">IHsQ", err, 20) == (nbd.EIO, 1, b"m", 8192)
    (bs,) = c.reply_block_status(8, [(4096, 0), (8192, 3)])
    assert struct.unpack(">IHHQIIIIII", bs) == (
        nbd.STRUCTURED_REPLY_MAGIC,
        1,
        nbd.REPLY_TYPE_BLOCK_STATUS,
        8,
        20,
        nbd.META_CONTEXT_ID,
        4096,
        0,
        8192,
        3,
    )
    with pytest.raises(ValueError):
        c.reply_block_status(8, [])


# --- fuzz ----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_fuzz_handshake_random_bytes_only_raise_protocol_errors(data, step):
    c = nbd.ServerConnection(nbd.Export(name="vol"), lambda: SIZE)
    try:
        for i in range(0, len(data), step):
            c.feed(data[i : i + step])
            c.data_to_send()
    except ProtocolError:
        pass


_OPTS = st.sampled_from([*range(13), 4242, 2**31])
_BODIES = st.one_of(
    st.binary(max_size=64),
    st.builds(
        info_body,
        st.sampled_from(["", "vol", "x"]),
        st.lists(st.integers(0, 5), max_size=4).map(tuple),
    ),
    st.builds(
        meta_body,
        st.sampled_from(["", "vol", "x"]),
        st.lists(st.sampled_from(["base:", "base:allocation", "", "x:y"]), max_size=3).map(tuple),
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_OPTS, _BODIES), max_size=12), st.booleans())
def test_fuzz_option_sequences_are_answered_in_order(options, no_zeroes):
    """Well-framed options in any order: each gets a final reply, or haggling ends."""
    c = nbd.ServerConnection(nbd.Export(name="vol"), lambda: SIZE)
    c.feed(struct.pack(">I", 1 | (2 if no_zeroes else 0)))
    for o, body in options:
        try:
            events = c.feed(opt(o, body))
        except RemoteProtocolError:
            assert o == nbd.OPT_EXPORT_NAME
            return
        out = c.data_to_send()
        if events:
            assert isinstance(events[0], nbd.Ready | nbd.Aborted)
            return
        rs = replies(out)
        assert rs and all(r[0] == o for r in rs)
        final = rs[-1][1]
        assert final == nbd.REP_ACK or final & 2**31


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=700), st.booleans())
def test_fuzz_transmission_random_bytes_only_raise_protocol_errors(data, step, sizes):
    c = connect()
    go(c, sizes=sizes)
    try:
        for i in range(0, len(data), step):
            for ev in c.feed(data[i : i + step]):
                assert isinstance(ev, nbd.Request | nbd.Invalid | nbd.Disconnect)
    except ProtocolError:
        pass


_REQS = st.tuples(
    st.sampled_from([0, 1, 3, 4, 5, 6, 7, 8, 100]),
    st.integers(0, 2**64 - 1) | st.sampled_from([0, 4096, SIZE - 4096, SIZE]),
    st.sampled_from([0, 1, 512, 4096, 8192, SIZE, 2**32 - 1]),
    st.integers(0, 31),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_REQS, max_size=20), st.booleans(), st.integers(1, 4096))
def test_fuzz_valid_frames_round_trip(reqs, sizes, step):
    """Well-framed requests come back one event each, in order, with their fields; a valid
    request respects every bound the codec promises the shell."""
    c = connect()
    go(c, sizes=sizes)
    stream = b""
    expect = []
    for i, (cmd, offset, length, flags) in enumerate(reqs):
        if cmd == nbd.CMD_WRITE:
            length = min(length, 65536)
            stream += request(cmd, offset, length, flags, handle=i) + bytes(length)
        else:
            stream += request(cmd, offset, length, flags, handle=i)
        expect.append((cmd, i, offset, length, flags))
    events = []
    for i in range(0, len(stream), step):
        events += c.feed(stream[i : i + step])
    assert [(e.cmd, e.handle, e.offset, e.length, e.flags) for e in events] == expect
    for e in events:
        if isinstance(e, nbd.Request) and e.cmd != nbd.CMD_FLUSH:
            assert 0 < e.length and e.offset + e.length <= SIZE
            if sizes:
                assert e.offset % 4096 == 0 and e.length % 4096 == 0
            if e.cmd == nbd.CMD_WRITE:
                assert len(e.data) == e.length
        if isinstance(e, nbd.Invalid):
            assert e.errno in (nbd.EINVAL, nbd.ENOSPC, nbd.EOVERFLOW, nbd.EPERM)


def test_receiving_in_place_gives_what_feeding_gives():
    payloads = [bytes([i]) * n for i, n in enumerate((4096, 1 << 20, 65536, 8192, 73 * 4096))]
    stream = b""
    for h, p in enumerate(payloads):
        stream += request(nbd.CMD_WRITE, 0, len(p), handle=h) + p
        stream += request(nbd.CMD_READ, 0, 4096, handle=100 + h)
    for step in (1, 777, 4096, 65536, 1 << 20):
        c = connect()
        ready = go(c)
        assert ready.structured
        got, pos = [], 0
        while pos < len(stream):
            buf = c.get_buffer()
            n = min(len(buf), step, len(stream) - pos)
            buf[:n] = stream[pos : pos + n]
            pos += n
            got += c.buffer_updated(n)
        writes = [e for e in got if e.cmd == nbd.CMD_WRITE]
        assert [bytes(e.data) for e in writes] == payloads, step
        assert [e.handle for e in got] == [x for h in range(5) for x in (h, 100 + h)]


def test_the_handshake_can_be_received_in_place_too():
    c = nbd.ServerConnection(nbd.Export(name="vol"), lambda: SIZE)
    c.greeting()
    data = (
        struct.pack(">I", 3) + opt(nbd.OPT_GO, info_body("vol")) + request(nbd.CMD_FLUSH, handle=5)
    )
    events = []
    for i in range(len(data)):  # one byte at a time
        buf = c.get_buffer()
        buf[:1] = data[i : i + 1]
        events += c.buffer_updated(1)
    assert isinstance(events[0], nbd.Ready) and events[1].handle == 5
