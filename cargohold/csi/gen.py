"""Generates the CSI gRPC stubs (``cargohold/csi/_gen/``) from the vendored ``proto/csi.proto``.

The stubs are checked in, so an installed cargohold (a wheel, the image) serves
``cargohold csi`` without grpcio-tools, which only this generator needs (it is a dev
dependency). After changing ``proto/csi.proto`` or the pinned grpcio-tools, run
``.venv/bin/python -m cargohold.csi.gen`` and commit ``cargohold/csi/_gen``;
``tests/unit/csi/test_stubs.py`` regenerates them into a temporary directory and fails
while the checked-in ones differ. ``python -m cargohold.csi.gen DIR`` writes into DIR.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "_gen"
PROTO = HERE.parent.parent / "proto" / "csi.proto"
FILES = ("__init__.py", "csi_pb2.py", "csi_pb2_grpc.py")


def generate(out: Path = OUT) -> Path:
    """Write the stubs into ``out`` (made if missing); returns it."""
    from grpc_tools import protoc

    if not PROTO.exists():
        raise SystemExit(f"cargohold.csi.gen: {PROTO} is missing (a source checkout has it)")
    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO.parent}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("cargohold.csi.gen: protoc failed on " + str(PROTO))
    # the generated service module imports its messages as a top-level module
    grpc_mod = out / "csi_pb2_grpc.py"
    text = grpc_mod.read_text().replace(
        "import csi_pb2 as csi__pb2", "from cargohold.csi._gen import csi_pb2 as csi__pb2"
    )
    grpc_mod.write_text(text)
    (out / "__init__.py").write_text(
        '"""Generated from proto/csi.proto by `python -m cargohold.csi.gen`; do not edit."""\n'
    )
    (out / ".stamp").unlink(missing_ok=True)  # what older generators left
    return out


def main() -> None:
    out = generate(Path(sys.argv[1]) if sys.argv[1:] else OUT)
    print(f"csi stubs generated in {out}")


if __name__ == "__main__":
    main()
