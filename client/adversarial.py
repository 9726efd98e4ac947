"""Misbehaving nodes for red-team tests of the coordinator's defences.

A real federation must assume some nodes ignore the rules. These ClientApps
behave like an honest node except for one deliberate fault, so tests (and
operators rehearsing an incident) can check that the coordinator catches it:

- ``consent_ignoring_app``: trains every head, ignoring its permitted set.
- ``signature_forging_app``: signs its update with a key that is not its own.
- ``scaling_inflating_app``: reports a huge LoRA scaling to amplify its update.
- ``malformed_update_app``: sends a validly signed update that breaks one rule
  of the message schema (``MALFORMED_KINDS``: a missing module, a wrong shape,
  NaN/Inf, an extra module, an inflated example count, a stale contract version, ...).
- ``profile_lying_app``: answers the profile handshake with a bad role, key or partition.
- ``off_frame_app``: under a shared-frame design, sends a frozen factor off the round's frame.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Final

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from sentinel.client import app as honest
from sentinel.client.node import node_identity
from sentinel.ledger.crypto import generate_private_key
from sentinel.ledger.recorder import update_submitted_payload
from sentinel.ledger.signing import sign_payload
from sentinel.models.lora import lora_pairs
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record


def node_key_of(context: Context, msg: Message):  # noqa: ANN201 - the node's Ed25519 private key
    """The signing key of the node ``context`` describes, for the run ``msg`` belongs to."""
    from sentinel.client.node import node_key

    ident = node_identity(context)
    return node_key(ident.partition_id, ident.key_file, int(msg.content[P.REC_CONFIG].get(P.C_RUN_SEED, 0)))


def _misbehaves(context: Context, partitions: Collection[int]) -> bool:
    ident = node_identity(context)
    return ident.partition_id in partitions or bool(context.node_config.get("misbehave", False))


def _app_with_train(
    train: Callable[[Message, Context], Message], profile: Callable[[Message, Context], Message] = honest.profile
) -> ClientApp:
    """An honest node's app with its train (and optionally profile) handler replaced."""
    app = ClientApp()
    app.query("profile")(profile)
    app.evaluate()(honest.evaluate)
    app.evaluate("validate")(honest.validate)
    app.train()(train)
    return app


def consent_ignoring_app(partitions: Collection[int]) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` (or with node config ``misbehave=true``) ignore consent."""
    partitions = frozenset(partitions)

    def train(msg: Message, context: Context) -> Message:
        if _misbehaves(context, partitions):
            cfg = ConfigRecord(dict(msg.content[P.REC_CONFIG]))
            cfg[P.C_RESTRICTED] = False  # train outside the permitted set
            msg.content[P.REC_CONFIG] = cfg
        return honest.train(msg, context)

    return _app_with_train(train)


def signature_forging_app(partitions: Collection[int]) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` sign their updates with a foreign key."""
    partitions = frozenset(partitions)

    def train(msg: Message, context: Context) -> Message:
        reply = honest.train(msg, context)
        if _misbehaves(context, partitions):
            signed = reply.content[P.REC_SIGNATURE]
            round_ = int(msg.content[P.REC_CONFIG][P.C_ROUND])
            examples = int(reply.content[P.REC_METRICS][P.M_EXAMPLES])
            payload = update_submitted_payload(honest.key_id(node_key_of(context, msg)), round_, str(signed[P.S_CONTENT_HASH]), examples)
            signed[P.S_SIGNATURE] = sign_payload(generate_private_key(), payload)
        return reply

    return _app_with_train(train)


def scaling_inflating_app(partitions: Collection[int], factor: float = 500.0) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` claim a LoRA scaling ``factor`` times the real one."""
    partitions = frozenset(partitions)

    def train(msg: Message, context: Context) -> Message:
        reply = honest.train(msg, context)
        if _misbehaves(context, partitions):
            metrics = reply.content[P.REC_METRICS]
            metrics[P.M_SCALING] = float(metrics[P.M_SCALING]) * factor
        return reply

    return _app_with_train(train)


Arrays = dict[str, np.ndarray]
Mutation = Callable[[Arrays, dict[str, int | float], Arrays], None]


def _first_pair(arrays: Arrays) -> tuple[str, str]:
    pair = next(iter(lora_pairs(arrays).values()))
    return pair.a_key, pair.b_key


def _head_key(arrays: Arrays) -> str:
    return next(k for k in arrays if ".lora_" not in k)


def _drop_module(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    a, b = _first_pair(arrays)
    del arrays[a], arrays[b]


def _drop_lora_b(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    del arrays[_first_pair(arrays)[1]]


def _wrong_input_dim(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    a, _ = _first_pair(arrays)
    arrays[a] = arrays[a][:, :-1].copy()


def _broadcast_b(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    _, b = _first_pair(arrays)
    arrays[b] = np.ones((1, arrays[b].shape[1]), dtype=np.float32)  # numpy would broadcast it into every row


def _nan_head(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    key = _head_key(arrays)
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = np.nan


def _inf_lora(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    a, _ = _first_pair(arrays)
    arrays[a] = arrays[a].copy()
    arrays[a].flat[0] = np.inf


def _wrong_head_shape(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    key = _head_key(arrays)
    arrays[key] = np.zeros((arrays[key].shape[0] + 1, *arrays[key].shape[1:]), dtype=np.float32)


def _extra_module(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    arrays["base_model.model.smuggled.lora_A.weight"] = np.zeros((2048, 2048), dtype=np.float32)  # 16 MB
    arrays["base_model.model.smuggled.lora_B.weight"] = np.zeros((2048, 2048), dtype=np.float32)


def _extra_head_key(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    arrays["base_model.model.classifier.smuggled"] = np.zeros(4, dtype=np.float32)


def _float64(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    a, _ = _first_pair(arrays)
    arrays[a] = arrays[a].astype(np.float64)


def _huge_values(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    # B scaled until its largest entry is 1e18: the update keeps its directions (so under a shared-frame
    # design it stays in the frame, and only its norm gives it away) and ‖ΔW‖ grows by ~1e18 / max|B|.
    for key in lora_pairs(arrays).values():
        b = arrays[key.b_key]
        arrays[key.b_key] = (b * (1e18 / max(float(np.abs(b).max()), 1e-30))).astype(b.dtype)


def _negative_examples(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    metrics[P.M_EXAMPLES] = -5000


def _inflated_examples(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    metrics[P.M_EXAMPLES] = 10**6


def _stale_contract(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    metrics[P.M_CONTRACT_VERSION] = max(0, int(metrics[P.M_CONTRACT_VERSION]) - 1)


def _entropy_out_of_range(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
    importance[P.KEY_ENTROPY_NORMALISED] = np.full_like(importance[P.KEY_ENTROPY_NORMALISED], 5.0)


MALFORMED_KINDS: Final[dict[str, Mutation]] = {
    "missing-module": _drop_module,
    "missing-lora-b": _drop_lora_b,
    "wrong-input-dim": _wrong_input_dim,
    "broadcast-b": _broadcast_b,
    "nan-head": _nan_head,
    "inf-lora": _inf_lora,
    "wrong-head-shape": _wrong_head_shape,
    "extra-module": _extra_module,
    "extra-head-key": _extra_head_key,
    "float64": _float64,
    "huge-values": _huge_values,
    "negative-examples": _negative_examples,
    "inflated-examples": _inflated_examples,
    "stale-contract": _stale_contract,
    "entropy-out-of-range": _entropy_out_of_range,
}
"""Ways to break the message schema, each applied to an honest update and then validly re-signed."""


def malformed_update_app(kind: str, partitions: Collection[int]) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` send a validly signed update broken in the way ``kind`` names."""
    if kind not in MALFORMED_KINDS:
        raise ValueError(f"`kind` {kind!r} is not one of {', '.join(MALFORMED_KINDS)}")
    mutate, partitions = MALFORMED_KINDS[kind], frozenset(partitions)

    def train(msg: Message, context: Context) -> Message:
        reply = honest.train(msg, context)
        if not _misbehaves(context, partitions):
            return reply
        return _resigned(msg, context, reply, mutate)

    return _app_with_train(train)


def _resigned(msg: Message, context: Context, reply: Message, mutate: Mutation) -> Message:
    """An honest train ``reply`` changed by ``mutate`` (in place: arrays, metrics, importance), then validly re-signed."""
    arrays = from_array_record(reply.content[P.REC_ARRAYS])
    metrics = {k: v for k, v in reply.content[P.REC_METRICS].items()}
    importance = from_array_record(reply.content[P.REC_IMPORTANCE])
    mutate(arrays, metrics, importance)  # type: ignore[arg-type]
    return honest.signed_update_reply(msg, context, arrays, metrics, importance)  # type: ignore[arg-type]


def off_frame_app(partitions: Collection[int]) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` replace the factor the shared frame froze by random directions.

    Validly signed and well-formed (same shapes, finite, a norm like the honest
    one): only the frame check (``server.frame_aggregation.frame_problem``) can
    tell that its update would raise the global ΔW's rank past the frame's.
    """
    partitions = frozenset(partitions)

    def train(msg: Message, context: Context) -> Message:
        reply = honest.train(msg, context)
        factor = str(msg.content[P.REC_CONFIG].get(P.C_TRAIN_FACTOR, ""))
        if not factor or not _misbehaves(context, partitions):
            return reply

        def off_frame(arrays: Arrays, metrics: dict[str, int | float], importance: Arrays) -> None:
            rng = np.random.default_rng(0)
            for pair in lora_pairs(arrays).values():
                key = pair.a_key if factor == "b" else pair.b_key
                frozen = arrays[key]
                noise = rng.standard_normal(frozen.shape)
                arrays[key] = (noise * np.linalg.norm(frozen) / max(np.linalg.norm(noise), 1e-12)).astype(frozen.dtype)

        return _resigned(msg, context, reply, off_frame)

    return _app_with_train(train)


PROFILE_LIES: Final[dict[str, tuple[str, object]]] = {
    "admin-role": (P.P_ROLE, "admin"),
    "claims-central": (P.P_ROLE, "central"),
    "bad-public-key": (P.P_PUBLIC_KEY, "not-a-key"),
    "non-integer-partition": (P.P_PARTITION_ID, "zero"),
    "foreign-partition": (P.P_PARTITION_ID, 99),
}
"""Profile handshake lies: the profile field each one changes and the value it claims."""


def profile_lying_app(kind: str, partitions: Collection[int]) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` lie in the profile handshake as ``kind`` names."""
    if kind not in PROFILE_LIES:
        raise ValueError(f"`kind` {kind!r} is not one of {', '.join(PROFILE_LIES)}")
    field, value = PROFILE_LIES[kind]
    partitions = frozenset(partitions)

    def profile(msg: Message, context: Context) -> Message:
        reply = honest.profile(msg, context)
        if _misbehaves(context, partitions):
            record = ConfigRecord(dict(reply.content[P.REC_PROFILE]))
            record[field] = value  # type: ignore[assignment]
            return Message(RecordDict({P.REC_PROFILE: record}), reply_to=msg)
        return reply

    return _app_with_train(honest.train, profile)
