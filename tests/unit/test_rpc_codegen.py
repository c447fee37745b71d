"""The generated code in nodes/rpc/pb matches proto/: regenerating changes nothing."""

from __future__ import annotations

import pytest

from nodes.rpc import codegen


def test_checked_in_generated_code_is_current(capsys):
    assert codegen.main(["--check"]) == 0, capsys.readouterr().err


def test_the_check_fails_and_names_the_file_when_a_proto_changes(tmp_path, monkeypatch):
    # a copy of proto/ with one field added: the checked-in code no longer matches it
    src = codegen.PROTO_DIR / "interconnect.proto"
    changed = tmp_path / codegen.PROTO_DIR.relative_to(codegen.PROTO_ROOT)
    changed.mkdir(parents=True)
    text = src.read_text().replace("message ExitResponse {", "message ExitResponse {\n  int64 added = 2;")
    assert "added" in text
    (changed / "interconnect.proto").write_text(text)
    monkeypatch.setattr(codegen, "PROTO_ROOT", tmp_path)
    monkeypatch.setattr(codegen, "PROTO_DIR", changed)
    bad = codegen.stale(codegen.generate())
    assert "interconnect_pb2.py" in bad and "interconnect_pb2.pyi" in bad


def test_generated_code_imports_from_nodes_rpc_pb_not_from_proto():
    text = (codegen.OUT_DIR / "interconnect_pb2_grpc.py").read_text()
    assert "from nodes.rpc.pb import interconnect_pb2" in text
    assert "from mmusim" not in text
    with pytest.raises(ModuleNotFoundError):
        __import__("mmusim.v2")  # nothing named like the proto package is importable
