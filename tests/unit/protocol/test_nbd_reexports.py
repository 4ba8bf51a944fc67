"""``cargohold.protocol.nbd`` stays the one place to import NBD names from, though the codec
lives in four modules by role (nbd_wire, nbd_events, nbd_handshake, nbd): every name callers
imported before the split (#15) is still there, and every public name of the wire vocabulary
and of the events is re-exported as the very same object."""

from __future__ import annotations

import types

from cargohold.protocol import nbd, nbd_events, nbd_handshake, nbd_wire

# The public names of cargohold/protocol/nbd.py before it was split (the codec's own; not
# what it happened to import, such as BLOCK_SIZE or struct).
BEFORE_THE_SPLIT = """
    Aborted BASE_ALLOCATION CMD_BLOCK_STATUS CMD_CACHE CMD_DISC CMD_FLAG_DF CMD_FLAG_FAST_ZERO
    CMD_FLAG_FUA CMD_FLAG_NO_HOLE CMD_FLAG_REQ_ONE CMD_FLUSH CMD_READ CMD_TRIM CMD_WRITE
    CMD_WRITE_ZEROES Disconnect EINVAL EIO ENOMEM ENOSPC ENOTSUP EOVERFLOW EPERM ESHUTDOWN Event
    Export FLAG_CAN_MULTI_CONN FLAG_C_FIXED_NEWSTYLE FLAG_C_NO_ZEROES FLAG_FIXED_NEWSTYLE
    FLAG_HAS_FLAGS FLAG_NO_ZEROES FLAG_READ_ONLY FLAG_ROTATIONAL FLAG_SEND_CACHE FLAG_SEND_DF
    FLAG_SEND_FAST_ZERO FLAG_SEND_FLUSH FLAG_SEND_FUA FLAG_SEND_RESIZE FLAG_SEND_TRIM
    FLAG_SEND_WRITE_ZEROES GROWABLE_CEILING GROWABLE_SUFFIX IHAVEOPT INFO_BLOCK_SIZE
    INFO_DESCRIPTION INFO_EXPORT INFO_NAME Invalid MAX_BLOCK_STATUS_EXTENTS MAX_ERROR_MESSAGE
    MAX_OPTIONS MAX_OPTION_BYTES MAX_STRING META_CONTEXT_ID NBDMAGIC OPT_ABORT OPT_EXPORT_NAME
    OPT_EXTENDED_HEADERS OPT_GO OPT_INFO OPT_LIST OPT_LIST_META_CONTEXT OPT_REPLY_MAGIC
    OPT_SET_META_CONTEXT OPT_STARTTLS OPT_STRUCTURED_REPLY REPLY_FLAG_DONE REPLY_TYPE_BLOCK_STATUS
    REPLY_TYPE_ERROR REPLY_TYPE_ERROR_OFFSET REPLY_TYPE_NONE REPLY_TYPE_OFFSET_DATA
    REPLY_TYPE_OFFSET_HOLE REP_ACK REP_ERR_BLOCK_SIZE_REQD REP_ERR_INVALID REP_ERR_PLATFORM
    REP_ERR_POLICY REP_ERR_SHUTDOWN REP_ERR_TLS_REQD REP_ERR_TOO_BIG REP_ERR_UNKNOWN REP_ERR_UNSUP
    REP_INFO REP_META_CONTEXT REP_SERVER REQUEST REQUEST_MAGIC Ready Request SIMPLE_REPLY_MAGIC
    STATE_HOLE STATE_ZERO STRUCTURED_REPLY_MAGIC ServerConnection StartTLS command_name wire_errno
""".split()


def _public(module: types.ModuleType) -> dict[str, object]:
    """The names ``module`` defines itself: not private, not the modules, classes and
    functions it imports, not ``from __future__ import annotations``."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_")
        and name != "annotations"
        and not isinstance(value, types.ModuleType)
        and not (
            isinstance(value, type | types.FunctionType) and value.__module__ != module.__name__
        )
    }


def test_every_name_of_the_old_module_is_still_exported() -> None:
    assert len(BEFORE_THE_SPLIT) == 100
    missing = sorted(set(BEFORE_THE_SPLIT) - set(nbd.__all__))
    assert not missing, f"no longer exported by cargohold.protocol.nbd: {missing}"


def test_all_names_only_what_the_module_has() -> None:
    assert len(nbd.__all__) == len(set(nbd.__all__))
    absent = [name for name in nbd.__all__ if not hasattr(nbd, name)]
    assert not absent, f"in __all__ but not in the module: {absent}"


def test_the_wire_vocabulary_and_the_events_are_re_exported_as_the_same_objects() -> None:
    for module in (nbd_wire, nbd_events):
        names = _public(module)
        assert names, module.__name__
        not_exported = sorted(set(names) - set(nbd.__all__))
        assert not not_exported, f"{module.__name__} names not re-exported: {not_exported}"
        for name, value in names.items():
            assert getattr(nbd, name) is value, name
    assert nbd.Export is nbd_handshake.Export
    assert issubclass(nbd.ServerConnection, nbd_handshake.ServerHandshake)


def test_the_helper_sees_only_names_a_module_defines() -> None:
    wire = _public(nbd_wire)
    assert {"OPT_GO", "REQUEST", "command_name", "wire_errno"} <= set(wire)
    assert not {"struct", "_ERRNO_TO_WIRE", "annotations"} & set(wire)
    events = {"Ready", "Aborted", "StartTLS", "Request", "Invalid", "Disconnect", "Event"}
    assert set(_public(nbd_events)) == events
    assert "RemoteProtocolError" not in _public(nbd_handshake)
