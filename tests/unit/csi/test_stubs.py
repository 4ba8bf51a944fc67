"""The CSI gRPC stubs are checked in (cargohold/csi/_gen), so an installed cargohold needs
no grpcio-tools: they must equal what ``python -m cargohold.csi.gen`` makes from
proto/csi.proto with the pinned grpcio-tools, and a wheel built from the repository must
carry them and serve ``cargohold csi`` with grpcio-tools out of reach."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from cargohold.csi import gen

ROOT = Path(__file__).resolve().parents[3]


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    fresh = gen.generate(tmp_path / "_gen")
    for name in gen.FILES:
        assert (fresh / name).read_bytes() == (gen.OUT / name).read_bytes(), (
            f"cargohold/csi/_gen/{name} differs from what proto/csi.proto gives: run "
            "`.venv/bin/python -m cargohold.csi.gen` and commit cargohold/csi/_gen"
        )
    assert sorted(p.name for p in gen.OUT.glob("*.py")) == sorted(gen.FILES)


def test_a_wheel_serves_cargohold_csi_without_grpcio_tools(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "cargohold", src / "cargohold", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip = [sys.executable, "-m", "pip"]
    run = dict(capture_output=True, text=True, timeout=240, cwd=tmp_path)
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
         str(src)], **run,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("cargohold-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {"cargohold/csi/_gen/csi_pb2.py", "cargohold/csi/_gen/csi_pb2_grpc.py"} <= names
    requires = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    runtime = [ln for ln in requires if "extra ==" not in ln]
    assert not [ln for ln in runtime if "grpcio-tools" in ln], runtime
    assert [ln for ln in runtime if "grpcio" in ln]

    # a fresh venv with the wheel; its dependencies from this venv's site-packages (no
    # index needed), with grpc_tools made unimportable
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    inst = subprocess.run([*pip, "--python", str(py), "install", "--no-deps", str(wheel)], **run)
    assert inst.returncode == 0, inst.stderr
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], **run
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (Path(site) / "sitecustomize.py").write_text(
        "import sys\nsys.modules['grpc_tools'] = None  # grpcio-tools is not installed\n"
    )
    helped = subprocess.run([str(venv / "bin" / "cargohold"), "csi", "--help"], **run)
    assert helped.returncode == 0, helped.stderr
    assert "--controller" in helped.stdout and "--max-volumes" in helped.stdout
    check = (
        "import cargohold, grpc\n"
        "from cargohold.csi import stubs\n"
        "try:\n    import grpc_tools\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('grpc_tools is importable')\n"
        "pb, pb_grpc = stubs()\n"
        "print(cargohold.__file__)\n"
        "print(pb.PluginCapability.Service.Type.Name(1), pb_grpc.IdentityServicer.__name__)\n"
    )
    out = subprocess.run([str(py), "-c", check], **run)
    assert out.returncode == 0, out.stderr
    where, names_line = out.stdout.splitlines()
    assert where.startswith(site), where  # the wheel's cargohold, not the checkout
    assert names_line == "CONTROLLER_SERVICE IdentityServicer"
