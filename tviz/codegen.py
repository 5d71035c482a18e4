"""Generate the Python gRPC code from proto/ into tviz/v1/ (the one codegen entry point).

`proto/tviz/v1/x.proto` (package tviz.v1) becomes `tviz/v1/x_pb2.py`, so the generated
imports (`from tviz.v1 import tensor_pb2`) resolve inside the installed package.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path = ROOT) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("tviz/v1/*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_DIR)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return protos


def main() -> None:
    protos = generate()
    print(f"generated tviz/v1 from {len(protos)} proto files", file=sys.stderr)


if __name__ == "__main__":
    main()
