"""Loading base models: presets, local directories, hub ids offline, MiniLM."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import sentinel.models.presets as presets_module
import torch
import transformers
from sentinel.models.exceptions import ModelLoadError, PresetUnavailableError, UnsupportedModelError
from sentinel.models.loading import family_of, load_base_model
from sentinel.models.presets import preset_names

TEXTS_FOR_DIR = ["round trip", "ünïcode"]


def test_preset_names_cover_tiny_models_and_minilm() -> None:
    assert preset_names() == ["tiny-bert", "tiny-gpt2", "tiny-llama", "minilm"]


def test_tiny_classifier_is_eval_float32_cpu_with_attention_probabilities(tiny_base, make_batch) -> None:
    model = tiny_base.model
    assert tiny_base.family == tiny_base.name.removeprefix("tiny-")
    assert tiny_base.task == "classification"
    assert not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    batch = make_batch(tiny_base)
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_attentions=True)
    assert out.logits.shape == (4, 2)
    assert len(out.attentions) == 2
    probs = out.attentions[0]
    assert probs.shape[1] == 4
    # Probabilities over keys: rows sum to one wherever the query is a real token.
    row_sums = probs.sum(-1)[batch["attention_mask"].bool().unsqueeze(1).expand_as(probs.sum(-1))]
    torch.testing.assert_close(row_sums, torch.ones_like(row_sums))


def test_causal_lm_predicts_over_the_vocabulary(tiny_lm, make_batch) -> None:
    batch = make_batch(tiny_lm)
    with torch.no_grad():
        out = tiny_lm.model(**batch)
    assert out.logits.shape[-1] == len(tiny_lm.tokenizer)
    assert torch.isfinite(out.loss)


def test_same_seed_same_weights_and_caller_rng_untouched(tiny_name) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_base_model(tiny_name, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    b = load_base_model(tiny_name, seed=7)
    c = load_base_model(tiny_name, seed=8)
    pa, pb, pc = (dict(m.model.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert any(not torch.equal(pa[n], pc[n]) for n in pa)


def test_padding_does_not_change_a_decoder_classification(tiny_base) -> None:
    # gpt2/llama classify from the last non-pad token, so a pad token must be set.
    tok = tiny_base.tokenizer
    assert tok.pad_token_id is not None
    assert tiny_base.model.config.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        alone = tiny_base.model(**tok(["ab"], return_tensors="pt")).logits
        padded = tiny_base.model(**tok(["ab", "a much longer sentence"], padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(padded[0], alone[0], rtol=1e-5, atol=1e-5)


def test_tokenizer_handles_any_text_and_truncates(tiny_base) -> None:
    tok = tiny_base.tokenizer
    text = "ünïcode ✓ 漢字 🙂"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    long = tok(["x" * 1000], truncation=True, max_length=16)["input_ids"][0]
    assert len(long) == 16
    assert len(tok) < 300


def test_load_from_local_directory_reproduces_logits(tiny_base, tmp_path, make_batch) -> None:
    tiny_base.model.save_pretrained(tmp_path / "m")
    tiny_base.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_base_model(str(tmp_path / "m"), task="classification", num_labels=2)
    assert loaded.family == tiny_base.family
    assert loaded.model.config._attn_implementation == "eager"
    batch = {k: v for k, v in make_batch(tiny_base).items() if k != "labels"}
    assert loaded.tokenizer(TEXTS_FOR_DIR)["input_ids"] == tiny_base.tokenizer(TEXTS_FOR_DIR)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(**batch).logits, tiny_base.model(**batch).logits)


def test_missing_local_directory_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_base_model(str(tmp_path / "absent"))


def test_hub_id_offline_fails_clearly(monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="offline"):
        load_base_model("sentinel-tests/no-such-model")


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="`task`"):
        load_base_model("tiny-bert", task="regression")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`num_labels`"):
        load_base_model("tiny-bert", num_labels=0)


def test_unsupported_family_names_the_model_type() -> None:
    config = transformers.DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)
    model = transformers.DistilBertForSequenceClassification(config)
    with pytest.raises(UnsupportedModelError, match="distilbert"):
        family_of(model)


def test_minilm_loads_offline_as_a_12_head_bert() -> None:
    base = load_base_model("minilm", num_labels=3, seed=1)
    config = base.model.config
    assert (base.family, config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == (
        "bert",
        6,
        12,
        384,
    )
    assert base.model.config._attn_implementation == "eager"
    enc = base.tokenizer(["federated learning"], return_tensors="pt")
    with torch.no_grad():
        out = base.model(**enc, output_attentions=True)
    assert out.logits.shape == (1, 3)
    assert out.attentions[0].shape[1] == 12


def test_minilm_missing_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setattr(presets_module, "MINILM_PACKAGE", "sentinel_tests_no_such_package")
    with pytest.raises(PresetUnavailableError, match=r"pip install 'sentinel-fed\[demo\]'"):
        load_base_model("minilm")
