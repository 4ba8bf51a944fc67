"""Fuzz the live server: random well-framed requests and random bytes. Whatever arrives,
each request gets a reply or the connection is closed, and the server serves on."""

from __future__ import annotations

import json
import socket

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from cargohold.constants import BLOCK_SIZE, MIB
from cargohold.protocol import replica_wire as wire
from cargohold.protocol.replica_wire import Op
from tests.support.processes import ServerProc

json_args = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.dictionaries(
        st.sampled_from(
            [
                "replica",
                "epoch",
                "size",
                "since",
                "name",
                "labels",
                "snapshot",
                "max_bytes",
                "disk",
                "version",
            ]
        ),
        st.one_of(
            st.integers(-5, 2**65),
            st.text(max_size=20),
            st.none(),
            st.booleans(),
            st.lists(st.integers(), max_size=3),
            st.just("fz"),
        ),
        max_size=4,
    ).map(lambda d: json.dumps(d).encode()),
)

frames = st.tuples(
    st.one_of(st.sampled_from(sorted(wire.OPS)), st.integers(0, 0xFFFF)),
    st.integers(0, 3),
    st.one_of(st.integers(0, 64).map(lambda b: b * BLOCK_SIZE), st.integers(0, 2**64 - 1)),
    st.one_of(st.sampled_from([0, BLOCK_SIZE, 8192]), st.integers(0, 2**32 - 1)),
    json_args,
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    s = ServerProc([str(d)]).start()
    sock = socket.create_connection(("127.0.0.1", s.port))
    for req in (
        wire.encode_request(
            Op.CREATE, 1, payload=wire.dump_json({"replica": "fz", "size": 4 * MIB})
        ),
    ):
        sock.sendall(b"".join(bytes(x) for x in req))
    sock.settimeout(10)
    sock.recv(4096)
    sock.close()
    yield s
    s.stop()


def _read_replies(sock: socket.socket, want: int) -> int:
    dec = wire.ReplyDecoder()
    got = 0
    while got < want:
        data = sock.recv(1 << 20)
        if not data:
            return -1  # closed by the server: allowed for a broken frame
        got += len(dec.feed(data))
    return got


@given(st.lists(frames, min_size=1, max_size=12))
@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_requests_never_take_the_server_down(fuzz_server, reqs):
    sock = socket.create_connection(("127.0.0.1", fuzz_server.port))
    sock.settimeout(20)
    try:
        blob = b"".join(
            bytes(b)
            for b in wire.encode_request(
                Op.OPEN, 1, payload=wire.dump_json({"replica": "fz", "epoch": 1})
            )
        )
        for i, (op, flags, off, length, payload) in enumerate(reqs, start=2):
            if op in (Op.WRITE, Op.REPAIR) and length <= 8192:
                payload = b"\x5a" * length
            blob += b"".join(
                bytes(b) for b in wire.encode_request(op, i, off, length, payload, flags)
            )
        sock.sendall(blob)
        got = _read_replies(sock, len(reqs) + 1)
        assert got in (-1, len(reqs) + 1)
    finally:
        sock.close()
    assert fuzz_server.alive()


@given(st.binary(min_size=1, max_size=2000))
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_bytes_close_the_connection_only(fuzz_server, blob):
    sock = socket.create_connection(("127.0.0.1", fuzz_server.port))
    sock.settimeout(5)
    try:
        sock.sendall(blob)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    assert fuzz_server.alive()
    # and a well-behaved client is still served
    s2 = socket.create_connection(("127.0.0.1", fuzz_server.port))
    s2.settimeout(10)
    s2.sendall(b"".join(bytes(b) for b in wire.encode_request(Op.HELLO, 1)))
    (reply,) = wire.ReplyDecoder().feed(s2.recv(4096))
    assert reply.status == 0
    s2.close()


def test_fuzzing_found_no_internal_errors(fuzz_server):
    """Every bad request above was answered as a bad request, never as a crash in a handler."""
    assert "Traceback" not in fuzz_server.output(), fuzz_server.output()[-3000:]
