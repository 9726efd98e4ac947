"""Validators judge candidates on the model the federation serves: the global head mask travels with the validate message.

The loss change a validator reports is checked against one computed by hand: the
candidate as a PEFT model (the adapter on the global model, not the
validator's dense merge), pruned heads gated off, per-example cross-entropy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from sentinel.client.data import Example
from sentinel.client.data.batching import iter_batches
from sentinel.client.validation import validate_candidates
from sentinel.ledger.crypto import generate_private_key
from sentinel.models.components import model_layout
from sentinel.models.global_model import materialise
from sentinel.models.head_mask import HeadMaskError, apply_head_mask
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import adapter_arrays, attach_lora
from sentinel.protos import messages as P
from sentinel.protos.records import dense_state_arrays, from_array_record, to_array_record
from sentinel.server.central import initial_state
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.outcome import NodeInfo, NodeResult, RoundOutcome
from sentinel.server.state import GlobalState
from sentinel.server.strategy import SentinelStrategy
from sentinel.server.validation import GateParameters, ValidationPhase

WORDS = ["good", "bad", "great", "awful", "fine", "broken", "lovely", "poor", "nice", "terrible"]
VAL = [Example(text=f"{WORDS[i % 10]} {WORDS[(3 * i) % 10]} and {WORDS[(7 * i + 1) % 10]}", label=i % 2) for i in range(24)]
AUTHOR, VALIDATOR = NodeInfo(11, 0, "gpu"), NodeInfo(12, 1, "gpu")
BATCH, MAX_LENGTH, ROUND = 4, 12, 3


@pytest.fixture(autouse=True)
def _inside_a_server_app(inside_a_server_app: None) -> None:
    """Every test here builds Flower messages as a ServerApp does."""


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    return load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)


@pytest.fixture(scope="module")
def state(base: LoadedModel) -> GlobalState:
    """A global model far from the random base, so heads matter to its outputs."""
    rng = np.random.default_rng(5)
    start = initial_state(base)
    deltas = {m: (rng.normal(scale=0.4, size=(d.shape[0], 4)) @ rng.normal(scale=0.4, size=(4, d.shape[1]))).astype(np.float32) for m, d in start.deltas.items()}
    head = {k: (v + rng.normal(scale=2.0, size=v.shape)).astype(np.float32) for k, v in start.head.items()}
    return GlobalState(deltas=deltas, head=head, round=ROUND - 1)


@pytest.fixture(scope="module")
def candidate(base: LoadedModel, state: GlobalState) -> torch.nn.Module:
    """A candidate update as a PEFT adapter on the global model (random, large enough to change the loss)."""
    peft = attach_lora(materialise(base, state.deltas, state.head), rank=2, alpha=P.LORA_ALPHA_PER_RANK * 2, seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return peft.eval()


def _mask(base: LoadedModel) -> np.ndarray:
    layout = model_layout(base.model)
    mask = np.ones((layout.num_layers, layout.num_heads), dtype=np.float32)
    mask[0, :2] = 0.0
    mask[1, 3] = 0.0
    return mask


def _validate(base: LoadedModel, state: GlobalState, candidate: torch.nn.Module) -> tuple[dict[str, np.ndarray], float]:
    """Build the validate message as the coordinator does, answer it as the validator does: (global arrays sent, loss change)."""
    config = FederationConfig.model_validate(
        dict(model="tiny-bert", dataset="builtin:reviews?n=60", nodes=2, max_length=MAX_LENGTH,
             profiles={"gpu": RoleProfile(lora_rank=2, local_steps=1, batch_size=BATCH, learning_rate=1e-3)})
    )
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    phase = ValidationPhase(["gpu"], lambda: GateParameters(validators_per_update=1), strategy.node_config, seed=0)
    phase.on_nodes([AUTHOR, VALIDATOR])
    outcome = RoundOutcome(ROUND, results=[NodeResult(AUTHOR, accepted=True, arrays=adapter_arrays(candidate))])
    (message,) = phase.configure(ROUND, state, outcome).messages
    reply = validate_candidates(message.content, base, VAL, None, VALIDATOR.key_id, generate_private_key(), torch.device("cpu"))
    return from_array_record(message.content[P.REC_GLOBAL]), float(reply[P.REC_VERDICT + AUTHOR.key_id][P.V_LOSS_CHANGE])


def _mean_loss(model: torch.nn.Module, base: LoadedModel, mask: np.ndarray | None) -> float:
    losses = []
    gates = apply_head_mask(model, mask) if mask is not None else None
    with torch.no_grad():
        for batch in iter_batches(base.tokenizer, VAL, BATCH * 2, MAX_LENGTH):
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.double()
            losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none"))
    if gates is not None:
        gates.remove()
    return float(torch.cat(losses).mean())


def _by_hand(base: LoadedModel, state: GlobalState, candidate: torch.nn.Module, mask: np.ndarray | None) -> float:
    reference = materialise(base, state.deltas, state.head).eval()
    return _mean_loss(candidate, base, mask) - _mean_loss(reference, base, mask)


def test_the_validator_judges_with_the_global_head_mask(base: LoadedModel, state: GlobalState, candidate: torch.nn.Module) -> None:
    mask = _mask(base)
    masked = GlobalState(state.deltas, state.head, mask, state.round)
    sent, loss_change = _validate(base, masked, candidate)
    np.testing.assert_array_equal(sent[P.KEY_HEAD_MASK], mask)  # the mask travels with the message
    expected = _by_hand(base, state, candidate, mask)
    assert loss_change == pytest.approx(expected, abs=1e-5)
    unmasked = _by_hand(base, state, candidate, None)
    assert abs(unmasked - expected) > 1e-3  # the mask changes the verdict's measurements


def test_a_validate_message_without_a_mask_judges_all_heads_as_before(base: LoadedModel, state: GlobalState, candidate: torch.nn.Module) -> None:
    sent, loss_change = _validate(base, state, candidate)
    assert set(sent) == set(dense_state_arrays(state.deltas, state.head))  # nothing new on the wire
    assert loss_change == pytest.approx(_by_hand(base, state, candidate, None), abs=1e-5)


@pytest.mark.parametrize(
    ("bad", "match"),
    [(np.ones((3, 4), dtype=np.float32), "shape"), (np.full((2, 4), 0.5, dtype=np.float32), r"0 \(pruned/masked\) or 1")],
)
def test_a_head_mask_that_does_not_fit_the_model_is_refused(
    base: LoadedModel, state: GlobalState, candidate: torch.nn.Module, bad: np.ndarray, match: str
) -> None:
    content = RecordDict(
        {
            P.REC_CONFIG: ConfigRecord({P.C_LOSS_TOLERANCE: 0.0, P.C_ENTROPY_Z: 3.5, P.C_ENTROPY_MIN_RATIO: 4.0, P.C_ROUND: ROUND, P.C_BATCH: BATCH, P.C_MAX_LENGTH: MAX_LENGTH}),
            P.REC_GLOBAL: to_array_record({**dense_state_arrays(state.deltas, state.head), P.KEY_HEAD_MASK: bad}),
            P.REC_CANDIDATE + AUTHOR.key_id: to_array_record(adapter_arrays(candidate)),
        }
    )
    with pytest.raises(HeadMaskError, match=match):
        validate_candidates(content, base, VAL, None, VALIDATOR.key_id, generate_private_key(), torch.device("cpu"))


def test_a_change_to_a_pruned_heads_query_shifts_no_entropy(base: LoadedModel, state: GlobalState) -> None:
    import copy

    from sentinel.client.validation import masked_reading
    from sentinel.models.validation import compare

    reference = materialise(base, state.deltas, state.head).eval()
    changed = copy.deepcopy(reference)
    query = changed.bert.encoder.layer[0].attention.self.query.weight
    head_dim = query.shape[0] // model_layout(base.model).num_heads
    with torch.no_grad():
        query[:head_dim] += 5.0 * torch.randn(head_dim, query.shape[1], generator=torch.Generator().manual_seed(3))
    batches = list(iter_batches(base.tokenizer, VAL, BATCH, MAX_LENGTH))
    mask = _mask(base)  # head 0 of layer 0 is pruned
    unmasked = compare(masked_reading(reference, batches, None), masked_reading(changed, batches, None))
    assert abs(unmasked.entropy_shift[0, 0]) > 1e-3  # with all heads on, the change does move head 0's attention
    masked = compare(masked_reading(reference, batches, mask), masked_reading(changed, batches, mask))
    np.testing.assert_array_equal(masked.entropy_shift, np.zeros_like(masked.entropy_shift))
    assert masked.loss_change == pytest.approx(0.0, abs=1e-6)  # and the served model's outputs do not change


def _two_candidates(base: LoadedModel, candidate: torch.nn.Module) -> list[dict[str, np.ndarray]]:
    """The candidate, and a second with other factors and its own classifier head."""
    first = adapter_arrays(candidate)
    rng = np.random.default_rng(9)
    second = {k: (v + rng.normal(scale=0.2, size=v.shape)).astype(np.float32) for k, v in first.items()}
    return [first, second]


def test_swapping_candidates_into_one_copy_reads_exactly_as_a_fresh_copy_each(
    base: LoadedModel, state: GlobalState, candidate: torch.nn.Module
) -> None:
    from sentinel.client.data.batching import iter_length_sorted_batches
    from sentinel.client.validation import CandidateSwap, candidate_model, masked_reading

    batches = list(iter_length_sorted_batches(base.tokenizer, VAL, BATCH, MAX_LENGTH))
    swap = CandidateSwap(base, state.deltas, state.head, torch.device("cpu"))
    before = masked_reading(swap.model, batches, None)
    for arrays in _two_candidates(base, candidate):
        fresh = masked_reading(candidate_model(base, state.deltas, state.head, arrays).eval(), batches, None)
        with swap.applied(arrays) as model:
            swapped = masked_reading(model, batches, None)
        np.testing.assert_array_equal(swapped.losses, fresh.losses)
        np.testing.assert_array_equal(swapped.entropy, fresh.entropy)
    after = masked_reading(swap.model, batches, None)  # every weight and the head are restored
    np.testing.assert_array_equal(after.losses, before.losses)
    reference = dict(materialise(base, state.deltas, state.head).state_dict())
    for name, value in swap.model.state_dict().items():
        assert torch.equal(value, reference[name]), name


def test_length_sorted_batches_measure_what_ordered_batches_measure(base: LoadedModel, state: GlobalState) -> None:
    from sentinel.client.data.batching import iter_length_sorted_batches
    from sentinel.client.validation import masked_reading

    model = materialise(base, state.deltas, state.head).eval()
    ordered = masked_reading(model, list(iter_batches(base.tokenizer, VAL, BATCH * 2, MAX_LENGTH)), None)
    sorted_batches = list(iter_length_sorted_batches(base.tokenizer, VAL, BATCH * 2, MAX_LENGTH))
    assert sum(len(b["labels"]) for b in sorted_batches) == len(VAL)
    lengths = [int(b["attention_mask"].sum(1).max()) for b in sorted_batches]
    assert lengths == sorted(lengths)
    by_length = masked_reading(model, sorted_batches, None)
    assert by_length.loss == pytest.approx(ordered.loss, abs=1e-6)
    assert by_length.accuracy == ordered.accuracy
    np.testing.assert_allclose(by_length.entropy, ordered.entropy, atol=1e-6)
