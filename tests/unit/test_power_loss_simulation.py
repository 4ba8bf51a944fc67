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


def test_a_coherent_crash_takes_each_data_page_with_its_records_page(tmp_path):
    """``coherent``: data page 1 + b comes from the image the map page holding record b
    came from (records of 256 blocks per page, after a 4 KiB header)."""
    d, live = tmp_path / "d", tmp_path / "l"
    d.mkdir()
    live.mkdir()
    nblocks = 1024  # 4 record pages
    (d / "layer-000001.map").write_bytes(bytes(4096 * 5))
    (d / "layer-000001.data").write_bytes(bytes(4096 * (nblocks + 1)))
    (live / "layer-000001.map").write_bytes(b"\0" * 4096 + b"M" * 4096 * 4)
    (live / "layer-000001.data").write_bytes(b"\0" * 4096 + b"B" * 4096 * nblocks)
    x = crash(str(d), str(live), "seed", coherent=True)
    maps, data = x.choices["layer-000001.map"], x.choices["layer-000001.data"]
    assert set(maps.values()) == {DURABLE, LIVE}  # 4 draws: both images for this seed
    for b in range(nblocks):
        assert data[1 + b] == maps[1 + b // 256], b
    img = (live / "layer-000001.data").read_bytes()
    for b in range(nblocks):
        want = b"B" if maps[1 + b // 256] == LIVE else b"\0"
        assert img[4096 * (1 + b) : 4096 * (2 + b)] == want * 4096, b
