"""The edge bundle: onnxruntime matches the torch student, int8 stays close, hashes catch tampering; edge-node use and CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sentinel.client.data.examples import Example
from sentinel.client.edge import evaluate_bundle, expected_calibration_error, predict_texts
from sentinel.models.cli_edge import app
from sentinel.models.components import model_layout
from sentinel.models.edge_bundle import (
    CONTRACTS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    BundleError,
    BundleRunner,
    load_bundle,
    manifest_sha256,
    sha256_file,
    softmax,
)
from sentinel.models.edge_export import CONTRACTS_METADATA_KEY, export_bundle
from sentinel.models.head_mask import mask_of_pruned
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import attach_lora
from sentinel.models.onnx_export import read_metadata
from sentinel.models.student import build_student
from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # every bundle is an ONNX export (seconds each)

CONTRACTS = {"layer.0.head.0": {"steward": "clinic-a", "allowed": ["adapt", "distill"]}}
INT8_ARGMAX_AGREEMENT = 0.95
"""int8 tolerance: the share of texts whose label int8 and the torch student agree on, at least.

Measured: 99.5% on this fixture; 97.8-99.3% for MiniLM teacher and students on the
448 UCI test texts (tests/benchmarks/pruning.py bundles).
"""
INT8_MAX_PROB_DIFF = 0.05
"""int8 tolerance on this fixture: the largest |p_int8 - p_fp32| over texts and classes (measured 0.009).

Not a bound for real models: on MiniLM the mean is 0.013-0.019 but a few borderline
texts move by up to 0.66, which is why agreement is the tolerance that transfers.
"""


def _student(teacher: LoadedModel) -> torch.nn.Module:
    """Heads pruned, FFNs narrowed, and a non-trivial LoRA adapter on top (merged by the export)."""
    student = build_student(teacher.model, mask_of_pruned({0: [1], 1: [0, 2]}, model_layout(teacher.model)), ffn_layers=[0, 1], ffn_keep=0.5).model
    peft = attach_lora(student, rank=2)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    return peft.eval()


def _torch_probs(model: torch.nn.Module, base: LoadedModel, texts: list[str], max_length: int) -> np.ndarray:
    encoded = base.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded).logits.numpy()


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory, word_rule) -> dict:
    teacher = word_rule.teacher("tiny-bert", steps=60)
    student = _student(teacher)
    root = tmp_path_factory.mktemp("bundles")
    common = dict(name="tiny-bert-student", labels=["negative", "positive"], max_length=24, contracts=json.dumps(CONTRACTS))
    fp32 = export_bundle(student, teacher.tokenizer, root / "fp32", model_card={"intended_use": "tests"}, teacher_parameters=123, **common)
    int8 = export_bundle(student, teacher.tokenizer, root / "int8", precision="int8", **common)
    return {"teacher": teacher, "student": student, "fp32": fp32, "int8": int8}


def _texts(word_rule) -> list[str]:
    return word_rule.texts(7, 200) + ["a very long text " * 10, "x", "héllo wörld 🙂"]


def test_fp32_bundle_matches_the_torch_student(bert: dict, word_rule) -> None:
    runner = BundleRunner(bert["fp32"], intra_op_threads=1)
    texts = _texts(word_rule)
    for batch in (texts[:1], texts[:5], texts[-3:], texts):  # batch sizes, lengths, truncation past max_length
        np.testing.assert_allclose(runner.logits(batch, batch_size=64), _torch_probs(bert["student"], bert["teacher"], batch, 24), atol=1e-4)


def test_int8_bundle_stays_within_the_stated_tolerance(bert: dict, word_rule) -> None:
    texts = _texts(word_rule)
    reference = softmax(_torch_probs(bert["student"], bert["teacher"], texts, 24))
    assert reference.max(axis=1).std() > 0.01  # the trained teacher's outputs vary with the text
    probs = BundleRunner(bert["int8"]).probabilities(texts)
    assert (probs.argmax(1) == reference.argmax(1)).mean() >= INT8_ARGMAX_AGREEMENT
    assert np.abs(probs - reference).max() <= INT8_MAX_PROB_DIFF
    assert load_bundle(bert["int8"]).manifest.model_bytes < load_bundle(bert["fp32"]).manifest.model_bytes


def test_manifest_lists_every_file_with_its_hash(bert: dict) -> None:
    bundle = load_bundle(bert["fp32"])
    m = bundle.manifest
    on_disk = {p.relative_to(bert["fp32"]).as_posix() for p in Path(bert["fp32"]).rglob("*") if p.is_file()}
    assert {f.path for f in m.files} == on_disk - {MANIFEST_FILE}
    assert all(sha256_file(bundle.path(f.path)) == f.sha256 for f in m.files)
    assert (m.model_name, m.precision, m.labels, m.max_length, m.family) == ("tiny-bert-student", "fp32", ("negative", "positive"), 24, "bert")
    assert m.contracts_sha256 == sha256_file(bundle.path(CONTRACTS_FILE))
    assert json.loads(bundle.path(CONTRACTS_FILE).read_text()) == CONTRACTS
    assert m.architecture["pruned_heads"] == {0: (1,), 1: (0, 2)} and set(m.architecture["ffn_neurons"]) == {0, 1}
    assert m.teacher_parameters == 123 and m.total_bytes == sum(f.bytes for f in m.files)
    assert bundle.manifest_sha256 == manifest_sha256(bert["fp32"])
    meta = read_metadata(bundle.path(MODEL_FILE))
    assert json.loads(meta[CONTRACTS_METADATA_KEY]) == CONTRACTS
    assert meta["sentinel.card.intended_use"] == "tests" and meta["sentinel.precision"] == "fp32"
    assert json.loads(read_metadata(load_bundle(bert["int8"]).path(MODEL_FILE))[CONTRACTS_METADATA_KEY]) == CONTRACTS


def test_tampered_or_missing_files_are_detected(bert: dict, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bert["fp32"], tmp_path / "copy"))
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    (copy / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="sha256"):
        BundleRunner(copy)
    load_bundle(copy, verify=False)  # reading the manifest alone still works
    (copy / CONTRACTS_FILE).write_text("{}")
    (copy / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match="missing|bytes"):
        load_bundle(copy)
    (copy / MANIFEST_FILE).write_text("{}")
    with pytest.raises(BundleError, match="invalid manifest"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not an edge bundle"):
        load_bundle(tmp_path)


def test_edge_node_predicts_and_evaluates_from_the_bundle(bert: dict, word_rule) -> None:
    runner = BundleRunner(bert["fp32"])
    texts = word_rule.texts(11, 40)
    labels = word_rule.labels(texts).tolist()
    examples = [Example(t, int(y), "phones" if i % 2 else "movies") for i, (t, y) in enumerate(zip(texts, labels, strict=True))]
    result = evaluate_bundle(runner, examples, batch_size=7)
    probs = softmax(_torch_probs(bert["student"], bert["teacher"], texts, 24))
    expected = (probs.argmax(1) == np.array(labels)).mean()
    assert result.num_examples == 40 and result.accuracy == pytest.approx(expected)
    assert result.loss == pytest.approx(-np.log(probs[np.arange(40), labels]).mean(), rel=1e-4)
    assert set(result.per_domain) == {"movies", "phones"} and 0 <= result.ece <= 1
    assert result.metrics()["accuracy/phones"] == result.per_domain["phones"]
    predictions = predict_texts(runner, texts[:3])
    assert [p.label_id for p in predictions] == probs[:3].argmax(1).tolist()
    assert predictions[0].label in ("negative", "positive") and predictions[0].probability == pytest.approx(probs[0].max())
    assert np.isnan(evaluate_bundle(runner, []).accuracy)
    with pytest.raises(ValueError, match="label"):
        evaluate_bundle(runner, [Example("x", 5)])


def test_expected_calibration_error_of_a_perfectly_calibrated_set_is_zero() -> None:
    probs = np.array([[0.0, 1.0], [1.0, 0.0], [0.25, 0.75], [0.25, 0.75], [0.25, 0.75], [0.25, 0.75]])
    labels = np.array([1, 0, 1, 1, 1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama"])
def test_decoder_bundles_match_torch(preset: str, tmp_path: Path, word_rule) -> None:
    base = load_base_model(preset)
    student = build_student(base.model, mask_of_pruned({0: [0, 1]}, model_layout(base.model)), ffn_layers=[1], ffn_keep=0.5).model
    runner = BundleRunner(export_bundle(student, base.tokenizer, tmp_path / "b", name=preset, max_length=32))
    texts = _texts(word_rule)[:20] + ["a very long text " * 10]
    np.testing.assert_allclose(runner.logits(texts, batch_size=8), np.concatenate(
        [_torch_probs(student, base, texts[i : i + 8], 32) for i in range(0, len(texts), 8)]), atol=1e-4)


def test_cli_predict_and_bench(bert: dict) -> None:
    cli = CliRunner()
    out = cli.invoke(app, ["predict", "--bundle", str(bert["fp32"]), "good movie", "awful phone"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].split("\t")[0] in ("negative", "positive") and lines[1].endswith("awful phone")
    out = cli.invoke(app, ["bench", "--bundle", str(bert["int8"]), "--tokens", "16", "--runs", "3", "--threads", "1"])
    assert out.exit_code == 0, out.output
    assert "batch   1 x 16 tokens: p50" in out.output and "batch  32 x 16 tokens" in out.output and "MB" in out.output
    out = cli.invoke(app, ["bench", "--bundle", str(bert["int8"]), "--tokens", "99"])
    assert out.exit_code == 1 and "max_length" in out.output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    out = CliRunner().invoke(app, ["predict", "--bundle", str(tmp_path), "hi"])
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [f"error: {tmp_path} is not an edge bundle (no manifest.json)"]
