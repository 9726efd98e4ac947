"""The committed LedgerService stubs: current with ledger.proto and usable with the installed runtimes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from sentinel.protos import ledger_pb2, ledger_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def _load_generate():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_stubs_work_with_the_installed_protobuf_and_grpc() -> None:
    entry = ledger_pb2.Entry(seq=2**40, kind="tokens", payload_json="{}", node_signature="c2ln")
    again = ledger_pb2.Entry.FromString(entry.SerializeToString())
    assert again == entry and again.HasField("node_signature") and not again.HasField("node")
    assert hasattr(ledger_pb2_grpc, "LedgerServiceStub") and hasattr(ledger_pb2_grpc, "add_LedgerServiceServicer_to_server")
    assert ledger_pb2.DESCRIPTOR.package == "sentinel.ledger.v1"


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")
    generate = _load_generate()
    written = generate.generate([ROOT / "protos" / "ledger.proto"], out_root=tmp_path)
    assert {p.name for p in written} == {"ledger_pb2.py", "ledger_pb2_grpc.py", "ledger_pb2.pyi"}
    for path in written:
        committed = (ROOT / "protos" / path.name).read_text(encoding="utf-8")
        assert path.read_text(encoding="utf-8") == committed, f"{path.name} is stale: run `python protos/generate.py`"


def test_bare_imports_are_rewritten_to_the_protos_package() -> None:
    generate = _load_generate()
    source = "import grpc\nimport common_pb2 as common__pb2\nimport other_pb2\n"
    assert generate.fix_imports(source) == (
        "import grpc\nfrom sentinel.protos import common_pb2 as common__pb2\nfrom sentinel.protos import other_pb2\n"
    )
