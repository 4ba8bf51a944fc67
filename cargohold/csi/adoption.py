"""What a node plugin finds when it starts: the attachments its predecessor recorded (their
nbdfuse processes, loop devices and mounts outlive it; docs/upgrades.md), each checked by
``Attachment.adoption_problem``. Called once by ``cargohold.csi.node`` at start."""

from __future__ import annotations

import glob
import os

from cargohold.csi.mounter import Attachment, MountError


def adopt(state_dir: str) -> dict[str, str]:
    """The attachments a node plugin finds recorded in ``state_dir`` when it starts (its
    predecessor's: the nbdfuse processes, loop devices and mounts outlive it): volume ->
    "" for one taken over as it is, else why it is broken. Nothing is changed either way:
    the records stay, so NodeUnstageVolume tears every one down properly, and a broken one
    is reported abnormal (NodeGetVolumeStats) until it is unstaged and staged again."""
    found: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(state_dir), "*.json"))):
        volume = os.path.basename(path)[: -len(".json")]
        try:
            rec = Attachment.load(state_dir, volume)
        except MountError as e:
            found[volume] = str(e)
            continue
        if rec is not None:
            found[volume] = rec.adoption_problem()
    return found
