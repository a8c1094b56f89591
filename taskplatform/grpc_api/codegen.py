"""Generate the gRPC modules from the ``.proto`` files under ``taskplatform/grpc_api`` (a
development tool: needs ``grpcio-tools`` from the dev extras).

    .venv/bin/python -m taskplatform.grpc_api.codegen            # write them beside the protos
    .venv/bin/python -m taskplatform.grpc_api.codegen --out DIR  # write them under DIR instead

The include root is the repository, so a module imports its siblings by their package path
(``from taskplatform.grpc_api.v1 import tasks_pb2``) and the generated files are checked in.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

#: The repository root: the include path the generated imports are relative to.
ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = Path(__file__).resolve().parent


def protos() -> list[Path]:
    """Every ``.proto`` of the gRPC API, relative to the repository root."""
    return sorted(p.relative_to(ROOT) for p in PROTO_DIR.rglob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every proto, writing under ``out``; the files written."""
    from grpc_tools import protoc  # a development dependency: not needed to serve

    well_known = resources.files("grpc_tools") / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p) for p in protos()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [out / name for name in generated_names()]


def generated_names() -> list[Path]:
    """What protoc writes for the protos, relative to its output directory."""
    names = []
    for proto in protos():
        stem = proto.with_suffix("")
        names += [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi"), Path(f"{stem}_pb2_grpc.py")]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the gRPC modules from the .proto files.")
    parser.add_argument("--out", type=Path, default=ROOT, help="where to write (default: beside the protos)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
