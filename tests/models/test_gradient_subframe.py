"""The gradient sub-frame (``frame-unit-gradient``): a node below the frame's rank trains where its own gradient is.

Under the shared frame every update lies in one rank-R frame, so aggregation
stays exact at rank ≤ R. A node of rank r < R used to train in the frame's
leading r directions (the global update's largest), whatever its own data asked
for. With ``subframe="gradient"`` it trains in the r combinations of all R
directions that carry most of its gradient: still inside the frame (the same
exactness), with more of its gradient in reach.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from sentinel.client.app import app as client_app
from sentinel.client.data import Example
from sentinel.client.data.batching import sample_batches
from sentinel.client.frames import frame_columns, frame_rows, gradient_subframe
from sentinel.client.training import SUBFRAME_BATCHES, FrameStart, GlobalView, frame_subframes, train_local
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, global_view_record
from sentinel.server.central import initial_state
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo
from sentinel.server.strategy import SentinelStrategy
from sentinel.server.views import TrainingDesign, design_named

TEXTS = ["good and great", "bad and awful", "lovely fine day", "terrible broken thing", "nice work", "poor service"]
EXAMPLES = [Example(text=t, label=i % 2, domain="d") for i, t in enumerate(TEXTS)]
RNG = np.random.default_rng(5)
FRAME_RANK, RANK = 4, 2
NODE = 904


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    return load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)


def test_the_gradient_subframe_keeps_the_most_gradient_any_r_combinations_can() -> None:
    for factor, shape in (("b", (12, FRAME_RANK)), ("a", (FRAME_RANK, 9))):
        grad = RNG.standard_normal(shape) * np.array([0.1, 0.2, 3.0, 1.0])[None, :] if factor == "b" else (
            RNG.standard_normal(shape) * np.array([0.1, 0.2, 3.0, 1.0])[:, None]
        )
        q = gradient_subframe(grad, RANK, factor)  # type: ignore[arg-type]
        assert q.shape == (FRAME_RANK, RANK)
        np.testing.assert_allclose(q.T @ q, np.eye(RANK), atol=1e-10)

        def kept(mix: np.ndarray) -> float:
            return float(np.linalg.norm(grad @ mix if factor == "b" else mix.T @ grad) ** 2)

        top = np.eye(FRAME_RANK)[:, :RANK]
        best = kept(q)
        assert best > 2 * kept(top)  # the leading two directions carry little of this gradient
        for _ in range(50):
            other, _ = np.linalg.qr(RNG.standard_normal((FRAME_RANK, RANK)))
            assert kept(other) <= best + 1e-9
    np.testing.assert_array_equal(gradient_subframe(np.zeros((12, FRAME_RANK)), RANK, "b"), np.eye(FRAME_RANK)[:, :RANK])
    with pytest.raises(ValueError, match="sub-frame rank"):
        gradient_subframe(np.ones((12, FRAME_RANK)), FRAME_RANK + 1, "b")


def _view(base: LoadedModel) -> GlobalView:
    """A rank-4 global update on every module (the rank-R frame's own directions)."""
    factors = {}
    for module, delta in initial_state(base).deltas.items():
        out, inp = delta.shape
        factors[module] = ((RNG.standard_normal((FRAME_RANK, inp)) * 0.01).astype(np.float32),
                           (RNG.standard_normal((out, FRAME_RANK)) * 0.01).astype(np.float32))
    return GlobalView(factors=factors, head={})


def _pairs(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {k: (arrays[k], arrays[k.replace("lora_A", "lora_B")]) for k in arrays if "lora_A" in k}


def _module(key: str) -> str:
    return key.replace("base_model.model.", "").replace(".lora_A.weight", "")


def _residual(x: np.ndarray, span: np.ndarray) -> float:
    """‖x − its projection on the row space of ``span``‖ / ‖x‖."""
    q, _ = np.linalg.qr(span.astype(np.float64).T)
    x = x.astype(np.float64)
    return float(np.linalg.norm(x - x @ q @ q.T) / max(np.linalg.norm(x), 1e-30))


@pytest.mark.parametrize("factor", ["b", "a"])
def test_a_low_rank_node_trains_inside_the_full_frame_where_its_gradient_is(base: LoadedModel, factor: str) -> None:
    view = _view(base)
    common = dict(rank=RANK, steps=2, batch_size=4, learning_rate=1e-2, max_length=12, seed=3, frame=factor,
                  frame_seed=7, server_round=2, frame_gain=2.0, frame_scale="unit", frame_rank=FRAME_RANK)
    chosen = _pairs(train_local(base, view, EXAMPLES, EXAMPLES[:2], subframe="gradient", **common).arrays)  # type: ignore[arg-type]
    top = _pairs(train_local(base, view, EXAMPLES, EXAMPLES[:2], subframe="top", **common).arrays)  # type: ignore[arg-type]
    batches = list(sample_batches(base.tokenizer, EXAMPLES, 4, 12, min(2, SUBFRAME_BATCHES), 3))
    start = FrameStart(factor, 7, 2, 2.0, "unit", FRAME_RANK)  # type: ignore[arg-type]
    mixing = frame_subframes(base, view, start, RANK, batches, None, "cpu")
    assert chosen.keys() == top.keys() and chosen and set(map(_module, chosen)) == set(mixing)
    moved = 0
    for key, (a, b) in chosen.items():
        view_a, view_b = view.factors[_module(key)]
        if factor == "b":  # A is frozen: Qᵀ F, inside the rank-4 frame's rows, not its leading two rows
            frame = frame_rows(view_a, FRAME_RANK, P.LORA_ALPHA_PER_RANK, 7, 2, _module(key), gain=2.0, scale="unit")
            assert _residual(a, frame) < 1e-5
            np.testing.assert_allclose(a, (mixing[_module(key)].T @ frame).astype(np.float32), atol=1e-6)
            np.testing.assert_allclose(top[key][0], frame[:RANK], atol=1e-6)
        else:  # B is frozen: C Q, inside the frame's columns
            frame = frame_columns(view_b, FRAME_RANK, P.LORA_ALPHA_PER_RANK, gain=2.0, scale="unit")
            assert _residual(b.T, frame.T) < 1e-5
            np.testing.assert_allclose(b, (frame @ mixing[_module(key)]).astype(np.float32), atol=1e-6)
        moved += int(np.linalg.norm(b.astype(np.float64) @ a) > 0)
    assert moved  # the update is non-zero and (checked above) lies in the rank-R frame


@pytest.mark.parametrize("factor", ["b", "a"])
def test_a_trained_subframe_sends_the_best_rank_r_part_of_its_full_frame_training(base: LoadedModel, factor: str) -> None:
    """``subframe="trained"``: the node trains in the whole rank-R frame and sends, at its own rank, the
    Eckart–Young best rank-r part of that update (inside the frame, so aggregation stays exact)."""
    view = _view(base)
    common = dict(steps=2, batch_size=4, learning_rate=1e-2, max_length=12, seed=3, frame=factor, frame_seed=7,
                  server_round=2, frame_gain=2.0, frame_scale="unit", frame_rank=FRAME_RANK)
    full = _pairs(train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=FRAME_RANK, **common).arrays)  # type: ignore[arg-type]
    cut = train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=RANK, subframe="trained", **common)  # type: ignore[arg-type]
    assert cut.rank == RANK
    pairs = _pairs(cut.arrays)
    assert pairs.keys() == full.keys()
    moved = 0
    for key, (a, b) in pairs.items():
        assert a.shape[0] == RANK and b.shape[1] == RANK  # uplink at the node's own rank
        delta_full = full[key][1].astype(np.float64) @ full[key][0]
        delta = b.astype(np.float64) @ a
        sigma = np.linalg.svd(delta_full, compute_uv=False)
        assert np.linalg.matrix_rank(delta, tol=1e-8 * max(sigma[0], 1e-30)) <= RANK
        # the best rank-r approximation of the full-frame update: its error is the trailing singular values
        np.testing.assert_allclose(np.linalg.norm(delta_full - delta), np.sqrt(np.sum(sigma[RANK:] ** 2)), atol=1e-6, rtol=1e-4)
        view_a, view_b = view.factors[_module(key)]
        if factor == "b":
            assert _residual(a, frame_rows(view_a, FRAME_RANK, P.LORA_ALPHA_PER_RANK, 7, 2, _module(key), gain=2.0, scale="unit")) < 1e-5
        else:
            assert _residual(b.T, frame_columns(view_b, FRAME_RANK, P.LORA_ALPHA_PER_RANK, gain=2.0, scale="unit").T) < 1e-5
        moved += int(sigma[0] > 0)
    assert moved


def test_without_a_larger_frame_nothing_changes_and_a_frame_below_the_rank_is_refused(base: LoadedModel) -> None:
    view = _view(base)
    common = dict(steps=1, batch_size=4, learning_rate=1e-2, max_length=12, seed=3, frame="b", frame_seed=7, server_round=2)
    plain = train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=RANK, **common).arrays  # type: ignore[arg-type]
    same = train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=RANK, frame_rank=RANK, subframe="gradient", **common).arrays  # type: ignore[arg-type]
    for key, value in plain.items():
        np.testing.assert_array_equal(value, same[key])
    with pytest.raises(ValueError, match="below this node's LoRA rank"):
        train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=RANK, frame_rank=1, **common)  # type: ignore[arg-type]


def _two_node_strategy(design: str) -> SentinelStrategy:
    """A coordinator strategy for one gpu node at the frame's rank and one edge node below it, under ``design``."""
    config = FederationConfig.model_validate(
        dict(
            model="tiny-bert", dataset="builtin:reviews?n=120", partition="iid", nodes=2, rounds=2, max_length=16,
            training_design=design,
            profiles={"gpu": RoleProfile(lora_rank=FRAME_RANK, local_steps=1, batch_size=4),
                      "edge": RoleProfile(lora_rank=RANK, local_steps=1, batch_size=4)},
        )
    )
    return SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)


@pytest.mark.usefixtures("inside_a_server_app")
def test_the_coordinator_sends_the_frame_rank_and_a_node_refuses_one_below_its_rank(base: LoadedModel) -> None:
    assert design_named("frame-unit-gradient").subframe == "gradient" and design_named("frame-unit").subframe == "top"
    with pytest.raises(ValueError, match="subframe"):
        TrainingDesign(subframe="best")  # type: ignore[arg-type]
    strategy = _two_node_strategy("frame-unit-gradient")
    state = initial_state(base)
    plan = strategy.configure_train(1, state, [NodeInfo(1, 0, "gpu", ""), NodeInfo(2, 1, "edge", "")])
    for message in plan.messages:
        sent = message.content[P.REC_CONFIG]
        assert sent[P.C_FRAME_RANK] == FRAME_RANK and sent[P.C_SUBFRAME] == "gradient"
    grid = LocalGrid({NODE: client_app}, {NODE: {"partition-id": 0, "num-partitions": 2, "role": "edge", "device": "cpu"}})
    node_config = strategy.node_config(NodeInfo(NODE, 0, "edge", ""), 1)
    node_config[P.C_TRAIN_FACTOR] = "b"
    node_config[P.C_FRAME_RANK] = 1
    content = RecordDict({P.REC_ARRAYS: global_view_record({}, state.head), P.REC_CONFIG: node_config})
    (bad,) = grid.send_and_receive([Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=NODE)])
    assert bad.has_error() and P.C_FRAME_RANK in bad.error.reason


def _delta(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    a, b = pair
    return P.LORA_ALPHA_PER_RANK * (b.astype(np.float64) @ a.astype(np.float64))


def _residual_delta(residual: dict[str, tuple[np.ndarray, np.ndarray]], module: str) -> np.ndarray:
    x, y = residual[module]
    return np.asarray(x, np.float64) @ np.asarray(y, np.float64)


def test_error_feedback_delivers_what_the_cut_left_out_in_a_later_round(base: LoadedModel) -> None:
    """With error feedback nothing a ``trained`` node trained is lost: what it sends plus what it keeps is all it
    trained, in round 1, and in round 2 (the other factor) its update carries round 1's remainder in the frame."""
    view = _view(base)
    common = dict(steps=2, batch_size=4, learning_rate=1e-2, max_length=12, seed=3, frame_seed=7, frame_gain=2.0,
                  frame_scale="unit", frame_rank=FRAME_RANK)
    rounds = (("b", 2), ("a", 3))
    full = [_pairs(train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=FRAME_RANK, frame=f, server_round=t, **common).arrays)  # type: ignore[arg-type]
            for f, t in rounds]
    first = train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=RANK, subframe="trained", frame="b", server_round=2,
                        residual={}, **common)  # type: ignore[arg-type]
    assert first.residual is not None
    second = train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=RANK, subframe="trained", frame="a", server_round=3,
                         residual=first.residual, **common)  # type: ignore[arg-type]
    assert second.residual is not None
    without = train_local(base, view, EXAMPLES, EXAMPLES[:2], rank=RANK, subframe="trained", frame="a", server_round=3, **common)  # type: ignore[arg-type]
    assert without.residual is None
    sent = [_pairs(first.arrays), _pairs(second.arrays)]
    changed = 0
    for key in full[0]:
        module = _module(key)
        r1, r2 = _residual_delta(first.residual, module), _residual_delta(second.residual, module)
        scale = max(np.linalg.norm(_delta(full[0][key])), 1e-30)
        # round 1: sent + kept = trained; round 2: sent + kept = trained + round 1's remainder
        np.testing.assert_allclose(_delta(sent[0][key]) + r1, _delta(full[0][key]), atol=1e-5 * scale)
        np.testing.assert_allclose(_delta(sent[1][key]) + r2, _delta(full[1][key]) + r1, atol=1e-5 * scale)
        frame = frame_columns(view.factors[module][1], FRAME_RANK, P.LORA_ALPHA_PER_RANK, gain=2.0, scale="unit")
        assert _residual(sent[1][key][1].T, frame.T) < 1e-5  # round 2's update still lies in its frame
        changed += int(np.linalg.norm(_delta(sent[1][key]) - _delta(_pairs(without.arrays)[key])) > 1e-6 * scale)
    assert changed  # the remainder reached round 2's update


def test_error_feedback_keeps_consent_zeroes() -> None:
    """A remainder from a round with wider consent never puts a change into a slice the node may not touch now."""
    from sentinel.models.components import model_layout

    model = load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)
    view = _view(model)
    layout = model_layout(model.model)
    allowed = {f"layer.{i}.head.{h}" for i in range(layout.num_layers) for h in range(layout.num_heads)} - {"layer.0.head.0"}
    common = dict(steps=1, batch_size=4, learning_rate=1e-2, max_length=12, seed=3, frame_seed=7, frame_gain=2.0,
                  frame_scale="unit", frame_rank=FRAME_RANK, rank=RANK, subframe="trained", frame="b", server_round=2)
    first = train_local(model, view, EXAMPLES, EXAMPLES[:2], residual={}, **common)  # type: ignore[arg-type]
    assert first.residual
    second = train_local(model, view, EXAMPLES, EXAMPLES[:2], residual=first.residual, permitted=allowed, **common)  # type: ignore[arg-type]
    head_dim, checked = layout.head_dim, 0
    for key, pair in _pairs(second.arrays).items():
        if "layer.0." in key and any(p in key for p in (".query", ".key", ".value")):
            assert not _delta(pair)[:head_dim].any()  # head 0 of layer 0: exactly zero
            assert _delta(pair)[head_dim:].any()  # the heads it may change did change
            checked += 1
    assert checked == 3


def _edge_grid(state_dir: Path) -> LocalGrid:
    return LocalGrid({NODE: client_app}, {NODE: {"partition-id": 1, "num-partitions": 2, "role": "edge", "device": "cpu",
                                                 "state-dir": str(state_dir)}})


def _edge_round(strategy: SentinelStrategy, grid: LocalGrid, base: LoadedModel, rnd: int) -> dict[str, np.ndarray]:
    """Round ``rnd`` of the edge node on ``grid`` (the global model left at its start): its reply's arrays."""
    plan = strategy.configure_train(rnd, initial_state(base), [NodeInfo(1, 0, "gpu", ""), NodeInfo(NODE, 1, "edge", "")])
    (message,) = [m for m in plan.messages if m.metadata.dst_node_id == NODE]
    sent = message.content[P.REC_CONFIG]
    assert sent[P.C_ERROR_FEEDBACK] is True and sent[P.C_SUBFRAME] == "trained"
    (reply,) = grid.send_and_receive([message])
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return from_array_record(reply.content[P.REC_ARRAYS])


@pytest.mark.usefixtures("inside_a_server_app")
def test_a_node_keeps_its_remainder_between_rounds_and_across_a_restart(base: LoadedModel, tmp_path: Path) -> None:
    """Under ``frame-unit-trained-reach-ef`` the coordinator asks for error feedback; the ClientApp keeps the node's
    remainder in ``Context.state`` and on its disk, so a node that restarts (a resumed run) sends what an
    uninterrupted one would; a round that does not ask for error feedback drops the remainder."""
    from sentinel.client.error_feedback import STATE_RESIDUAL, load_residual, residual_from_record

    strategy = _two_node_strategy("frame-unit-trained-reach-ef")
    grid = _edge_grid(tmp_path / "state")
    kept = []
    for rnd in (1, 3):  # two B rounds (with the global update still zero, an A round's frame is empty)
        arrays = _edge_round(strategy, grid, base, rnd)
        assert all(v.shape[0] == RANK for k, v in arrays.items() if "lora_A" in k)  # uplink at the node's rank
        kept.append(residual_from_record(grid._contexts[NODE].state.array_records[STATE_RESIDUAL]))
    assert kept[0] and kept[0].keys() == kept[1].keys()
    assert any(not np.allclose(kept[0][m][0] @ kept[0][m][1], kept[1][m][0] @ kept[1][m][1]) for m in kept[0])
    on_disk = load_residual(tmp_path / "state", 2)
    assert on_disk is not None and all(np.allclose(on_disk[m][0] @ on_disk[m][1], kept[0][m][0] @ kept[0][m][1], atol=1e-7)
                                       for m in kept[0])

    # The node restarted after round 1 (round 3 in a fresh process: empty Context.state, the same state directory,
    # as `--resume` starts it) sends what the uninterrupted node sent; one that never kept a remainder does not.
    _edge_round(strategy, _edge_grid(tmp_path / "restarted"), base, 1)
    restarted = _edge_round(strategy, _edge_grid(tmp_path / "restarted"), base, 3)
    forgetful = _edge_round(strategy, _edge_grid(tmp_path / "empty"), base, 3)
    for key, value in arrays.items():  # the uninterrupted node's round 3
        np.testing.assert_array_equal(value, restarted[key])
    assert any(not np.array_equal(arrays[k], forgetful[k]) for k in forgetful)

    plain = strategy.node_config(NodeInfo(NODE, 1, "edge", ""), 5)  # a round without error feedback drops it
    (reply,) = grid.send_and_receive([Message(content=RecordDict({P.REC_ARRAYS: global_view_record({}, initial_state(base).head),
                                                                  P.REC_CONFIG: plain}), message_type=P.MSG_TRAIN, dst_node_id=NODE)])
    assert not reply.has_error() and STATE_RESIDUAL not in grid._contexts[NODE].state
    assert load_residual(tmp_path / "state", 10) is None


def test_a_node_keeps_its_newest_remainders_on_disk_and_reads_the_one_before_the_round(tmp_path: Path) -> None:
    from sentinel.client.error_feedback import KEEP, load_residual, residual_from_record, save_residual
    from sentinel.protos.records import to_array_record

    for rnd in (1, 2, 3):
        save_residual(tmp_path, rnd, {"m": (np.full((3, 1), float(rnd)), np.ones((1, 4)))})
    assert len(list(tmp_path.iterdir())) == KEEP == 2  # round 1 pruned, no temporary directories left
    before_3 = load_residual(tmp_path, 3)
    assert before_3 is not None and np.allclose(before_3["m"][0], 2.0)  # a resumed round 3 reads round 2's
    assert load_residual(tmp_path, 2) is None and load_residual(tmp_path / "missing", 9) is None
    with pytest.raises(ValueError, match="malformed"):
        residual_from_record(to_array_record({"m::x": np.ones((3, 2)), "m::y": np.ones((1, 4))}))
