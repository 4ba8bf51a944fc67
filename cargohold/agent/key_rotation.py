"""An encrypted volume's data keys on the agent's side (docs/keys.md): the keys the manager
hands out (POST /api/v1/volumes/{volume}/data-key: every generation the engine needs,
newest first), what this agent gave each engine, and the delivery of newer keys to a
RUNNING engine through its control socket (engine op ``data-keys``: the engine installs
them and rewrites every block under the newest in the background, its "sweep").

The manager's engine assignment says the volume's newest generation
(``data_key_generation``), whether a rotation runs (``rekey``) and how many generations
it keeps (``data_keys``: an engine holding more, its sweep done, gets the shorter list);
``Engines.converge``
asks ``push_due`` every heartbeat and runs ``push`` when it says so. An engine that does
not know the op yet (an older engine: "unknown op") is told again later, with one warning;
nothing here stops an engine or the agent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cargohold.encryption.block_cipher import MAX_KEYS
from cargohold.errors import CargoholdError, KeyRefused
from cargohold.keys.data_keys import DATA_KEY_BYTES

if TYPE_CHECKING:
    from cargohold.agent.engine_process import EngineProcess

log = logging.getLogger("cargohold.agent")

RETRY_UNKNOWN_OP = 60.0  # seconds before an engine that did not know the op is asked again
RETRY_FAILED = 10.0  # ... after another failure (the manager, the engine's refusal)
RETRY_SWEEP = 60.0  # ... after the engine reported its sweep failed
OP_TIMEOUT = 10.0


@dataclass(frozen=True, repr=False)
class FetchedKeys:
    """The clear data keys of one volume, newest first, from the manager (memory only)."""

    keys: tuple[bytes, ...]
    encryption_id: str
    generation: int  # the newest's

    def __repr__(self) -> str:  # never the bytes
        return f"FetchedKeys(<{len(self.keys)} keys>, generation {self.generation})"


def parse_answer(volume: str, got: Any) -> FetchedKeys:
    """The manager's data-key answer: ``keys`` (newest first) when it gives them, else the
    single ``data_key`` of a manager before data-key rotation (generation 1). KeyRefused
    when it is malformed."""
    try:
        eid = str(got["encryption_id"])
        entries = got.get("keys") or [
            {"generation": got.get("generation", 1), "data_key": got["data_key"]}
        ]
        keys = tuple(base64.b64decode(str(e["data_key"]), validate=True) for e in entries)
        generation = int(entries[0]["generation"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, binascii.Error):
        raise KeyRefused(f"the manager's answer for volume {volume}'s keys is malformed") from None
    if not 1 <= len(keys) <= MAX_KEYS or any(len(k) != DATA_KEY_BYTES for k in keys):
        raise KeyRefused(
            f"the manager's answer for volume {volume} holds {len(keys)} keys, not 1..{MAX_KEYS} "
            f"of {DATA_KEY_BYTES} bytes each"
        )
    return FetchedKeys(keys, eid, generation)


@dataclass
class EngineKeys:
    """What this agent gave one engine process (reset at each start)."""

    generation: int = 0  # the newest generation it has
    before: int = 0  # ... and the one it had before the last data-keys op
    given_at: float = 0.0  # when that op answered (monotonic): statuses asked later show it
    swept: int = 0  # the generation a sweep was asked for (data-keys op) in this process
    not_before: float = 0.0  # no push before then (monotonic): after a failure
    sweep_retry_at: float = 0.0  # a failed sweep is asked again from then (monotonic)
    warned: bool = False  # "unknown op" said once
    push: asyncio.Task[None] | None = None

    def started(self, generation: int) -> None:
        self.generation, self.before, self.given_at, self.swept = generation, generation, 0.0, 0
        self.not_before, self.sweep_retry_at, self.warned = 0.0, 0.0, False


def tagged(eng: EngineProcess, status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with its ``rekey`` naming the generation its keys[0] is (the manager
    ends a rotation only on "done" of its own generation): the newest this agent gave the
    engine, for a status asked after that op answered; the one before, for an older one."""
    rekey = status.get("rekey")
    if not isinstance(rekey, dict) or not eng.spec.encrypted:
        return status
    k = eng.keys
    gen = k.generation if eng.status_at >= k.given_at else k.before
    return {**status, "rekey": {**rekey, "generation": gen}}


def push_due(eng: EngineProcess) -> bool:
    """The running engine should get the volume's keys now (engine op ``data-keys``): the
    assignment names a newer generation than the one it has, or a rotation runs and this
    engine was not asked to sweep under it yet (or its sweep failed a while ago)."""
    s, k = eng.spec, eng.keys
    if not s.encrypted or not eng.takes_work or not eng.status or eng.key_source is None:
        return False
    if k.push is not None and not k.push.done():
        return False
    if time.monotonic() < k.not_before:
        return False
    if s.data_key_generation > k.generation:
        return True
    if s.rekey and s.data_key_generation and k.swept != s.data_key_generation:
        return True
    rekey = eng.status.get("rekey")
    if dropped_keys(eng):
        return True
    failed = isinstance(rekey, dict) and rekey.get("state") == "failed"
    retry = time.monotonic() >= k.sweep_retry_at
    return bool(s.rekey and failed and retry and not s.read_only)  # read-only: no rewrites


def dropped_keys(eng: EngineProcess) -> bool:
    """The volume keeps fewer generations than the running engine holds, and its sweep is
    done (every block under the newest key): the engine should get the shorter list, so
    the keys the manager destroyed leave its memory too, not only at its next start."""
    s, rekey = eng.spec, eng.status.get("rekey")
    if s.rekey or not s.data_keys or not isinstance(rekey, dict):
        return False
    held = rekey.get("keys")
    return (
        rekey.get("state") == "done"
        and isinstance(held, int)
        and not isinstance(held, bool)
        and held > s.data_keys
    )


async def push(eng: EngineProcess) -> None:
    """Fetch the volume's keys for this engine's epoch and give them to the running engine
    (op ``data-keys``, newest first): it seals with the newest and sweeps. Never raises."""
    k = eng.keys
    try:
        if eng.key_source is None:
            return
        got = await eng.key_source(eng.volume, eng.epoch)
        if got.encryption_id != eng.spec.encryption_id:
            raise KeyRefused(
                f"the manager's data keys for volume {eng.volume} are not for encryption id "
                f"{eng.spec.encryption_id} (got {got.encryption_id})"
            )
        request = {"op": "data-keys", "keys": [base64.b64encode(x).decode() for x in got.keys]}
        answer = await eng.link.call(request, timeout=OP_TIMEOUT)
        del request
    except CargoholdError as e:
        if "unknown op" in str(e):  # an engine before data-key rotation: not yet
            k.not_before = time.monotonic() + RETRY_UNKNOWN_OP
            if not k.warned:
                k.warned = True
                log.warning(
                    "volume %s: its engine does not take new data keys while it runs (%s); "
                    "asking again every %g s (a restart of the engine also gives them)",
                    eng.volume,
                    e,
                    RETRY_UNKNOWN_OP,
                )
            return
        k.not_before = time.monotonic() + RETRY_FAILED
        log.warning("volume %s: cannot give its engine the new data keys: %s", eng.volume, e)
        return
    except Exception:  # a bug here must not stop the agent
        k.not_before = time.monotonic() + RETRY_FAILED
        log.exception("volume %s: giving its engine the data keys failed", eng.volume)
        return
    fewer = got.generation == k.generation and not eng.spec.rekey
    k.before, k.generation = k.generation, got.generation
    k.swept, k.given_at = got.generation, time.monotonic()
    k.sweep_retry_at = time.monotonic() + RETRY_SWEEP  # a failed sweep: asked again then
    if isinstance(answer.get("rekey"), dict):
        eng.status = dict(eng.status, rekey=answer["rekey"])
        eng.status_at = time.monotonic()
    if fewer:
        log.info(
            "volume %s: engine given %d data key(s): the older generations were dropped",
            eng.volume,
            len(got.keys),
        )
        return
    eng.status_every = 0.0  # follow the sweep every heartbeat
    log.info(
        "volume %s: engine given %d data keys (newest generation %d): it rewrites every block",
        eng.volume,
        len(got.keys),
        got.generation,
    )
