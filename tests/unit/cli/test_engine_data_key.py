"""``cargohold engine --data-key-fd N --encryption-key-id HEX32``: the engine's half of the
contract with the agent (docs/encryption.md): exactly 32 bytes from the descriptor, which
is closed; both options or neither; the agent's command line carries the descriptor's
number, never the key."""

from __future__ import annotations

import os

import pytest

from cargohold.agent.processes import engine_argv
from cargohold.cli.engine_cmd import parse_encryption, parser, read_data_key
from cargohold.engine.daemon import EngineRun
from cargohold.errors import ConfigError

KEY = bytes(range(200, 232))
VID = "00112233445566778899aabbccddeeff"


def pipe_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def args(*extra: str):  # type: ignore[no-untyped-def]
    return parser().parse_args(["--volume", "v", "--replica", "r@h:1", "--epoch", "1", *extra])


def test_the_key_is_read_from_the_descriptor_which_is_closed():
    r = pipe_with(KEY)
    key, vid = parse_encryption(args("--data-key-fd", str(r), "--encryption-key-id", VID))
    assert key == (KEY,) and vid == bytes.fromhex(VID) and closed(r)


def test_several_keys_newest_first_during_a_rotation():
    older = bytes(range(32))
    r = pipe_with(KEY + older)
    assert read_data_key(r) == (KEY, older) and closed(r)
    r = pipe_with(KEY * 9)  # more than MAX_KEYS
    with pytest.raises(ConfigError, match=r"1 to 8 keys\), got more than 256"):
        read_data_key(r)


def test_a_short_or_missing_key_is_refused():
    r = pipe_with(KEY[:31])
    with pytest.raises(ConfigError, match=r"exactly 32 bytes .* got 31"):
        read_data_key(r)
    assert closed(r)
    with pytest.raises(ConfigError, match="cannot read"):
        read_data_key(r)  # closed already: EBADF


def test_both_options_or_neither():
    assert parse_encryption(args()) == (None, None)
    with pytest.raises(ConfigError, match="go together"):
        parse_encryption(args("--encryption-key-id", VID))
    r = pipe_with(KEY)
    with pytest.raises(ConfigError, match="32 hex digits"):
        parse_encryption(args("--data-key-fd", str(r), "--encryption-key-id", "abc"))
    os.close(r)


def test_the_agent_passes_the_descriptor_number_and_the_key_never_shows():
    argv = engine_argv(
        "pvc-1", 3, ["r@h:1"], None, "127.0.0.1", 0, "/c", data_key_fd=7, encryption_key_id=VID
    )
    i = argv.index("--data-key-fd")
    assert argv[i + 1] == "7" and argv[argv.index("--encryption-key-id") + 1] == VID
    assert "--data-key-fd" not in engine_argv("pvc-1", 3, ["r@h:1"], None, "127.0.0.1", 0, "/c")
    run = EngineRun("v", [], 1, data_key=KEY, encryption_id=bytes(16))
    assert KEY.hex() not in repr(run) and repr(KEY) not in repr(run)
