"""Generates the CSI gRPC stubs (``cargohold/csi/_gen/``) from the vendored ``proto/csi.proto``.

Run by ``scripts/setup.sh`` and the Dockerfile: ``python -m cargohold.csi.gen``. Idempotent:
does nothing when the stubs were made from the same proto file by the same grpcio-tools
(a stamp file records both). The stubs are not checked in (see .gitignore).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "_gen"
PROTO = HERE.parent.parent / "proto" / "csi.proto"
STAMP = OUT / ".stamp"


def _fingerprint() -> str:
    import grpc_tools

    tools = getattr(grpc_tools, "__version__", "") or _dist_version("grpcio-tools")
    return hashlib.sha256(PROTO.read_bytes() + tools.encode()).hexdigest()


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def generate(force: bool = False) -> bool:
    """Generate the stubs unless they are current. True if it generated them."""
    from grpc_tools import protoc

    if not PROTO.exists():
        raise SystemExit(f"cargohold.csi.gen: {PROTO} is missing")
    want = _fingerprint()
    if not force and STAMP.exists() and STAMP.read_text().strip() == want:
        return False
    OUT.mkdir(exist_ok=True)
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO.parent}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("cargohold.csi.gen: protoc failed on " + str(PROTO))
    # the generated service module imports its messages as a top-level module
    grpc_mod = OUT / "csi_pb2_grpc.py"
    text = grpc_mod.read_text().replace(
        "import csi_pb2 as csi__pb2", "from cargohold.csi._gen import csi_pb2 as csi__pb2"
    )
    grpc_mod.write_text(text)
    (OUT / "__init__.py").write_text('"""Generated from proto/csi.proto; do not edit."""\n')
    tmp = STAMP.with_suffix(".tmp")
    tmp.write_text(want + "\n")
    os.replace(tmp, STAMP)
    return True


def main() -> None:
    made = generate(force="--force" in sys.argv[1:])
    print(f"csi stubs {'generated in' if made else 'up to date in'} {OUT}")


if __name__ == "__main__":
    main()
