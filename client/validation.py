"""A node as validator: apply each candidate update to the exact global model and judge it.

The validate message carries the exact global state (dense ΔW, head and, when
federated plasticity has pruned heads, the global head mask) and one or more
candidate updates (other nodes' replies, as the coordinator received them). The
mask is applied to the global and every candidate model alike, so pruned heads
contribute nothing to what is judged, as on the nodes that train and serve it.
For each candidate the node measures, on its own validation data, the
change of loss and accuracy, the per-head attention-entropy shift and the KL
divergence of the outputs (``models.validation``), and decides:

- **loss gate**: reject when validation loss rises significantly (by more than
  the tolerance plus two standard errors of the paired per-example change; the
  coordinator may re-read a rejection against the round, ``server.validation``);
- **entropy gate**: reject when the candidate's entropy shift is an outlier
  among this message's candidates (robust z-score of its log above the
  threshold and at least ``entropy_min_ratio`` (governance) × their median,
  ``models.entropy_calibration``; with too few candidates to calibrate, the
  coordinator's round-wide gate, calibrated over all of the round's authors,
  decides alone).

Each verdict is signed by the node over the ledger's ``validation_verdict``
payload, so the coordinator cannot forge or alter it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from pydantic import BaseModel, ConfigDict, Field
from sentinel.client.data import Example
from sentinel.client.data.batching import iter_length_sorted_batches
from sentinel.ledger.crypto import Ed25519PrivateKey
from sentinel.ledger.recorder import validation_verdict_payload
from sentinel.ledger.signing import sign_payload
from sentinel.models.components import model_layout
from sentinel.models.deltas import oriented_weight_deltas
from sentinel.models.entropy_calibration import log_shift_z
from sentinel.models.global_model import materialise
from sentinel.models.head_mask import apply_head_mask, check_mask
from sentinel.models.loading import LoadedModel
from sentinel.models.lora import split_adapter_arrays
from sentinel.models.validation import (
    LOSS_GATE_SIGMAS,
    Batch,
    CandidateMeasurement,
    ModelReading,
    compare,
    loss_gate_fails,
    read_model,
)
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, parse_dense_state, to_array_record


class GateSettings(BaseModel):
    """The gate parameters a validate message carries (set by governance)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    loss_tolerance: float = Field(alias=P.C_LOSS_TOLERANCE, ge=0)
    entropy_z: float = Field(alias=P.C_ENTROPY_Z, gt=0)
    entropy_min_ratio: float = Field(alias=P.C_ENTROPY_MIN_RATIO, ge=1)
    server_round: int = Field(alias=P.C_ROUND, ge=1)
    batch_size: int = Field(alias=P.C_BATCH, ge=1)
    max_length: int = Field(alias=P.C_MAX_LENGTH, ge=4)


def candidate_deltas(
    deltas: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(ΔW + s·B·A for each module the candidate adapts, the candidate's head parameters)."""
    pairs, cand_head = split_adapter_arrays(dict(arrays))
    merged: dict[str, np.ndarray] = {}
    for module, (a, b) in pairs.items():
        if module not in deltas:
            raise ValueError(f"candidate adapts module `{module}`, which the global model does not have")
        merged[module] = (
            deltas[module].astype(np.float64) + P.LORA_ALPHA_PER_RANK * (b.astype(np.float64) @ a.astype(np.float64))
        ).astype(np.float32)
    return merged, cand_head


def candidate_model(
    base: LoadedModel, deltas: dict[str, np.ndarray], head: dict[str, np.ndarray], arrays: dict[str, np.ndarray]
) -> torch.nn.Module:
    """The global model with one candidate update applied: ΔW + s·B·A per module, the candidate's head (a new copy)."""
    merged, cand_head = candidate_deltas(deltas, arrays)
    return materialise(base, {**deltas, **merged}, {**head, **cand_head})


class CandidateSwap:
    """One copy of the global model, into which each candidate is written in place and out of which it is restored.

    A fresh copy per candidate (:func:`candidate_model`: a deep copy of the
    base model) was 15 % of a validate call on MiniLM. The weights written are
    the base weight plus the candidate's ΔW + s·B·A, the same float32 sum
    :func:`candidate_model` computes, so a reading is bit-identical to one of
    its copy; on leaving, every weight the candidate touched is restored.
    """

    def __init__(self, base: LoadedModel, deltas: dict[str, np.ndarray], head: dict[str, np.ndarray], device: torch.device) -> None:
        self.base = base
        self.deltas = deltas
        self.model = materialise(base, deltas, head).to(device)

    @contextmanager
    def applied(self, arrays: Mapping[str, np.ndarray]) -> Iterator[torch.nn.Module]:
        """The global model with the candidate ``arrays`` applied, for the duration of the ``with`` block."""
        merged, cand_head = candidate_deltas(self.deltas, arrays)
        targets = oriented_weight_deltas(self.model, merged)
        sources = oriented_weight_deltas(self.base.model, merged)
        params = dict(self.model.named_parameters())
        for name in cand_head:
            if name not in params:
                raise KeyError(f"global head parameter `{name}` does not exist in model {self.base.name}")
        saved = [(t, t.detach().clone()) for t, _ in targets] + [(params[n], params[n].detach().clone()) for n in cand_head]
        try:
            with torch.no_grad():
                for (target, _), (weight, update) in zip(targets, sources, strict=True):
                    target.copy_(weight.detach().clone().add_(update))
                for name, value in cand_head.items():
                    params[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
            yield self.model
        finally:
            with torch.no_grad():
                for tensor, value in saved:
                    tensor.copy_(value)


def masked_reading(model: torch.nn.Module, batches: Sequence[Batch], mask: np.ndarray | None) -> ModelReading:
    """`read_model` of ``model`` with the global head mask applied (none: all heads on); the model is left unmasked.

    A pruned head's attention is still computed (the mask gates its output), so
    its entropy is set to 0 in the reading: a change to a pruned head's query or
    key weights, which cannot change the model's outputs, shifts no entropy.
    """
    if mask is None:
        return read_model(model, batches)
    with apply_head_mask(model, mask):
        reading = read_model(model, batches)
    return dataclasses.replace(reading, entropy=np.where(mask > 0, reading.entropy, 0.0).astype(reading.entropy.dtype))


def judge(measurements: dict[str, CandidateMeasurement], gates: GateSettings) -> dict[str, str]:
    """Author → '' (accept) or the reason for rejecting, by the loss gate and the local entropy gate."""
    authors = sorted(measurements)
    shifts = [measurements[a].entropy_shift_norm for a in authors]
    z = dict(zip(authors, log_shift_z(shifts, gates.entropy_z, gates.entropy_min_ratio), strict=True))
    reasons: dict[str, str] = {}
    for author in authors:
        m = measurements[author]
        if loss_gate_fails(m, gates.loss_tolerance):
            reasons[author] = (
                f"loss gate: validation loss {m.loss_change:+.4f} nats > tolerance {gates.loss_tolerance:g} "
                f"+ {LOSS_GATE_SIGMAS:g} SE ({m.loss_change_se:.4f})"
            )
        elif z[author] > gates.entropy_z:
            reasons[author] = f"entropy gate: shift z-score {z[author]:.1f} > {gates.entropy_z:g}"
        else:
            reasons[author] = ""
    return reasons


def validate_candidates(
    content: RecordDict,
    base: LoadedModel,
    val_set: list[Example],
    instruction: object,
    node_id: str,
    key: Ed25519PrivateKey,
    device: torch.device,
) -> RecordDict:
    """The reply to a validate message: per candidate its measurements, the verdict and its signature.

    ``node_id`` is this validator's key id; candidates are named by their authors' key ids.
    """
    gates = GateSettings.model_validate(dict(content[P.REC_CONFIG]))
    if not val_set:
        raise ValueError("this node has no validation data, so it cannot validate")
    arrays = from_array_record(content[P.REC_GLOBAL])
    deltas, head = parse_dense_state(arrays)
    mask = check_mask(arrays[P.KEY_HEAD_MASK], model_layout(base.model)) if P.KEY_HEAD_MASK in arrays else None
    batches = list(iter_length_sorted_batches(base.tokenizer, val_set, gates.batch_size * 2, gates.max_length))
    swap = CandidateSwap(base, deltas, head, device)
    reference = masked_reading(swap.model, batches, mask)
    measurements: dict[str, CandidateMeasurement] = {}
    for name in content:
        if not name.startswith(P.REC_CANDIDATE):
            continue
        author = name[len(P.REC_CANDIDATE) :]
        with swap.applied(from_array_record(content[name])) as model:
            measurements[author] = compare(reference, masked_reading(model, batches, mask))
    reasons = judge(measurements, gates)
    reply = RecordDict()
    signatures = ConfigRecord()
    for author, m in measurements.items():
        accept = not reasons[author]
        reply[P.REC_VERDICT + author] = MetricRecord(
            {
                P.V_ACCEPT: int(accept),
                P.V_LOSS_CHANGE: m.loss_change,
                P.V_ACCURACY_CHANGE: m.accuracy_change,
                P.V_KL: m.kl,
                P.V_SHIFT_NORM: m.entropy_shift_norm,
                P.V_EXAMPLES: len(val_set),
            }
        )
        reply[P.REC_ENTROPY_SHIFT + author] = to_array_record({P.KEY_SHIFT: np.nan_to_num(m.entropy_shift)})
        payload = validation_verdict_payload(author, gates.server_round, node_id, accept, reasons[author])
        signatures[P.S_VERDICT + author] = sign_payload(key, payload)
        signatures[P.S_REASON + author] = reasons[author]
    reply[P.REC_SIGNATURE] = signatures
    return reply


__all__ = ["CandidateSwap", "GateSettings", "candidate_deltas", "candidate_model", "judge", "masked_reading", "validate_candidates"]
