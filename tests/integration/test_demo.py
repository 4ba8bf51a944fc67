"""The README's first command keeps working: `cargohold demo` runs to the end."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.support.processes import ROOT


def _demo(tmp_path, *extra: str, status: int = 0, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cargohold", "demo", "--dir", str(tmp_path / "demo"), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT, COLUMNS="200", **env),
    )
    assert out.returncode == status, out.stdout + out.stderr
    return " ".join(out.stdout.split())  # rich wraps lines


@pytest.mark.root
@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="the cluster demo mounts a filesystem")
def test_the_main_job_runs_to_the_end(tmp_path):
    text = _demo(tmp_path)
    assert "placed by the scheduler: node-1, node-2, node-3" in text
    assert re.search(r"the manager says: degraded — .*node-3 ERR \(failed\)", text), text
    assert re.search(
        r"healthy again: node-1 RW \(running\), node-2 RW \(running\), "
        r"node-3 RW \(running\)",
        text,
    ), text
    assert "all 60 files intact; e2fsck: clean" in text
    gens = re.search(r"generations: \{'node-1': (\d+), 'node-2': (\d+), 'node-3': (\d+)\}", text)
    assert gens and len(set(gens.groups())) == 1, text
    # the backup story: a full backup, an incremental one, the cluster lost, a new one
    # imports both from the repository and restores the last: every file checked again
    full = re.search(r"backup (bk-demo-\S+): full .*?, read ([0-9.]+) MiB of the volume", text)
    incr = re.search(
        r"backup (bk-demo-\S+): (incremental|full) .*?, read ([0-9.]+) (MiB|KiB|B) of the volume",
        text[full.end() :] if full else "",
    )
    assert full and incr, text
    if incr.group(2) == "incremental":  # 20 files (~6 MiB) changed: not the 14+ MiB again
        assert incr.group(4) != "MiB" or float(incr.group(3)) < float(full.group(2)), text
    assert f"the repository's catalog lists 2 backups: {full.group(1)}, {incr.group(1)}" in text
    assert f"Restoring {incr.group(1)} into a new volume 'restored'" in text
    assert "all 60 files of the lost cluster intact in 'restored'; e2fsck: clean" in text
    assert not os.path.exists(tmp_path / "demo" / "cluster")  # deleted, as the story says
    assert not os.path.exists(tmp_path / "demo" / "cluster-2" / "cluster.json")  # it stopped
    assert (tmp_path / "demo" / "backup.key").stat().st_mode & 0o077 == 0  # the key: 0600


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs not installed")
def test_the_data_plane_demo_runs_to_the_end(tmp_path):
    text = _demo(tmp_path, "--engine-only")
    assert re.search(r"(\d+)/\1 files match their SHA-256", text), text
    assert "the volume is degraded: r1 RW, r2 ERR, r3 RW" in text
    assert "healthy: r1 RW, r2 RW, r3 RW" in text
    assert "the three replicas are identical" in text
    assert "repaired blocks 1" in text and "none bad" in text
    assert "Done:" in text


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs not installed")
def test_a_lesser_demo_says_so_and_exits_3(tmp_path):
    """`make demo` where the main job cannot run: the data-plane demo runs, says loudly at
    the start and at the end that it is not the main job, and exits 3, not 0."""
    text = _demo(tmp_path, status=3, CARGOHOLD_DEMO_NO_MOUNT="1")
    assert text.count("NOT THE MAIN JOB") == 2, text
    assert "The main job cannot run on this machine: CARGOHOLD_DEMO_NO_MOUNT is set" in text
    assert "This was the data-plane demo only" in text
    assert "Done:" in text  # the lesser demo itself passed


_REMOUNT = """
import os, subprocess, sys
from cargohold.cli.demo_steps import own_mount_namespace, run
img, mnt, private = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if private:
    own_mount_namespace()
loop = run("losetup", "-f", "--show", img).stdout.strip()
try:
    run("mount", loop, mnt)
    # someone copies the machine's mount namespace while the filesystem is mounted
    print("mounted", flush=True)
    sys.stdin.readline()
    run("umount", mnt)
    p = run("mount", "-o", "ro", loop, mnt, check=False)
    print("remount", p.returncode, p.stderr.strip(), flush=True)
    if p.returncode == 0:
        run("umount", mnt)
finally:
    run("losetup", "-d", loop, check=False)
"""


def _remount_while_copied(tmp_path, private: bool) -> str:
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir(parents=True)
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
    child = subprocess.Popen(
        [sys.executable, "-c", _REMOUNT, str(img), str(mnt), "1" if private else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    copy = None
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "mounted"
        # what `ip netns exec` or a container runtime does: a copy of the mount namespace
        copy = subprocess.Popen(["unshare", "-m", "sleep", "60"])
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{copy.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            assert time.monotonic() < deadline, "unshare did not start"
            time.sleep(0.01)
        child.stdin.write("\n")
        child.stdin.flush()
        return child.stdout.readline().strip()
    finally:
        if copy is not None:
            copy.kill()
            copy.wait()
        child.wait(30)


@pytest.mark.root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare missing")
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a filesystem")
def test_the_demos_mounts_cannot_be_pinned_by_another_namespace(tmp_path):
    """The demo's 1-in-6 flake: while its ext4 was mounted read-write, another test's
    `ip netns exec` copied the mount namespace; that copy kept the read-write superblock
    after the demo's umount, and its read-only remount failed with EBUSY ("already mounted
    or mount point busy"). In the demo's own mount namespace nobody can copy it."""
    pinned = _remount_while_copied(tmp_path / "a", private=False)
    assert pinned.startswith("remount 32") and "already mounted" in pinned, pinned
    assert _remount_while_copied(tmp_path / "b", private=True) == "remount 0"
