"""Compile the protocol's .proto into Python (build time: needs grpcio-tools).

    python -m modelplex.grpc.codegen            # write the generated modules
    python -m modelplex.grpc.codegen --check    # exit 1 if they are missing or stale

The generated modules are never edited by hand and are not committed: the
.proto is the source. `--check` regenerates into a temporary directory and
compares, so a changed .proto with stale code fails the test suite.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding `modelplex/`
PROTO = Path("modelplex/grpc/protos/inference.proto")
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # build-time dependency only

    args = [
        "protoc",
        f"--proto_path={PACKAGE_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out_root / PROTO.parent / name for name in OUTPUTS]


def is_current() -> bool:
    """Whether the installed generated modules are what the .proto compiles to."""
    installed = [PACKAGE_ROOT / PROTO.parent / name for name in OUTPUTS]
    if not all(path.is_file() for path in installed):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return all(filecmp.cmp(a, b, shallow=False) for a, b in zip(installed, fresh, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        if not is_current():
            print(f"generated code is missing or stale: run python -m {__spec__.name}")
            sys.exit(1)
        return
    for path in generate(PACKAGE_ROOT):
        print(path)


if __name__ == "__main__":
    main()
