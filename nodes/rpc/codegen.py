"""Regenerate the checked-in protobuf and gRPC code of ``proto/`` into ``nodes/rpc/pb/``.

    python -m nodes.rpc.codegen          # regenerate
    python -m nodes.rpc.codegen --check  # exit 1, naming the files, if the checked-in code is stale

Needs grpcio-tools (a test extra). protoc writes ``from mmusim.v2 import x_pb2``; the import
is rewritten to ``nodes.rpc.pb`` because ``proto/`` is not a Python package (the import name
``proto`` belongs to proto-plus) and the descriptors keep their ``mmusim/v2/...`` file names.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "mmusim" / "v2"  # the package mmusim.v2
OUT_DIR = Path(__file__).resolve().parent / "pb"
_PROTOC_IMPORT = "from mmusim.v2 import "
_OUR_IMPORT = "from nodes.rpc.pb import "


def generate() -> dict[str, bytes]:
    """The generated files (name -> contents) for every .proto under proto/mmusim/v2."""
    from grpc_tools import protoc  # a test extra; imported here so the package never needs it

    sources = sorted(PROTO_DIR.glob("*.proto"))
    if not sources:
        raise SystemExit(f"codegen: no .proto files under {PROTO_DIR}")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", f"--pyi_out={tmp}"]
        args += [str(p.relative_to(PROTO_ROOT)) for p in sources]
        if protoc.main(args) != 0:
            raise SystemExit(f"codegen: protoc failed on {', '.join(p.name for p in sources)}")
        out: dict[str, bytes] = {}
        for f in sorted((Path(tmp) / PROTO_DIR.relative_to(PROTO_ROOT)).iterdir()):
            out[f.name] = f.read_text().replace(_PROTOC_IMPORT, _OUR_IMPORT).encode()
        return out


def stale(generated: dict[str, bytes]) -> list[str]:
    """Files in ``nodes/rpc/pb/`` that differ from ``generated``, are missing, or are extra."""
    have = {p.name for p in OUT_DIR.iterdir() if p.is_file() and p.name != "__init__.py"}
    names = sorted(have | set(generated))
    return [n for n in names if n not in generated or n not in have or (OUT_DIR / n).read_bytes() != generated[n]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodes.rpc.codegen", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the checked-in code is current")
    args = ap.parse_args(argv)
    generated = generate()
    if args.check:
        bad = stale(generated)
        if bad:
            print(f"nodes/rpc/pb is stale ({', '.join(bad)}): run python -m nodes.rpc.codegen", file=sys.stderr)
            return 1
        print(f"nodes/rpc/pb is current ({len(generated)} files)")
        return 0
    for name in stale(generated):
        target = OUT_DIR / name
        if name in generated:
            target.write_bytes(generated[name])
        else:
            target.unlink()
        print(f"wrote {target.relative_to(ROOT)}" if name in generated else f"removed {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
