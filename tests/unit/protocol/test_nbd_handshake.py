"""NBD_OPT_STARTTLS in the server codec's option phase (cargohold.protocol.nbd_handshake): the
FORCEDTLS mode of a network endpoint. Before TLS nothing but STARTTLS and ABORT is served
(NBD_OPT_LIST and the empty export name included); after it, a denied peer gets
NBD_REP_ERR_POLICY."""

from __future__ import annotations

import struct

import pytest

from cargohold.errors import RemoteProtocolError
from cargohold.protocol import nbd
from tests.unit.protocol.test_nbd import SIZE, info_body, meta_body, opt, replies


def connect(tls_required: bool = True) -> nbd.ServerConnection:
    c = nbd.ServerConnection(nbd.Export(name="vol"), lambda: SIZE, tls_required=tls_required)
    c.greeting()
    assert c.feed(struct.pack(">I", 3)) == []
    return c


def upgraded(c: nbd.ServerConnection) -> nbd.ServerConnection:
    assert c.feed(opt(nbd.OPT_STARTTLS)) == [nbd.StartTLS()]
    assert replies(c.data_to_send()) == [(nbd.OPT_STARTTLS, nbd.REP_ACK, b"")]
    c.tls_started()
    return c


def test_before_tls_every_option_is_refused_and_nothing_is_revealed():
    c = connect()
    data = (
        opt(nbd.OPT_LIST)
        + opt(nbd.OPT_INFO, info_body(""))
        + opt(nbd.OPT_GO, info_body("vol"))
        + opt(nbd.OPT_GO, info_body(""))
        + opt(nbd.OPT_STRUCTURED_REPLY)
        + opt(nbd.OPT_LIST_META_CONTEXT, meta_body("vol"))
        + opt(4242, b"x")
    )
    assert c.feed(data) == []
    rs = replies(c.data_to_send())
    assert [t for _, t, _ in rs] == [nbd.REP_ERR_TLS_REQD] * 7
    assert not any(b"vol" in p for _, _, p in rs)  # not even the export's name
    assert not c.structured and c.state == "options"


def test_export_name_before_tls_hangs_up():
    for name in (b"", b"vol"):
        c = connect()
        with pytest.raises(RemoteProtocolError, match="requires TLS"):
            c.feed(opt(nbd.OPT_EXPORT_NAME, name))
        assert c.data_to_send() == b""  # no size, no flags


def test_abort_before_tls_is_acknowledged():
    c = connect()
    assert c.feed(opt(nbd.OPT_ABORT)) == [nbd.Aborted()]
    assert replies(c.data_to_send()) == [(nbd.OPT_ABORT, nbd.REP_ACK, b"")]


def test_starttls_then_options_are_served_over_tls():
    c = upgraded(connect())
    assert c.tls
    c.feed(opt(nbd.OPT_LIST))
    assert [t for _, t, _ in replies(c.data_to_send())] == [nbd.REP_SERVER, nbd.REP_ACK]
    events = c.feed(opt(nbd.OPT_STRUCTURED_REPLY) + opt(nbd.OPT_GO, info_body("")))
    assert isinstance(events[-1], nbd.Ready) and events[-1].structured


def test_export_name_after_tls_enters_transmission():
    c = upgraded(connect())
    assert isinstance(c.feed(opt(nbd.OPT_EXPORT_NAME, b"vol"))[0], nbd.Ready)


def test_second_starttls_and_starttls_with_data_are_invalid():
    c = connect()
    c.feed(opt(nbd.OPT_STARTTLS, b"x"))
    assert [t for _, t, _ in replies(c.data_to_send())] == [nbd.REP_ERR_INVALID]
    upgraded(c)
    c.feed(opt(nbd.OPT_STARTTLS))
    assert [t for _, t, _ in replies(c.data_to_send())] == [nbd.REP_ERR_INVALID]


def test_clear_text_bytes_after_starttls_hang_up():
    """An attacker on the path cannot inject options to be read as if sent over TLS."""
    c = connect()
    with pytest.raises(RemoteProtocolError, match="clear text"):
        c.feed(opt(nbd.OPT_STARTTLS) + opt(nbd.OPT_GO, info_body("vol")))
    c = connect()
    c.feed(opt(nbd.OPT_STARTTLS))
    with pytest.raises(RemoteProtocolError, match="clear text"):
        c.feed(opt(nbd.OPT_LIST))


def test_a_denied_peer_gets_policy_errors_and_no_export():
    c = upgraded(connect())
    c.deny("agent/node-2 may not use volume vol")
    c.feed(opt(nbd.OPT_LIST) + opt(nbd.OPT_GO, info_body("")) + opt(nbd.OPT_INFO, info_body("vol")))
    rs = replies(c.data_to_send())
    assert [t for _, t, _ in rs] == [nbd.REP_ERR_POLICY] * 3
    assert all(p == b"agent/node-2 may not use volume vol" for _, _, p in rs)
    with pytest.raises(RemoteProtocolError, match="refused"):
        c.feed(opt(nbd.OPT_EXPORT_NAME))
    c = upgraded(connect())
    c.deny("no")
    assert c.feed(opt(nbd.OPT_ABORT)) == [nbd.Aborted()]


def test_a_local_endpoint_refuses_starttls_and_serves_in_clear():
    c = connect(tls_required=False)
    assert c.feed(opt(nbd.OPT_STARTTLS)) == []
    assert [t for _, t, _ in replies(c.data_to_send())] == [nbd.REP_ERR_POLICY]
    assert isinstance(c.feed(opt(nbd.OPT_GO, info_body("")))[0], nbd.Ready)


def test_tls_started_out_of_turn_is_a_bug():
    with pytest.raises(RuntimeError):
        connect().tls_started()
