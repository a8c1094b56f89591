"""The checked-in gRPC modules are what ``scripts/gen-protos`` makes of the protos now."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskplatform.grpc_api import codegen


def test_regenerating_the_grpc_modules_changes_nothing(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert len(written) == 3 * len(codegen.protos()) >= 3
    stale = [
        str(name)
        for name in codegen.generated_names()
        if (tmp_path / name).read_bytes() != (codegen.ROOT / name).read_bytes()
    ]
    assert stale == [], f"run scripts/gen-protos: these differ from the protos: {stale}"


def test_a_changed_proto_would_be_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: a proto with one more field makes different modules."""
    proto = codegen.protos()[0]
    copy = tmp_path / "src"
    (copy / proto.parent).mkdir(parents=True)
    (copy / proto).write_text((codegen.ROOT / proto).read_text() + "\nmessage Extra { string x = 1; }\n")
    monkeypatch.setattr(codegen, "ROOT", copy)
    monkeypatch.setattr(codegen, "PROTO_DIR", copy / proto.parent)
    codegen.generate(tmp_path / "out")
    monkeypatch.undo()
    out = tmp_path / "out" / proto.with_name(proto.stem + "_pb2.py")
    assert out.read_bytes() != (codegen.ROOT / proto.with_name(proto.stem + "_pb2.py")).read_bytes()
