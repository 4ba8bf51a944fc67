"""The power-loss simulation of tests/support/power_loss.py (used by
tests/integration/test_power_loss.py), on plain files: deterministic per seed, differing
pages drawn from both images, the rest (and new files) left as they are."""

from __future__ import annotations

import random

from tests.support.power_loss import DURABLE, LIVE, crash


def test_the_crash_images_depend_on_the_seed_only(tmp_path):
    """The simulation itself: the same seed makes the same image from the same D and L;
    differing pages come from both; unchanged pages and new files stay as they are."""
    d, live = tmp_path / "d", tmp_path / "l"
    d.mkdir()
    live.mkdir()
    rnd = random.Random(0)
    base = rnd.randbytes(64 * 4096)
    changed = bytearray(base)
    for p in range(0, 64, 2):
        changed[p * 4096 : p * 4096 + 8] = b"CHANGED!"
    (d / "f").write_bytes(base)
    images = []
    for _ in range(2):
        (live / "f").write_bytes(bytes(changed) + b"\1" * 4096)  # grown by a page
        (live / "new").write_bytes(b"n")
        x = crash(str(d), str(live), "s")
        images.append(((live / "f").read_bytes(), x.choices))
    assert images[0] == images[1]
    img, choices = images[0]
    assert len(img) == 65 * 4096 and (live / "new").read_bytes() == b"n"
    assert set(choices["f"]) == set(range(0, 64, 2)) | {64}
    assert set(choices["f"].values()) == {DURABLE, LIVE}
    for p in range(65):
        page = img[p * 4096 : (p + 1) * 4096]
        src = choices["f"].get(p)
        want = (bytes(changed) + b"\1" * 4096) if src in (None, LIVE) else base + bytes(4096)
        assert page == want[p * 4096 : (p + 1) * 4096], p
