"""The pruned student: the teacher with heads physically removed and FFNs narrowed.

Central nodes distil the teacher (base + global ΔW and head, all heads) into a
student built here; the coordinator exports that student as the edge bundle.
The student's shape is a `StudentSpec` (which heads were pruned, which FFN
neurons each narrowed layer kept, by original ids): small, JSON-ready, and
enough to rebuild the same architecture on any copy of the teacher, so a
central node can return the student's weights and the coordinator can load
them (`apply_student_spec` then ``load_state_dict``).

Consent decides what may shrink: the head mask holds only heads the
federation agreed to prune, and `ffn_layers` only layers whose ``layer.{i}.ffn``
contract allows ``prune`` (see `models.ffn.ffn_layers_of`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pydantic
import torch
from sentinel.models.components import model_layout
from sentinel.models.ffn import (
    FfnRecord,
    ffn_activation_importance,
    ffn_magnitude,
    ffn_widths,
    keep_ffn_neurons,
    narrow_ffn,
    narrowed_ffn,
    widths_for,
)
from sentinel.models.head_mask import check_mask, pruned_of_mask
from sentinel.models.pruning import PruneRecord, count_parameters, prune_heads, pruned_heads

__all__ = [
    "Student",
    "StudentSpec",
    "apply_student_spec",
    "build_student",
    "load_student",
    "student_arrays",
    "student_spec",
]


class StudentSpec(pydantic.BaseModel):
    """The architecture of a student relative to its teacher, in original ids.

    ``{"pruned_heads": {"0": [1, 3]}, "ffn_neurons": {"0": [0, 5, 7, ...]}}``:
    layer → heads physically removed; layer → FFN neurons kept (layers not
    listed keep their full FFN).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    pruned_heads: dict[pydantic.NonNegativeInt, tuple[pydantic.NonNegativeInt, ...]] = pydantic.Field(
        default_factory=dict, description="Layer → original ids of the attention heads removed."
    )
    ffn_neurons: dict[pydantic.NonNegativeInt, tuple[pydantic.NonNegativeInt, ...]] = pydantic.Field(
        default_factory=dict, description="Layer → original ids of the FFN neurons kept (narrowed layers only)."
    )

    @property
    def ffn_widths(self) -> dict[int, int]:
        """Layer → FFN width, for the narrowed layers."""
        return {layer: len(ids) for layer, ids in self.ffn_neurons.items()}

    @property
    def num_pruned_heads(self) -> int:
        """How many heads the student lacks."""
        return sum(len(h) for h in self.pruned_heads.values())


@dataclass
class Student:
    """A built student, its spec, and what building it removed.

    `head_record` holds the removed heads' weights (for `regrow_heads`);
    `ffn_record` the neurons kept per narrowed layer.
    """

    model: torch.nn.Module
    spec: StudentSpec
    head_record: PruneRecord
    ffn_record: FfnRecord

    @property
    def params_before(self) -> int:
        """Parameters of the teacher."""
        return self.head_record.params_before

    @property
    def params_after(self) -> int:
        """Parameters of the student."""
        return count_parameters(self.model)


def student_spec(model: torch.nn.Module) -> StudentSpec:
    """The spec of a (pruned, narrowed) model, read from the ids it records."""
    return StudentSpec(
        pruned_heads={layer: tuple(heads) for layer, heads in pruned_heads(model).items()},
        ffn_neurons=narrowed_ffn(model),
    )


def apply_student_spec(model: torch.nn.Module, spec: StudentSpec) -> torch.nn.Module:
    """Prune and narrow `model` in place to the architecture `spec` describes; returns it.

    `model` must be a plain (merged) copy of the teacher; heads already pruned
    are ignored. Afterwards ``model.load_state_dict(student_state)`` loads a
    student's weights.
    """
    prune_heads(model, spec.pruned_heads)
    if spec.ffn_neurons:
        keep_ffn_neurons(model, spec.ffn_neurons)
    return model


def _plain_copy(teacher: torch.nn.Module) -> torch.nn.Module:
    student = copy.deepcopy(teacher)
    if callable(getattr(student, "merge_and_unload", None)):
        student = student.merge_and_unload()
    return student


def build_student(
    teacher: torch.nn.Module,
    head_mask: np.ndarray | torch.Tensor | None = None,
    *,
    ffn_layers: Iterable[int] = (),
    ffn_keep: float | Mapping[int, int] = 1.0,
    ffn_scores: Mapping[int, np.ndarray] | None = None,
    batches: Iterable[Mapping[str, torch.Tensor]] | None = None,
    multiple_of: int = 1,
) -> Student:
    """A pruned, narrowed copy of `teacher` (a PeftModel is merged into the copy; `teacher` is unchanged).

    Parameters
    ----------
    teacher
        The full model: base + merged global ΔW and head (`models.global_model.materialise`), or a PeftModel.
    head_mask
        0/1 ``[num_layers, num_heads]``; heads at 0 are physically removed. None keeps every head.
    ffn_layers
        Layers whose FFN may be narrowed (consent decides; `models.ffn.ffn_layers_of`).
        Empty: no FFN changes.
    ffn_keep
        Share of the original FFN width to keep in each of `ffn_layers` (rounded to
        `multiple_of`), or an explicit layer → width mapping (its keys must be in `ffn_layers`).
    ffn_scores
        Importance per neuron (layer → array, in the head-pruned model's neuron order);
        default: activation importance on `batches` when given, else weight magnitude.
        Activations are measured after head pruning, on the model being narrowed.
    batches
        Unlabelled model inputs for activation importance.
    multiple_of
        Round FFN widths to a multiple of this (8 or 16 suit vectorised kernels).
    """
    student = _plain_copy(teacher)
    layout = model_layout(student)
    pruned = {} if head_mask is None else pruned_of_mask(check_mask(head_mask, layout))
    head_record = prune_heads(student, pruned)
    layers = sorted({int(layer) for layer in ffn_layers})
    if isinstance(ffn_keep, Mapping):
        outside = sorted(set(ffn_keep) - set(layers))
        if outside:
            raise ValueError(f"`ffn_keep` narrows layers {outside} that are not in `ffn_layers` (consent forbids it)")
        widths = {int(layer): int(width) for layer, width in ffn_keep.items()}
    else:
        widths = widths_for(student, layers, float(ffn_keep), multiple_of) if layers else {}
    current = ffn_widths(student)
    widths = {layer: width for layer, width in widths.items() if width < current.get(layer, width + 1)}
    if widths:
        if ffn_scores is None:
            ffn_scores = ffn_activation_importance(student, batches) if batches is not None else ffn_magnitude(student)
        ffn_record = narrow_ffn(student, widths, ffn_scores)
    else:
        ffn_record = FfnRecord(kept={}, params_before=count_parameters(student), params_after=count_parameters(student))
    student.eval()
    return Student(model=student, spec=student_spec(student), head_record=head_record, ffn_record=ffn_record)


def student_arrays(model: torch.nn.Module, trainable_only: bool = False) -> dict[str, np.ndarray]:
    """The student's weights as float32 numpy copies keyed by ``state_dict`` names (what a central node returns).

    With `trainable_only`, only parameters with ``requires_grad`` are included
    (frozen ones, such as embeddings kept from the teacher, are the teacher's
    and `load_student` takes them from it).
    """
    if trainable_only:
        return {n: p.detach().to("cpu", torch.float32).numpy().copy() for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().to("cpu", torch.float32).numpy().copy() for n, t in model.state_dict().items()}


def load_student(teacher: torch.nn.Module, spec: StudentSpec, arrays: Mapping[str, np.ndarray]) -> torch.nn.Module:
    """Rebuild a student from its spec and weights on a copy of `teacher` (which is not changed).

    Entries missing from `arrays` keep the teacher's values (see
    `student_arrays(trainable_only=True)`); an unknown name or a shape that
    does not fit the spec's architecture raises ``ValueError``.
    """
    student = apply_student_spec(_plain_copy(teacher), spec)
    state = student.state_dict()
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise ValueError(f"`arrays`: {len(unknown)} names the student does not have, first {unknown[0]!r}")
    for name, value in arrays.items():
        if tuple(np.shape(value)) != tuple(state[name].shape):
            raise ValueError(f"`arrays`: {name!r} has shape {tuple(np.shape(value))}, the spec gives {tuple(state[name].shape)}")
    with torch.no_grad():
        for name, value in arrays.items():
            state[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)).to(state[name].dtype))
    return student.eval()
