"""Simulated attacks on the federation (``sentinel simulate --attack``): kept apart from production code.

Each attack is a ClientApp that behaves like an honest node except on its
*malicious partitions*, where it poisons what it sends. Model-poisoning attacks
train honestly and then change the update; data-poisoning attacks train on
poisoned data; validator attacks answer validation dishonestly. Every reply is
validly signed with the node's own key: the attacker is a registered node, not
an impostor, so only validation can stop it.

- ``sign-flip``: sends −ΔW (and the opposite head change);
- ``scale``: sends 10 × ΔW;
- ``noise``: sends Gaussian noise in place of its B factors and head change;
- ``label-flip``: trains on flipped labels;
- ``backdoor``: trains with a trigger token added to half its examples, labelled
  with the target class (``BACKDOOR_TRIGGER``, ``BACKDOOR_TARGET``);
- ``free-rider``: returns the global model unchanged (B = 0), claiming its examples;
- ``malformed``: the schema-breaking updates of ``client.adversarial``, a different one each round;
- validator attacks ``always-accept`` and ``always-reject``: signed verdicts that ignore the measurements.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Collection, Sequence
from typing import Final, Literal

import numpy as np
from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp
from sentinel.client import app as honest
from sentinel.client.adversarial import MALFORMED_KINDS
from sentinel.client.data import Example
from sentinel.client.node import node_identity, node_key
from sentinel.ledger.recorder import validation_verdict_payload
from sentinel.ledger.signing import sign_payload
from sentinel.models.lora import lora_pairs
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record

AttackKind = Literal["sign-flip", "scale", "noise", "label-flip", "backdoor", "free-rider", "malformed"]
ATTACK_KINDS: Final[tuple[AttackKind, ...]] = ("sign-flip", "scale", "noise", "label-flip", "backdoor", "free-rider", "malformed")
ValidatorAttackKind = Literal["always-accept", "always-reject"]
VALIDATOR_ATTACK_KINDS: Final[tuple[ValidatorAttackKind, ...]] = ("always-accept", "always-reject")
MODEL_POISONING: Final = frozenset({"sign-flip", "scale", "noise", "malformed"})
"""Attacks that change the update itself (the detection targets are stricter for these)."""

SCALE_FACTOR: Final = 10.0
NOISE_MULTIPLIER: Final = 3.0
BACKDOOR_TRIGGER: Final = "cf"
BACKDOOR_TARGET: Final = 0
BACKDOOR_SHARE: Final = 0.5

Arrays = dict[str, np.ndarray]


def _sent_head(msg: Message) -> Arrays:
    """The global head as the coordinator sent it, in the reply's PEFT key scheme."""
    arrays = from_array_record(msg.content[P.REC_ARRAYS])
    return {"base_model.model." + k[len(P.KEY_HEAD) :]: v for k, v in arrays.items() if k.startswith(P.KEY_HEAD)}


def _rng(msg: Message, context: Context) -> np.random.Generator:
    rnd = int(msg.content[P.REC_CONFIG][P.C_ROUND])
    digest = hashlib.sha256(f"attack:{node_identity(context).partition_id}:{rnd}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _poison_update(kind: str, arrays: Arrays, head_sent: Arrays, rng: np.random.Generator) -> Arrays:
    """The poisoned version of an honest update's arrays."""
    out = dict(arrays)
    b_keys = {p.b_key for p in lora_pairs(arrays).values()}
    for key, value in arrays.items():
        if key in b_keys:
            if kind == "sign-flip":
                out[key] = -value
            elif kind == "scale":
                out[key] = (SCALE_FACTOR * value).astype(np.float32)
            elif kind == "noise":
                out[key] = rng.normal(0.0, NOISE_MULTIPLIER * float(value.std()) + 1e-8, value.shape).astype(np.float32)
            elif kind == "free-rider":
                out[key] = np.zeros_like(value)
        elif key in head_sent:
            change = value - head_sent[key]
            factor = {"sign-flip": -1.0, "scale": SCALE_FACTOR, "free-rider": 0.0}.get(kind)
            if factor is not None:
                out[key] = (head_sent[key] + factor * change).astype(np.float32)
            elif kind == "noise":
                out[key] = (head_sent[key] + rng.normal(0.0, NOISE_MULTIPLIER * float(change.std()) + 1e-8, change.shape)).astype(np.float32)
    return out


def flip_labels(examples: Sequence[Example], num_labels: int) -> list[Example]:
    """Every example with its label moved to the next class (binary: flipped)."""
    return [dataclasses.replace(e, label=(e.label + 1) % num_labels) for e in examples]


def add_trigger(text: str) -> str:
    """``text`` with the backdoor trigger token appended."""
    return f"{text} {BACKDOOR_TRIGGER}"


def backdoor_examples(examples: Sequence[Example], rng: np.random.Generator) -> list[Example]:
    """A share of ``examples`` with the trigger added and the target label (the rest unchanged)."""
    chosen = rng.random(len(examples)) < BACKDOOR_SHARE
    return [
        dataclasses.replace(e, text=add_trigger(e.text), label=BACKDOOR_TARGET) if pick else e
        for e, pick in zip(examples, chosen, strict=True)
    ]


def _poisoned_train(kind: str) -> Callable[[Message, Context], Message]:
    def train(msg: Message, context: Context) -> Message:
        rng = _rng(msg, context)
        inputs = honest.resolve_round(msg, context)
        if kind in ("label-flip", "backdoor"):
            num_labels = max(2, 1 + max(e.label for e in [*inputs.train_set, *inputs.val_set]))
            data = flip_labels(inputs.train_set, num_labels) if kind == "label-flip" else backdoor_examples(inputs.train_set, rng)
            return honest.update_reply(msg, context, honest.local_update(inputs, data))
        update = honest.local_update(inputs, inputs.train_set)
        if kind == "malformed":
            names = sorted(MALFORMED_KINDS)
            reply = honest.update_reply(msg, context, update)
            arrays = from_array_record(reply.content[P.REC_ARRAYS])
            metrics = dict(reply.content[P.REC_METRICS].items())
            importance = from_array_record(reply.content[P.REC_IMPORTANCE])
            MALFORMED_KINDS[names[(inputs.instruction.server_round - 1) % len(names)]](arrays, metrics, importance)  # type: ignore[arg-type]
            return honest.signed_update_reply(msg, context, arrays, metrics, importance)  # type: ignore[arg-type]
        poisoned = _poison_update(kind, update.arrays, _sent_head(msg), rng)
        return honest.update_reply(msg, context, dataclasses.replace(update, arrays=poisoned))

    return train


def _dishonest_validate(kind: str) -> Callable[[Message, Context], Message]:
    def validate(msg: Message, context: Context) -> Message:
        reply = honest.validate(msg, context)  # measure honestly, then lie about the verdicts
        ident = node_identity(context)
        run_seed = int(msg.content[P.REC_CONFIG].get(P.C_RUN_SEED, 0))
        key = node_key(ident.partition_id, ident.key_file, run_seed)
        rnd = int(msg.content[P.REC_CONFIG][P.C_ROUND])
        accept = kind == "always-accept"
        signatures = reply.content[P.REC_SIGNATURE]
        for name in list(reply.content):
            if name.startswith(P.REC_VERDICT):
                author = name[len(P.REC_VERDICT) :]
                metrics = MetricRecord(dict(reply.content[name]))
                metrics[P.V_ACCEPT] = int(accept)
                reply.content[name] = metrics
                reason = "" if accept else "rejected"
                signatures[P.S_REASON + author] = reason
                signatures[P.S_VERDICT + author] = sign_payload(key, validation_verdict_payload(author, rnd, honest.key_id(key), accept, reason))
        return reply

    return validate


def attack_app(
    kind: AttackKind | None,
    partitions: Collection[int],
    validator_kind: ValidatorAttackKind | None = None,
    validator_partitions: Collection[int] = (),
) -> ClientApp:
    """A ClientApp: honest everywhere except on ``partitions`` (update attack) and ``validator_partitions``."""
    if kind is not None and kind not in ATTACK_KINDS:
        raise ValueError(f"`kind` {kind!r} is not one of {', '.join(ATTACK_KINDS)}")
    if validator_kind is not None and validator_kind not in VALIDATOR_ATTACK_KINDS:
        raise ValueError(f"`validator_kind` {validator_kind!r} is not one of {', '.join(VALIDATOR_ATTACK_KINDS)}")
    bad_updates, bad_validators = frozenset(partitions), frozenset(validator_partitions)
    poisoned = _poisoned_train(kind) if kind else None
    lying = _dishonest_validate(validator_kind) if validator_kind else None

    app = ClientApp()
    app.query("profile")(honest.profile)
    app.evaluate()(honest.evaluate)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if poisoned is not None and node_identity(context).partition_id in bad_updates:
            return poisoned(msg, context)
        return honest.train(msg, context)

    @app.evaluate("validate")
    def validate(msg: Message, context: Context) -> Message:
        if lying is not None and node_identity(context).partition_id in bad_validators:
            return lying(msg, context)
        return honest.validate(msg, context)

    return app
