"""The proto's conventions, checked with buf (``buf.yaml``): ``buf lint`` with the STANDARD rules
is clean, and ``buf breaking`` finds nothing against the committed baseline image
(``proto/baseline/``), so a wire change that is not backward compatible has to be a new package
(proto/README.md). Both checks are also shown to fail, on a changed copy of the proto in a tmp
dir. buf comes from the ``buf-bin`` wheel, a test extra: the venv's own ``buf`` first (whatever
is on PATH), then PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from nodes.rpc import codec, codegen
from nodes.rpc.pb import interconnect_pb2 as pb
from nodes.rpc.server import OWNER_SERVICE_NAME, SECONDARY_SERVICE_NAME

ROOT = Path(__file__).resolve().parents[2]
PROTO = codegen.PROTO_DIR / "interconnect.proto"
BASELINE_DIR = ROOT / "proto" / "baseline"


def buf_executable() -> str:
    """The ``buf`` installed next to this interpreter (the venv's bin, wherever the venv is),
    else the one on PATH."""
    for name in ("buf", "buf.exe"):
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    found = shutil.which("buf")
    if found is None:
        pytest.fail(f"no buf executable beside {sys.executable} or on PATH: install the test extras "
                    "(pip install -e '.[test]', which brings buf-bin)")
    return found


def buf(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``buf *args`` run in ``cwd`` (a directory holding a buf.yaml), with its cache in ``cache``
    rather than under $HOME."""
    env = {**os.environ, "BUF_CACHE_DIR": str(cache)}
    return subprocess.run([buf_executable(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def output(r: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(r.args)} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def baseline() -> Path:
    """The one committed baseline image."""
    images = sorted(BASELINE_DIR.glob("*.binpb"))
    assert len(images) == 1, f"expected one baseline image in {BASELINE_DIR}, found {[p.name for p in images]}"
    return images[0]


def findings(r: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    """buf's ``--error-format=json`` findings, one JSON object a line."""
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def changed_copy(tmp_path: Path, old: str, new: str) -> Path:
    """buf.yaml and proto/ copied into ``tmp_path/repo``, with ``old`` replaced by ``new`` once."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "buf.yaml", repo / "buf.yaml")
    shutil.copytree(ROOT / "proto", repo / "proto", ignore=shutil.ignore_patterns("baseline"))
    copy = repo / PROTO.relative_to(ROOT)
    text = copy.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {PROTO}"
    copy.write_text(text.replace(old, new))
    return repo


def test_buf_lint_with_the_standard_rules_is_clean(tmp_path):
    r = buf(ROOT, tmp_path, "lint")
    assert r.returncode == 0 and not r.stdout.strip(), output(r)


def test_buf_breaking_finds_nothing_against_the_baseline_image(tmp_path):
    r = buf(ROOT, tmp_path, "breaking", "--against", str(baseline()))
    assert r.returncode == 0 and not r.stdout.strip(), output(r)


@pytest.mark.parametrize(
    ("old", "new", "rule", "named"),
    [
        # RegisterNotifierRequest.mm_id moved from field 5 to 9: an old peer's 5 is dropped
        ("  int64 mm_id = 5;\n", "  int64 mm_id = 9;\n", "FIELD_NO_DELETE", "mm_id"),
        # an RPC removed: an old peer's call is UNIMPLEMENTED (WIRE_JSON would not see it)
        ("  rpc TestYoung(TestYoungRequest) returns (TestYoungResponse);\n", "", "RPC_NO_DELETE", "TestYoung"),
    ],
    ids=["renumbered-field", "removed-rpc"],
)
def test_buf_breaking_flags_a_wire_change_in_a_copy_of_the_proto(tmp_path, old, new, rule, named):
    repo = changed_copy(tmp_path, old, new)
    r = buf(repo, tmp_path / "cache", "breaking", "--against", str(baseline()), "--error-format=json")
    assert r.returncode != 0, output(r)
    hits = [f for f in findings(r) if f["type"] == rule]
    assert hits and all(named in str(f["message"]) for f in hits), output(r)


def test_buf_breaking_lets_an_added_field_through_without_a_new_baseline(tmp_path):
    repo = changed_copy(tmp_path, "message ExitResponse {\n", "message ExitResponse {\n  int64 added = 2;\n")
    r = buf(repo, tmp_path / "cache", "breaking", "--against", str(baseline()))
    assert r.returncode == 0 and not r.stdout.strip(), output(r)


def test_buf_lint_flags_a_service_without_the_service_suffix_in_a_copy_of_the_proto(tmp_path):
    repo = changed_copy(tmp_path, "service OwnerService {", "service Owner {")
    r = buf(repo, tmp_path / "cache", "lint", "--error-format=json")
    assert r.returncode != 0, output(r)
    assert [(f["type"], f["message"]) for f in findings(r)] == [
        ("SERVICE_SUFFIX", 'Service name "Owner" should be suffixed with "Service".')], output(r)


def test_the_baseline_is_the_package_it_is_named_for_and_serves_what_the_server_names():
    image = descriptor_pb2.FileDescriptorSet.FromString(baseline().read_bytes())  # a buf image is one
    (proto,) = [f for f in image.file if f.name == PROTO.relative_to(codegen.PROTO_ROOT).as_posix()]
    assert baseline().stem == proto.package.replace(".", "-") == pb.DESCRIPTOR.package.replace(".", "-")
    in_baseline = sorted(f"{proto.package}.{s.name}" for s in proto.service)
    generated = sorted(s.full_name for s in pb.DESCRIPTOR.services_by_name.values())
    assert in_baseline == generated == sorted([OWNER_SERVICE_NAME, SECONDARY_SERVICE_NAME])


def test_the_codec_uses_each_rpcs_own_request_and_response_types():
    methods = {m.rpc: m for table in (codec.OWNER, codec.SECONDARY, codec.SECONDARY_METHODS) for m in table.values()}
    rpcs = [m for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]
    assert sorted(methods) == sorted(m.name for m in rpcs)
    for rpc in rpcs:
        m = methods[rpc.name]
        assert (m.request.DESCRIPTOR, m.reply.DESCRIPTOR) == (rpc.input_type, rpc.output_type), rpc.full_name
