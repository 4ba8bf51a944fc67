"""The controller's record of where each volume is published, and how: node → readonly
and capability. The manager knows one thing, the node the engine is attached to; CSI
needs more:

- ControllerPublish repeated for a node with another readonly flag or capability is
  ALREADY_EXISTS (the spec's "published but incompatible"), which needs what was asked.
- A MULTI_NODE_READER_ONLY volume is published on several nodes at once, all reading
  through the one engine; ControllerUnpublish on one of them (the engine's node too)
  must not cut the others off. The engine stops when the last publication goes.

One JSON file per volume in ``DIR`` (written atomically), or in memory (``dir=None``, the
twin for tests). The controller serializes calls per volume (``locks.VolumeLocks``).
If the record is lost (the controller's pod moved), external-attacher's reconciliation
(LIST_VOLUMES_PUBLISHED_NODES: ListVolumes lacks a node its VolumeAttachment names)
publishes again and so rebuilds it. Called by controller.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict, dataclass

from cargohold.errors import CargoholdError


@dataclass(frozen=True)
class Publication:
    readonly: bool
    access_mode: int
    access_type: str  # "mount" | "block"


class Publications:
    def __init__(self, dir: str | None = None) -> None:
        self.dir = dir
        self._mem: dict[str, dict[str, Publication]] = {}
        self._mu = threading.Lock()
        if dir:
            os.makedirs(dir, exist_ok=True)

    def _path(self, volume: str) -> str:
        assert self.dir
        return os.path.join(self.dir, f"{volume}.json")

    def get(self, volume: str) -> dict[str, Publication]:
        if not self.dir:
            with self._mu:
                return dict(self._mem.get(volume, {}))
        try:
            with open(self._path(volume)) as f:
                raw = json.load(f)
            return {node: Publication(**p) for node, p in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as e:
            raise CargoholdError(f"the publication record of {volume} is bad: {e}") from None

    def _put(self, volume: str, pubs: dict[str, Publication]) -> None:
        if not self.dir:
            with self._mu:
                if pubs:
                    self._mem[volume] = dict(pubs)
                else:
                    self._mem.pop(volume, None)
            return
        path = self._path(volume)
        if not pubs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({n: asdict(p) for n, p in pubs.items()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def add(self, volume: str, node: str, pub: Publication, only: bool = False) -> None:
        """Record ``node``; with ``only`` it becomes the volume's sole publication."""
        pubs = {} if only else self.get(volume)
        pubs[node] = pub
        self._put(volume, pubs)

    def remove(self, volume: str, node: str) -> bool:
        """Forget ``node``'s publication; whether there was one."""
        pubs = self.get(volume)
        had = pubs.pop(node, None) is not None
        if had:
            self._put(volume, pubs)
        return had

    def forget(self, volume: str) -> None:
        self._put(volume, {})

    def volumes_on(self, node: str) -> set[str]:
        """The volumes recorded as published on ``node`` (the attach limit counts them)."""
        if not self.dir:
            with self._mu:
                return {v for v, pubs in self._mem.items() if node in pubs}
        out = set()
        for name in os.listdir(self.dir):
            if name.endswith(".json") and node in self.get(name[: -len(".json")]):
                out.add(name[: -len(".json")])
        return out
