"""Benchmark: Sentinel's validators against plain FedAvg and Flower's robust strategies under poisoning.

Run on demand (not a test; ``--quick`` is a two-minute smoke run):

    OMP_NUM_THREADS=1 nice -n 10 python tests/benchmarks/robustness.py --out runs/robustness

Setting: MiniLM on the UCI Sentiment Labelled Sentences (``../shared/data``), split
by domain over 10 nodes, 5 rounds, one LoRA rank and one local-work profile for
every role (Flower's robust rules need identical shapes), a fixed seed. Scenarios:
no attack, and sign flip, scaling (×10), label flipping and a backdoor at 30 %
malicious nodes (then 10 % and 20 % for our validators and the best Flower rule).

Methods, all on the same in-process LocalGrid with the *same* ClientApp (honest
and malicious nodes run ``sentinel.client.attacks.attack_app``, so every method
sees exactly the same local training):

- ``sentinel``: the Sentinel coordinator with validation on (check phase incl. the
  norm bound, k = 3 validators per update, loss and entropy gates, reputation-weighted
  consensus, cool-downs), exact aggregation ΣwᵢsBᵢAᵢ of the accepted updates;
- ``sentinel-noval`` (clean run only): the same coordinator with ``validation=False``,
  for the round-time overhead of validation;
- ablations, run only when named in ``--methods``: ``sentinel-nocoord`` (the
  coordination check off, ``coordination_z=0``) and ``sentinel-clip`` (the
  coordination check off and instead the accepted updates clipped to the round's
  median norm before the exact aggregate, plus ``--clip-noise`` × that bound of
  Gaussian noise on the new global ΔW);
- Flower's ``FedAvg``, ``Krum``, ``MultiKrum``, ``FedTrimmedAvg``, ``FedMedian`` and
  ``Bulyan`` from ``flwr.serverapp.strategy``: the Sentinel coordinator with
  ``validation=False`` and the norm bound off (``update_norm_factor=1e30``), whose
  aggregation step is replaced by the Flower strategy's ``aggregate_train``. Each
  node's update (its PEFT arrays: every ``lora_A``, ``lora_B`` and the classifier
  head) goes into one reply Message as an ``ArrayRecord`` with a ``MetricRecord``
  ``{"num-examples": n}``; Flower aggregates every array separately (A with A, B with
  B: FedAvg over PEFT LoRA, what a Flower user gets), and the global model becomes
  ΔW += s·B̄·Ā per module, head = the aggregated head. The strategies are told the
  true number of attackers f (Krum/MultiKrum/Bulyan ``num_malicious_nodes=f``,
  MultiKrum keeps n − f, FedTrimmedAvg ``beta = f/n``); Bulyan needs n ≥ 4f + 3.

Backdoor success is the share of held-out test sentences whose true label is not
the target that the final global model classifies as the target once the trigger
is appended (only sentences whose triggered text fits in ``max_length`` tokens, so
truncation never drops the trigger). It includes the model's own errors on those
sentences, which a clean model makes too; *trigger flips* counts only the
sentences the model gets right without the trigger and that the trigger turns
into the target. Accuracy per round is measured on a subset of
the test set (``--eval-subset``); the final accuracy on all of it.

A reduced run (what fits beside other work): ``--rounds 2 --methods sentinel
--attacks sign-flip,scale,label-flip,backdoor --other-fractions ''``. Every
Sentinel run records each verdict with its measurements (``verdicts`` in
``runs/*.json``), to calibrate the gates offline.

Speed (2 shared cores): one base model and one data split per worker process,
round-1 train replies replayed across methods of a scenario (a node's reply is a
pure function of the message it gets: seeded training), single-threaded torch, two
workers, no ledger/governance (``accountable=False``), no contribution scoring.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import pickle
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sentiment-labelled-sentences"
ATTACKS = ("sign-flip", "scale", "label-flip", "backdoor")
FLOWER = ("fedavg", "krum", "multikrum", "trimmedavg", "median", "bulyan")
ROBUST = FLOWER[1:]
SENTINEL_VALIDATED = ("sentinel", "sentinel-nocoord", "sentinel-clip")
"""Sentinel variants with validation on: as is, without the coordination check, with median-norm clipping."""
CLIP_NOISE = 0.0
"""Gaussian noise of ``sentinel-clip`` added to the aggregate, × the clipping bound (``--clip-noise``)."""
LABELS = {
    "sentinel": "Sentinel validators",
    "sentinel-noval": "Sentinel, no validation",
    "sentinel-nocoord": "Sentinel, no coordination check",
    "sentinel-clip": "Sentinel, clipping instead of coordination check",
    "fedavg": "FedAvg (Flower)",
    "krum": "Krum",
    "multikrum": "MultiKrum",
    "trimmedavg": "FedTrimmedAvg",
    "median": "FedMedian",
    "bulyan": "Bulyan",
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """What every run of the benchmark shares."""

    model: str = "minilm"
    data: str = str(DEFAULT_DATA)
    nodes: int = 10
    rounds: int = 5
    rank: int = 4
    local_steps: int = 8
    batch_size: int = 8
    learning_rate: float = 1e-2
    max_length: int = 32
    eval_subset: int = 96
    seed: int = 0
    fraction: float = 0.3
    other_fractions: tuple[float, ...] = (0.1, 0.2)
    attacks: tuple[str, ...] = ATTACKS

    def config(self, method: str, attack: str | None, fraction: float):  # noqa: ANN201 - FederationConfig (lazy import)
        from sentinel.server.config import FederationConfig, RoleProfile

        profile = RoleProfile(
            lora_rank=self.rank, local_steps=self.local_steps, batch_size=self.batch_size, learning_rate=self.learning_rate
        )
        return FederationConfig(
            model=self.model,
            dataset=f"uci-sentiment:{self.data}",
            partition="by-domain",
            nodes=self.nodes,
            rounds=self.rounds,
            patience=self.rounds + 1,
            seed=self.seed,
            max_length=self.max_length,
            profiles={"edge": profile, "gpu": profile, "central": profile},
            contribution="none",
            consent=False,
            validation=method in SENTINEL_VALIDATED,
            # Flower rules see every well-formed update: no norm bound, no direction check.
            update_norm_factor=1e30 if method in FLOWER else 10.0,
            update_min_cosine=-1.0 if method in FLOWER else 0.0,
        )


def malicious_count(nodes: int, fraction: float) -> int:
    """How many attackers ``AttackScenario`` picks for ``fraction`` (round half up, at least one)."""
    count = int(np.floor(fraction * nodes + 0.5))
    return max(count, 1) if fraction > 0 else 0


def flower_strategy(name: str, n: int, f: int):  # noqa: ANN201 - flwr Strategy | None
    """Flower's strategy ``name`` told ``f`` attackers among ``n`` nodes; None where it cannot run."""
    from flwr.serverapp import strategy as S

    if name == "bulyan":
        return S.Bulyan(num_malicious_nodes=f) if n >= 4 * f + 3 else None
    return {
        "fedavg": lambda: S.FedAvg(),
        "krum": lambda: S.Krum(num_malicious_nodes=f),
        "multikrum": lambda: S.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f),
        "trimmedavg": lambda: S.FedTrimmedAvg(beta=f / n),
        "median": lambda: S.FedMedian(),
    }[name]()


# ---------------------------------------------------------------- plumbing around the coordinator


class FlowerAggregation:
    """A SentinelStrategy whose aggregation step is a Flower strategy's ``aggregate_train`` over the nodes' arrays."""

    def __init__(self, inner: Any, flower: Any) -> None:
        self._inner, self._flower = inner, flower

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def aggregate_train(self, state: Any, outcome: Any) -> Any:
        """ΔW += s·B̄·Ā and head = the aggregated head, B̄/Ā/head being Flower's aggregate of each array."""
        from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
        from sentinel.server.outcome import NodeInfo, NodeResult
        from sentinel.server.state import GlobalState
        from sentinel.server.strategy import aggregate_updates

        replies = [
            Message(
                RecordDict(
                    {
                        "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in sorted(r.arrays.items())}),
                        "metrics": MetricRecord({"num-examples": int(r.num_examples)}),
                    }
                ),
                dst_node_id=r.node.node_id,
                message_type="train",
            )
            for r in outcome.accepted
        ]
        arrays, _ = self._flower.aggregate_train(outcome.round, replies) if replies else (None, None)
        if arrays is None:  # Bulyan with too few replies: Flower leaves the global model unchanged
            return GlobalState(state.deltas, state.head, state.head_mask, outcome.round)
        merged = {k: np.asarray(a.numpy(), dtype=np.float32) for k, a in arrays.items()}
        one = NodeResult(node=NodeInfo(0, 0, "gpu"), accepted=True, num_examples=1, arrays=merged)
        deltas, head = aggregate_updates([one], "exact", state.deltas, state.head)
        return GlobalState(deltas=deltas, head=head, head_mask=state.head_mask, round=outcome.round)


class ClippedAggregation:
    """A SentinelStrategy whose accepted updates are clipped to the round's median norm before its exact aggregate.

    An update's norm is ‖ΔW‖ (``aggregation.update_norm``) and its head change
    together; one above the median is scaled down to it (B and the head change
    by the same factor), the rest aggregate unchanged; then ``noise`` × the bound
    of Gaussian noise is added to the new global ΔW (FLAME; 0: none).
    """

    def __init__(self, inner: Any, noise: float, seed: int) -> None:
        self._inner, self._noise, self._seed = inner, noise, seed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def aggregate_train(self, state: Any, outcome: Any) -> Any:
        """Clip, aggregate exactly (the inner strategy), add noise."""
        from sentinel.models.lora import head_module_keys, lora_pairs, module_path
        from sentinel.protos import messages as P
        from sentinel.server.aggregation import LoraUpdate, clip_factors, gaussian_noise, median_norm, update_norm

        accepted = outcome.accepted
        if not accepted:
            return self._inner.aggregate_train(state, outcome)
        norms = []
        for r in accepted:
            pairs = lora_pairs(r.arrays)
            lora = update_norm(
                LoraUpdate(
                    {m: r.arrays[p.a_key] for m, p in pairs.items()},
                    {m: r.arrays[p.b_key] for m, p in pairs.items()},
                    P.LORA_ALPHA_PER_RANK,
                    1.0,
                )
            )
            head = sum(
                float(np.sum((r.arrays[k].astype(np.float64) - state.head[module_path(k)]) ** 2))
                for k in head_module_keys(r.arrays)
            )
            norms.append(float(np.sqrt(lora**2 + head)))
        bound = median_norm(norms)
        factors = dict(zip((id(r) for r in accepted), clip_factors(norms, bound), strict=True))
        results = []
        for r in outcome.results:
            f = factors.get(id(r), 1.0)
            if f < 1.0:
                arrays = dict(r.arrays)
                for p in lora_pairs(arrays).values():
                    arrays[p.b_key] = (f * arrays[p.b_key].astype(np.float64)).astype(np.float32)
                for k in head_module_keys(arrays):
                    sent = state.head[module_path(k)].astype(np.float64)
                    arrays[k] = (sent + f * (arrays[k].astype(np.float64) - sent)).astype(np.float32)
                r = dataclasses.replace(r, arrays=arrays)
            results.append(r)
        new = self._inner.aggregate_train(state, dataclasses.replace(outcome, results=results))
        if self._noise > 0:
            rng = np.random.default_rng([self._seed, outcome.round])
            deltas = {m: d.astype(np.float32) for m, d in gaussian_noise(new.deltas, self._noise, bound, rng).items()}
            new = dataclasses.replace(new, deltas=deltas)
        return new


def _content_digest(content: Any) -> str:
    h = hashlib.sha256()
    for name, rec in sorted(content.items(), key=lambda kv: kv[0]):
        h.update(name.encode())
        if hasattr(rec, "to_numpy_ndarrays"):
            for key, arr in rec.items():
                h.update(f"{key}:{arr.dtype}:{arr.shape}".encode())
                h.update(arr.data)
        else:
            h.update(repr(sorted(rec.items())).encode())
    return h.hexdigest()


def replaying(app: Callable, cache_dir: Path) -> Callable:
    """``app`` with its train replies memoised on disk by (node, message content).

    Safe because a node's train reply is a deterministic function of the message
    (model, data, seed and global view all come from it) and of the node's key,
    which every run of a scenario shares. It saves the round-1 training that all
    methods of a scenario have in common.
    """
    from flwr.app import Message

    cache_dir.mkdir(parents=True, exist_ok=True)

    def call(msg: Message, context: Any) -> Message:
        if msg.metadata.message_type != "train":
            return app(msg, context)
        path = cache_dir / f"{context.node_id}-{_content_digest(msg.content)}.pkl"
        if path.is_file():
            return Message(pickle.loads(path.read_bytes()), reply_to=msg)
        reply = app(msg, context)
        if not reply.has_error():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(copy.deepcopy(reply.content)))
            tmp.replace(path)
        return reply

    return call


def timing_grid(apps: Mapping[int, Callable], node_configs: Mapping[int, dict]):  # noqa: ANN201
    """A LocalGrid that records how long each send-and-receive took, by message type."""
    from sentinel.server.local_grid import LocalGrid

    class TimingGrid(LocalGrid):
        def __init__(self) -> None:
            super().__init__(apps, node_configs)
            self.calls: list[tuple[str, float]] = []

        def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN202
            messages = list(messages)
            started = time.perf_counter()
            replies = list(super().send_and_receive(messages, timeout=timeout))
            kind = messages[0].metadata.message_type if messages else "none"
            self.calls.append((kind, time.perf_counter() - started))
            return replies

    return TimingGrid()


def validate_seconds_per_round(calls: Sequence[tuple[str, float]]) -> list[float]:
    """Per round, the seconds its validate send-and-receive took (0 where it had none)."""
    out: list[float] = []
    for kind, seconds in calls:
        if kind == "train":
            out.append(0.0)
        elif "validate" in kind and out:
            out[-1] += seconds
    return out


def gate_of(reason: str) -> list[str]:
    """Which defences a rejection reason names (check-phase norm bound, loss gate, entropy gates, ...)."""
    gates = [
        g
        for g, needle in (
            ("norm bound", "update norm"),
            ("loss gate", "loss gate"),
            ("entropy gate (round)", "entropy gate (round)"),
            ("entropy gate (validator)", "entropy gate:"),
            ("coordinated", "coordinated update"),
        )
        if needle in reason
    ]
    return gates or [reason.split(":")[0][:40] or "?"]


# ---------------------------------------------------------------- one run (in a worker process)

_SHARED: dict[str, Any] = {}


def _shared(setting: Setting) -> dict[str, Any]:
    """Per worker: the coordinator's base model, the test sets and the node data, loaded once."""
    if not _SHARED:
        import sentinel.client.validation  # noqa: F401 - imported lazily by the node: warm up before timing rounds
        import torch
        from flwr.common.logger import update_console_handler
        from sentinel.client.attacks import BACKDOOR_TARGET, add_trigger
        from sentinel.client.node import cached_base_model
        from sentinel.server.central import CentralEvaluator
        from sentinel.server.coordinator import Coordinator

        torch.set_num_threads(1)
        update_console_handler(level="WARNING")
        built = Coordinator.build(setting.config("sentinel", None, 0.0), Path("/tmp"), accountable=False)
        cached_base_model(setting.model, built.evaluator.base.model.config.num_labels, setting.seed)  # the nodes' copy
        test = list(built.evaluator.test)
        tok = built.base.tokenizer
        eligible = [
            e for e in test if e.label != BACKDOOR_TARGET and len(tok(add_trigger(e.text))["input_ids"]) <= setting.max_length
        ]
        backdoor = [dataclasses.replace(e, text=add_trigger(e.text), label=BACKDOOR_TARGET) for e in eligible]
        subset = [test[i] for i in np.random.default_rng(setting.seed).permutation(len(test))[: setting.eval_subset]]
        _SHARED.update(
            coordinator=built,
            full=built.evaluator,
            subset=CentralEvaluator(built.base, subset, setting.max_length),
            backdoor=CentralEvaluator(built.base, backdoor, setting.max_length)
            if backdoor
            else lambda state: (float("nan"), 0.0),
            backdoor_n=len(backdoor),
            flips=lambda state: trigger_flip_rate(built.base, state, eligible, backdoor, setting.max_length),
        )
    return _SHARED


def trigger_flip_rate(base: Any, state: Any, clean: Sequence[Any], triggered: Sequence[Any], max_length: int) -> float:
    """Share of the sentences the model gets right without the trigger that the trigger turns into the target.

    The raw backdoor success also counts the model's own errors on those
    sentences (a clean model has them too); this counts only what the trigger does.
    """
    from sentinel.client.attacks import BACKDOOR_TARGET
    from sentinel.client.data.batching import iter_batches
    from sentinel.models.global_model import materialise
    from sentinel.models.predictions import classifier_logits

    if not clean:
        return float("nan")
    model = materialise(base, state.deltas, state.head).eval()
    plain, labels = classifier_logits(model, iter_batches(base.tokenizer, list(clean), 64, max_length))
    with_trigger, _ = classifier_logits(model, iter_batches(base.tokenizer, list(triggered), 64, max_length))
    right = plain.argmax(axis=1) == labels
    flipped = with_trigger.argmax(axis=1) == BACKDOOR_TARGET
    return float(flipped[right].mean()) if right.any() else float("nan")


def run_one(setting: Setting, method: str, attack: str | None, fraction: float, out: Path) -> dict[str, Any]:
    """One federated run; returns its summary (also written to ``out/runs``)."""
    timed = attack is None and method in ("sentinel", "sentinel-noval")
    from sentinel.client.node import ensure_simulated_keys, simulated_key_path
    from sentinel.server.attack_scenario import AttackObserver, AttackScenario
    from sentinel.server.coordinator import Coordinator

    shared = _shared(setting)
    base: Coordinator = shared["coordinator"]
    cfg = setting.config(method, attack, fraction)
    n, f = setting.nodes, malicious_count(setting.nodes, fraction) if attack else 0
    flower = flower_strategy(method, n, malicious_count(n, fraction)) if method in FLOWER else None
    name = f"{attack or 'clean'}-{round(100 * fraction)}-{method}"
    record: dict[str, Any] = {"name": name, "method": method, "attack": attack or "clean", "fraction": fraction, "malicious": f}
    if method in FLOWER and flower is None:
        record["skipped"] = f"needs n >= 4f+3 = {4 * malicious_count(n, fraction) + 3} nodes, the run has {n}"
        return record

    @dataclasses.dataclass
    class BenchCoordinator(Coordinator):
        def strategy(self):  # noqa: ANN202
            inner = super().strategy()
            if method == "sentinel-clip":
                return ClippedAggregation(inner, setting_noise, setting.seed)
            return FlowerAggregation(inner, flower) if flower is not None else inner

        def gate_parameters(self):  # noqa: ANN202
            params = super().gate_parameters()
            off = method in ("sentinel-nocoord", "sentinel-clip")  # clipping measured instead of the coordination check
            return dataclasses.replace(params, coordination_z=0.0) if off else params

        def export_best(self, state, directory):  # noqa: ANN001, ANN202 - no adapters needed here
            return None

    setting_noise = float(os.environ.get("SENTINEL_BENCH_CLIP_NOISE", CLIP_NOISE))
    work = out / "work" / name
    coord = BenchCoordinator(config=cfg, out_dir=work, base=base.base, evaluator=shared["subset"], train_sizes=base.train_sizes)
    scenario = AttackScenario(kind=attack, fraction=fraction if attack else 0.0, seed=setting.seed)
    ids = [3001 + 11 * i for i in range(n)]
    keys = ensure_simulated_keys(out / "keys", n)
    app = scenario.client_app(cfg)
    if not timed:  # the two runs that measure validation's overhead train every round themselves
        app = replaying(app, out / "cache" / f"{attack or 'clean'}-{round(100 * fraction)}")
    node_configs = {  # every run signs with the same keys (the replay cache and the signatures agree)
        x: {"partition-id": p, "num-partitions": n, "key-file": str(simulated_key_path(keys, p))} for p, x in enumerate(ids)
    }
    grid = timing_grid({i: app for i in ids}, node_configs)
    started = time.perf_counter()
    result = coord.run(grid, extra_observers=[AttackObserver(scenario, cfg)])
    wall = time.perf_counter() - started
    malicious = set(scenario.malicious_partitions(cfg))
    rounds = [r for r in result.history if r["round"] > 0]
    accuracy, loss = shared["full"](result.state)
    record.update(
        accuracy=accuracy,
        loss=loss,
        backdoor_success=shared["backdoor"](result.state)[0],
        backdoor_flips=shared["flips"](result.state) if "flips" in shared else float("nan"),
        wall_s=wall,
        malicious_partitions=sorted(malicious),
        validator_partitions=[p for p in range(n) if cfg.role_of_partition(p) in cfg.validator_roles],
        round_s=[r["duration_s"] for r in rounds],
        validate_s=validate_seconds_per_round(grid.calls),
        accuracy_by_round=[r["accuracy"] for r in result.history],
        verdicts=_verdict_rows(rounds, malicious),
        checks=[
            {"round": row["round"], "partition": n["partition_id"], "malicious": n["partition_id"] in malicious,
             "cosine": n.get("direction_cosine"), "coordination_z": n.get("coordination_z"),
             "coordination_record": n.get("coordination_record"), "accepted": n["accepted"], "reason": n["reason"]}
            for row in rounds for n in row["per_node"]
        ],
    )
    if method.startswith("sentinel"):
        record.update(_detection(rounds, malicious, n))
    if method == "sentinel-clip":
        record["clip_noise"] = setting_noise
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "runs" / f"{name}.json").write_text(json.dumps(record, indent=1, default=str))
    return record


def _verdict_rows(rounds: Sequence[Mapping[str, Any]], malicious: set[int]) -> list[dict[str, Any]]:
    """Every validator verdict of the run with its measurements (for calibrating the gates offline)."""
    partition = {n["node_id"]: n["partition_id"] for row in rounds for n in row["per_node"]}
    return [
        {
            "round": row["round"],
            "author": node["partition_id"],
            "malicious": node["partition_id"] in malicious,
            "accepted": node["accepted"],
            "cosine": node.get("direction_cosine"),
            "validator": partition.get(v["validator"], v["validator"]),
            **{k: v.get(k) for k in ("accept", "counted", "reason", "loss_change", "loss_change_se", "kl", "entropy_shift")},
        }
        for row in rounds
        for node in row["per_node"]
        for v in node.get("validators", [])
    ]


def _detection(rounds: Sequence[Mapping[str, Any]], malicious: set[int], n: int) -> dict[str, Any]:
    """tp/fp/tn/fn over the run, rejections by gate, false positives with their reasons, cool-downs."""
    totals = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    gates: dict[str, dict[str, int]] = {"tp": {}, "fp": {}}
    false_positives, excluded = [], {"malicious": 0, "honest": 0}
    for row in rounds:
        for k in totals:
            totals[k] += row.get("detection", {}).get(k, 0)
        seen = set()
        for node in row["per_node"]:
            p = node["partition_id"]
            seen.add(p)
            if node["accepted"]:
                continue
            kind = "tp" if p in malicious else "fp"
            for g in gate_of(node["reason"]):
                gates[kind][g] = gates[kind].get(g, 0) + 1
            if kind == "fp":
                false_positives.append({"round": row["round"], "partition": p, "reason": node["reason"][:300]})
        for p in set(range(n)) - seen:
            excluded["malicious" if p in malicious else "honest"] += 1
    pos, neg = totals["tp"] + totals["fn"], totals["fp"] + totals["tn"]
    return {
        "detection": totals,
        "tpr": totals["tp"] / pos if pos else None,
        "fpr": totals["fp"] / neg if neg else None,
        "rejections_by_gate": gates,
        "false_positives": false_positives,
        "excluded_node_rounds": excluded,
        "validator_agreement": [r.get("validator_agreement") for r in rounds],
    }


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")


def _task(args: tuple) -> dict[str, Any]:
    setting, method, attack, fraction, out, resume = args
    name = f"{attack or 'clean'}-{round(100 * fraction)}-{method}"
    path = out / "runs" / f"{name}.json"
    if resume and path.is_file():
        return json.loads(path.read_text())
    return run_one(setting, method, attack, fraction, out)


# ---------------------------------------------------------------- orchestration


def _run_all(tasks: list[tuple], workers: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run ``tasks`` on ``workers`` processes (inline for one), logging each as it finishes."""
    done: list[dict[str, Any]] = []

    def note(r: dict[str, Any]) -> None:
        done.append(r)
        if "skipped" in r:
            log(f"  {r['name']}: skipped ({r['skipped']})")
        else:
            extra = f" TPR {r['tpr']} FPR {r['fpr']}" if r.get("tpr") is not None or r.get("fpr") is not None else ""
            log(f"  {r['name']}: accuracy {r['accuracy']:.4f} backdoor {r['backdoor_success']:.3f}{extra} ({r['wall_s']:.0f} s)")

    if workers <= 1:
        for t in tasks:
            note(_task(t))
        return done
    import multiprocessing

    with ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    ) as pool:
        for fut in as_completed([pool.submit(_task, t) for t in tasks]):
            note(fut.result())
    return done


def best_flower(results: Mapping[tuple, Mapping[str, Any]], setting: Setting) -> str:
    """The Flower strategy with the best mean final accuracy over the attacks at the main fraction."""
    means = {}
    for m in FLOWER:
        accs = [results.get((a, setting.fraction, m), {}).get("accuracy") for a in setting.attacks]
        if all(x is not None for x in accs):
            means[m] = float(np.mean(accs))
    return max(means, key=means.get) if means else "median"


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.2f}"


def summarise(results: Mapping[tuple, Mapping[str, Any]], setting: Setting, best: str) -> tuple[dict[str, Any], str]:
    """The JSON summary (targets included) and the Markdown report."""
    F, A = setting.fraction, setting.attacks
    get = lambda a, fr, m: results.get((a, fr, m), {})  # noqa: E731
    methods = ["sentinel", *FLOWER]
    mean_acc = {
        m: float(np.mean([get(a, F, m)["accuracy"] for a in A])) if all("accuracy" in get(a, F, m) for a in A) else None
        for m in methods
    }
    lines = [
        f"### {round(100 * F)} % malicious ({malicious_count(setting.nodes, F)} of {setting.nodes} nodes): final test accuracy (%)",
        "",
        "| method | clean | "
        + " | ".join(A)
        + " | mean over attacks | backdoor success (backdoor attack) | backdoor success (clean) "
        + "| trigger flips (backdoor attack) | trigger flips (clean) |",
        "|---|" + "---|" * (len(A) + 6),
    ]
    for m in [*methods, "sentinel-noval", "sentinel-nocoord", "sentinel-clip"]:
        if not any(get(a, F, m) for a in ("clean", *A)):
            continue
        cells = [_fmt(get(a, F, m).get("accuracy")) for a in ("clean", *A)]
        cells.append(_fmt(mean_acc.get(m)))
        cells += [_fmt(get("backdoor", F, m).get(k)) for k in ("backdoor_success",)]
        cells += [_fmt(get("clean", F, m).get("backdoor_success"))]
        cells += [_fmt(get("backdoor", F, m).get("backdoor_flips")), _fmt(get("clean", F, m).get("backdoor_flips"))]
        skipped = get("clean", F, m).get("skipped")
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |" + (f" ({skipped})" if skipped else ""))
    lines += [
        "",
        f"### Sentinel's detection at {round(100 * F)} % (over all rounds; positive = rejected)",
        "",
        "| scenario | TPR | FPR | tp/fp/tn/fn | attackers rejected by | honest rejected by | cool-down node-rounds (malicious/honest) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, a in [(m, a) for m in ("sentinel", "sentinel-nocoord", "sentinel-clip") for a in ("clean", *A)]:
        r = get(a, F, m)
        if "detection" not in r:
            continue
        d, g = r["detection"], r["rejections_by_gate"]
        lines.append(
            f"| {a}{'' if m == 'sentinel' else f' ({LABELS[m]})'} | {_fmt(r['tpr'], False)} | {_fmt(r['fpr'], False)} | {d['tp']}/{d['fp']}/{d['tn']}/{d['fn']} | "
            f"{_gates(g['tp'])} | {_gates(g['fp'])} | {r['excluded_node_rounds']['malicious']}/{r['excluded_node_rounds']['honest']} |"
        )
    lines += [
        "",
        f"### Other fractions: Sentinel vs the best Flower strategy of the {round(100 * F)} % table ({LABELS[best]})",
        "",
        "| malicious | attack | Sentinel acc | Sentinel backdoor | Sentinel TPR / FPR | "
        + f"{LABELS[best]} acc | {LABELS[best]} backdoor |",
        "|---|---|---|---|---|---|---|",
    ]
    for fr in sorted({*setting.other_fractions, F}):
        for a in A:
            s, b = get(a, fr, "sentinel"), get(a, fr, best)
            lines.append(
                f"| {round(100 * fr)} % | {a} | {_fmt(s.get('accuracy'))} | {_fmt(s.get('backdoor_success'))} | "
                f"{_fmt(s.get('tpr'), False)} / {_fmt(s.get('fpr'), False)} | {_fmt(b.get('accuracy'))} | {_fmt(b.get('backdoor_success'))} |"
            )
    timing = _timing(results, setting)
    lines += [
        "",
        "### Round time (s, mean over rounds)",
        "",
        f"- clean run: with validation {timing['clean_round_s_validation']:.1f} s, without {timing['clean_round_s_no_validation']:.1f} s: "
        f"**{100 * timing['overhead_end_to_end']:+.1f} %**",
        f"- validate phase (its send-and-receive) over the rest of the round, all Sentinel runs: {100 * timing['overhead_validate_phase']:.1f} %",
    ]
    targets = _targets(results, setting, mean_acc, timing)
    lines += ["", f"### Targets at {round(100 * F)} %", ""] + [
        f"- {'MET' if t['met'] else 'MISSED'}: {t['target']} — {t['measured']}" for t in targets
    ]
    summary = {
        "setting": dataclasses.asdict(setting),
        "best_flower": best,
        "mean_accuracy_over_attacks": mean_acc,
        "timing": timing,
        "targets": targets,
        "runs": {"|".join(map(str, k)): v for k, v in results.items()},
    }
    return summary, "\n".join(lines) + "\n"


def _gates(g: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(g.items(), key=lambda kv: -kv[1])) or "-"


def _timing(results: Mapping[tuple, Mapping[str, Any]], setting: Setting) -> dict[str, float]:
    on = results.get(("clean", setting.fraction, "sentinel"), {}).get("round_s", [])
    off = results.get(("clean", setting.fraction, "sentinel-noval"), {}).get("round_s", [])
    val = [v for r in results.values() if r.get("method") == "sentinel" for v in r.get("validate_s", [])]
    total = [t for r in results.values() if r.get("method") == "sentinel" for t in r.get("round_s", [])]
    rest = sum(total) - sum(val)
    return {
        "clean_round_s_validation": float(np.mean(on)) if on else float("nan"),
        "clean_round_s_no_validation": float(np.mean(off)) if off else float("nan"),
        "overhead_end_to_end": float(np.mean(on) / np.mean(off) - 1) if on and off else float("nan"),
        "overhead_validate_phase": float(sum(val) / rest) if rest > 0 else float("nan"),
    }


def _targets(
    results: Mapping[tuple, Mapping[str, Any]],
    setting: Setting,
    mean_acc: Mapping[str, float | None],
    timing: Mapping[str, float],
) -> list[dict[str, Any]]:
    F, A = setting.fraction, setting.attacks
    ours = {a: results.get((a, F, "sentinel"), {}) for a in ("clean", *A)}
    clean = ours["clean"].get("accuracy", float("nan"))
    drops = {a: 100 * (clean - ours[a]["accuracy"]) for a in A if "accuracy" in ours[a]}
    model = [a for a in A if a in ("sign-flip", "scale", "noise", "malformed")]
    tprs = {a: ours[a].get("tpr") for a in model}
    fprs = {a: ours[a].get("fpr") for a in model}
    robust = {m: mean_acc[m] for m in ROBUST if mean_acc.get(m) is not None}
    bd = ours.get("backdoor", {}).get("backdoor_success")
    bd_clean = ours["clean"].get("backdoor_success")
    flips, flips_clean = ours.get("backdoor", {}).get("backdoor_flips"), ours["clean"].get("backdoor_flips")
    return [
        {
            "target": "accuracy within 1 point of the clean run under every attack",
            "met": bool(drops) and max(drops.values()) <= 1.0,
            "measured": ", ".join(f"{a} {-d:+.1f} pt" for a, d in drops.items()) + f" (clean {100 * clean:.1f} %)",
        },
        {
            "target": "TPR >= 0.99 on model-poisoning attacks",
            "met": all(t is not None and t >= 0.99 for t in tprs.values()),
            "measured": ", ".join(f"{a} {_fmt(t, False)}" for a, t in tprs.items()),
        },
        {
            "target": "FPR <= 0.02 on model-poisoning attacks",
            "met": all(x is not None and x <= 0.02 for x in fprs.values()),
            "measured": ", ".join(f"{a} {_fmt(x, False)}" for a, x in fprs.items()),
        },
        {
            "target": "backdoor success <= 5 %",
            "met": bd is not None and bd <= 0.05,
            "measured": f"{_fmt(bd)} % (the clean run's model: {_fmt(bd_clean)} %); the trigger flips {_fmt(flips)} % of the "
            f"sentences the model gets right without it (clean run: {_fmt(flips_clean)} %)",
        },
        {
            "target": "better than every Flower robust strategy on the mean accuracy over attacks",
            "met": mean_acc.get("sentinel") is not None and bool(robust) and all(mean_acc["sentinel"] > v for v in robust.values()),
            "measured": f"Sentinel {_fmt(mean_acc.get('sentinel'))} vs "
            + (", ".join(f"{LABELS[m]} {_fmt(v)}" for m, v in robust.items()) or "no Flower strategy run"),
        },
        {
            "target": "validation adds <= 20 % to round time at k = 3",
            "met": timing["overhead_end_to_end"] <= 0.20,
            "measured": f"{100 * timing['overhead_end_to_end']:+.1f} % end to end (clean run); validate phase {100 * timing['overhead_validate_phase']:.1f} % of the rest",
        },
    ]


def plot(results: Mapping[tuple, Mapping[str, Any]], setting: Setting, best: str, path: Path) -> None:
    """Final accuracy and backdoor success per method at the main fraction; Sentinel vs best Flower over fractions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    F, A = setting.fraction, setting.attacks
    scen = ["clean", *A]
    methods = [m for m in ["sentinel", *FLOWER] if any("accuracy" in results.get((a, F, m), {}) for a in scen)]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    w = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        axes[0].bar(
            np.arange(len(scen)) + i * w,
            [100 * results.get((a, F, m), {}).get("accuracy", np.nan) for a in scen],
            w,
            label=LABELS[m],
        )
        axes[1].bar(i, 100 * results.get(("backdoor", F, m), {}).get("backdoor_success", np.nan), label=LABELS[m])
    axes[0].set_xticks(np.arange(len(scen)) + 0.4 - w / 2, scen)
    axes[0].set_ylabel("final test accuracy (%)")
    axes[0].set_ylim(bottom=40)
    axes[0].set_title(f"{round(100 * F)} % malicious")
    axes[0].legend(fontsize=7)
    axes[1].set_xticks(range(len(methods)), [LABELS[m] for m in methods], rotation=30, ha="right", fontsize=8)
    axes[1].axhline(5, color="k", ls="--", lw=0.8)
    axes[1].set_ylabel("backdoor success (%)")
    axes[1].set_title(f"backdoor attack, {round(100 * F)} % malicious")
    fractions = sorted({*setting.other_fractions, F})
    for m in ("sentinel", best):
        ys = [100 * np.mean([results.get((a, fr, m), {}).get("accuracy", np.nan) for a in A]) for fr in fractions]
        axes[2].plot([100 * fr for fr in fractions], ys, marker="o", label=LABELS[m])
    axes[2].set_xlabel("malicious nodes (%)")
    axes[2].set_ylabel("mean final accuracy over attacks (%)")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/robustness"), help="Directory for JSON, Markdown and plot.")
    parser.add_argument("--rounds", type=int, default=None, help="Rounds per run (default 5; 1 with --quick).")
    parser.add_argument("--nodes", type=int, default=None, help="Nodes per run (default 10; 4 with --quick).")
    parser.add_argument("--quick", action="store_true", help="Smoke run: tiny-bert, 4 nodes, 1 round.")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="UCI Sentiment Labelled Sentences folder.")
    parser.add_argument("--local-steps", type=int, default=None)
    parser.add_argument("--eval-subset", type=int, default=None, help="Test examples for the per-round accuracy.")
    parser.add_argument(
        "--workers", type=int, default=None, help="Worker processes, one torch thread each (default 2; 1 with --quick)."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        default=None,
        help="Comma-separated subset of methods (sentinel, sentinel-noval, fedavg, krum, ...); default all.",
    )
    parser.add_argument("--attacks", default=None, help=f"Comma-separated subset of attacks (default {','.join(ATTACKS)}).")
    parser.add_argument(
        "--other-fractions", default=None, help="Comma-separated other attacker fractions (default 0.1,0.2; '' for none)."
    )
    parser.add_argument("--no-clean", action="store_true", help="Skip the clean (no attack) runs.")
    parser.add_argument(
        "--clip-noise",
        type=float,
        default=None,
        help="sentinel-clip: Gaussian noise on the aggregate, × the clipping bound (default 0).",
    )
    parser.add_argument("--resume", action="store_true", help="Reuse finished runs found in --out/runs.")
    parser.add_argument("--report-only", action="store_true", help="Only write the report from the runs in --out/runs.")
    args = parser.parse_args(argv)

    quick = dict(model="tiny-bert", nodes=4, rounds=1, rank=2, local_steps=2, eval_subset=64, max_length=96) if args.quick else {}
    overrides = {
        k: v
        for k, v in {
            "nodes": args.nodes,
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "eval_subset": args.eval_subset,
            "attacks": tuple(a for a in args.attacks.split(",") if a) if args.attacks is not None else None,
            "other_fractions": tuple(float(x) for x in args.other_fractions.split(",") if x)
            if args.other_fractions is not None
            else None,
        }.items()
        if v is not None
    }
    setting = Setting(**{**quick, **overrides, "data": args.data, "seed": args.seed})
    workers = args.workers or (1 if args.quick else 2)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")
    if args.clip_noise is not None:  # read by the worker processes
        os.environ["SENTINEL_BENCH_CLIP_NOISE"] = str(args.clip_noise)
    started = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - started:7.0f} s] {s}", flush=True)  # noqa: E731
    F = setting.fraction
    n_bad = malicious_count(setting.nodes, F)
    log(f"setting: {setting}")
    log(
        f"cuts for time: LoRA rank {setting.rank}, {setting.local_steps} local steps of batch {setting.batch_size}, max_length "
        f"{setting.max_length}, per-round accuracy on {setting.eval_subset} test examples (final on the full test set); "
        f"Bulyan needs n >= {4 * n_bad + 3} at {round(100 * F)} %"
    )
    task = lambda m, a, fr: (setting, m, a, fr, out, args.resume)  # noqa: E731
    # Priority order, so a run stopped early still answers the main questions: the overhead pair side by side,
    # then each attack at the main fraction (Sentinel, then Flower's rules), the clean Flower runs, other fractions.
    order = ["sentinel", "fedavg", "median", "krum", "trimmedavg", "multikrum", "bulyan"]
    tasks = [task("sentinel", None, F), task("sentinel-noval", None, F)]
    tasks += [task(m, a, F) for a in setting.attacks for m in order]
    tasks += [task(m, None, F) for m in order[1:]]
    variants = [m for m in ("sentinel-nocoord", "sentinel-clip") if args.methods and m in args.methods.split(",")]
    tasks += [task(m, a, F) for m in variants for a in (None, *setting.attacks)]  # ablations: only when asked for
    tasks += [task("sentinel", a, fr) for fr in setting.other_fractions for a in setting.attacks]
    chosen = set(args.methods.split(",")) if args.methods else None
    tasks = [t for t in tasks if (chosen is None or t[1] in chosen) and not (args.no_clean and t[2] is None)]
    results: dict[tuple, dict[str, Any]] = {}
    if args.report_only:
        found = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
        tasks = []
    else:
        found = _run_all(tasks, workers, log)
    for r in found:
        results[(r["attack"], r["fraction"], r["method"])] = r
    best = best_flower(results, setting)
    log(f"best Flower strategy at {round(100 * F)} %: {LABELS[best]}")
    more = [task(best, a, fr) for fr in setting.other_fractions for a in setting.attacks] if tasks else []
    more = [t for t in more if chosen is None or t[1] in chosen]
    for r in _run_all(more, workers, log):
        results[(r["attack"], r["fraction"], r["method"])] = r
    summary, report = summarise(results, setting, best)
    summary["wall_s"] = time.perf_counter() - started
    header = (
        f"## Robustness benchmark: {setting.model}, UCI sentiment by domain, {setting.nodes} nodes, {setting.rounds} rounds, "
        f"LoRA rank {setting.rank}, seed {setting.seed} (wall time {summary['wall_s'] / 60:.1f} min)\n\n"
    )
    (out / "robustness.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "robustness.md").write_text(header + report)
    plot(results, setting, best, out / "robustness.png")
    print(header + report)
    log(f"wrote {out / 'robustness.json'}, {out / 'robustness.md'}, {out / 'robustness.png'}")


if __name__ == "__main__":
    sys.exit(main())
