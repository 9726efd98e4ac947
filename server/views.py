"""What each node is sent of the global model, and how it trains from it: the training design.

The coordinator's global state is the exact dense ΔW. A node receives it as
factors (A, B) with ΔW = B @ A (``protos.records.global_view_record``):

- ``view="exact"`` — the factorisation at the rank ΔW actually has (the
  smallest rank whose residual is within ``tolerance``, per module), the same
  for every node whatever its own rank: every node and validator trains and
  judges against the exact global model, and a node that missed rounds, joined
  late or restarted needs nothing it does not get in this one message;
- ``view="truncated"`` — the legacy view: ΔW truncated by SVD at the node's rank
  (lossy once the global update outgrows it).

An exact view is cheap only while ΔW keeps a small rank, which is what the
*frame* adapter does (``client.frames``): nodes train one LoRA factor in a
frame derived from ΔW itself, so every update — at any mix of ranks — stays in
the same rank-R space (R the largest rank), the exact aggregate keeps ΔW at
rank ≤ R and the exact view costs what a rank-R view costs. A *fresh* adapter
(B = 0, random A, both factors trained: the legacy design) adds Σ rᵢ new
directions per round, so its exact view grows toward the dense ΔW.

Nothing here is per node: the coordinator builds one view per round (one per
rank for truncated views), so its memory is the global state plus one view,
whatever the number of nodes. Pure functions plus a one-entry memo, so the
configure step and the per-role report share one factorisation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np
from flwr.app import ArrayRecord
from sentinel.client.frames import FRAME_SCALES, SUBFRAMES, Factor, FrameScale, Subframe, factor_of_round
from sentinel.models.continued import continued_view_factors
from sentinel.protos.messages import LORA_ALPHA_PER_RANK, MAX_FRAME_GAIN
from sentinel.protos.records import global_view_record
from sentinel.server.aggregation import Factorised, exact_factorise, svd_factorise
from sentinel.server.config import FederationConfig, FrameGainSchedule, TrainingDesignName
from sentinel.server.state import GlobalState

VIEW_TOLERANCE = 1e-6
"""Relative residual per module an exact view may drop (float32 factors carry ~1e-7 anyway)."""

AdapterStart = Literal["fresh", "frame", "continue"]
ViewKind = Literal["exact", "truncated"]
Schedule = Literal["b", "alternate"]


@dataclass(frozen=True)
class TrainingDesign:
    """How nodes start their adapter each round and which view of the global model they receive.

    ``TrainingDesign()`` is the shared-frame design: exact views, one factor
    trained in the frame, alternating A and B. Runs select a design by name
    (:data:`DESIGNS`, ``FederationConfig.training_design``).
    """

    adapter: AdapterStart = "frame"
    """``frame``: train one factor in the shared frame (``client.frames``); ``fresh``: a fresh LoRA (B = 0);
    ``continue``: resume the global adapter's top-r factors, both trained; the node sends its adapter at rank r and the
    coordinator rebuilds the change at rank 2r from the start it sent (``models.continued``)."""
    schedule: Schedule = "alternate"
    """For ``frame``: ``alternate`` trains B in odd rounds and A in even ones; ``b`` always trains B (A fixed)."""
    view: ViewKind = "exact"
    """``exact``: ΔW at its own rank for every node; ``truncated``: ΔW truncated at each node's rank."""
    tolerance: float = VIEW_TOLERANCE
    gain: float = 1.0
    """For ``frame``: the scale of the frozen factor (``FederationConfig.frame_gain``, ``client.frames.frame_rows``)."""
    gain_schedule: FrameGainSchedule = "constant"
    """For ``frame``: ``constant`` or ``inverse-sqrt`` (round t: gain / √t); :meth:`gain_of_round`."""
    frame_scale: FrameScale = "balanced"
    """For ``frame``: the frozen factor is the global adapter's own (``balanced``) or an orthonormal basis of its
    directions at PEFT's initial norm (``unit``): ``client.frames.FrameScale``."""
    subframe: Subframe = "top"
    """For ``frame``: which r of the frame's R directions a node of rank r < R trains in (``client.frames.Subframe``)."""
    reach_weighted: bool = False
    """For ``frame``: average each direction of the frame over the nodes that reach it (``server.frame_aggregation``),
    not over every node: a rank-r node's zero in the directions it cannot train does not pull them toward zero."""
    error_feedback: bool = False
    """For ``subframe="trained"``: a node below the frame's rank keeps what its cut left out and adds it to its next
    update (``client.error_feedback``), so over rounds it delivers what it trained at its own uplink rank."""

    def __post_init__(self) -> None:
        if self.adapter not in ("frame", "fresh", "continue"):
            raise ValueError(f"`adapter` must be 'frame', 'fresh' or 'continue', got {self.adapter!r}")
        if self.view not in ("exact", "truncated"):
            raise ValueError(f"`view` must be 'exact' or 'truncated', got {self.view!r}")
        factor_of_round(1, self.schedule)  # validates the schedule
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"`tolerance` must be in [0, 1), got {self.tolerance}")
        if self.gain_schedule not in get_args(FrameGainSchedule):
            raise ValueError(f"`gain_schedule` must be one of {get_args(FrameGainSchedule)}, got {self.gain_schedule!r}")
        if self.reach_weighted and self.adapter != "frame":
            raise ValueError("`reach_weighted` averages over a shared frame: it needs `adapter='frame'`")
        if self.error_feedback and self.subframe != "trained":
            raise ValueError("`error_feedback` keeps what a `trained` sub-frame cut left out: it needs `subframe='trained'`")
        if self.subframe not in SUBFRAMES:
            raise ValueError(f"`subframe` must be one of {SUBFRAMES}, got {self.subframe!r}")
        if self.frame_scale not in FRAME_SCALES:
            raise ValueError(f"`frame_scale` must be one of {FRAME_SCALES}, got {self.frame_scale!r}")
        if not 0 < self.gain <= MAX_FRAME_GAIN:
            raise ValueError(f"`gain` must be in (0, {MAX_FRAME_GAIN:g}], got {self.gain}")

    def gain_of_round(self, server_round: int) -> float:
        """The frame gain nodes use in ``server_round`` (the coordinator sends it; nodes never compute it)."""
        if server_round < 1:
            raise ValueError(f"`server_round` must be >= 1, got {server_round}")
        return self.gain if self.gain_schedule == "constant" else self.gain / math.sqrt(server_round)

    def train_factor(self, server_round: int) -> Factor | None:
        """The factor nodes train in ``server_round`` (None: a fresh adapter, both factors)."""
        return factor_of_round(server_round, self.schedule) if self.adapter == "frame" else None

    def view_key(self, rank: int) -> int | None:
        """Which view a node of ``rank`` receives: None is the one exact view every node shares."""
        return None if self.view == "exact" else rank


LEGACY_DESIGN = TrainingDesign(adapter="fresh", view="truncated")
"""The design before issue 10: a fresh adapter every round on a view truncated at the node's rank."""

DESIGNS: dict[TrainingDesignName, TrainingDesign] = {
    "legacy": LEGACY_DESIGN,
    "frame": TrainingDesign(),
    "frame-b": TrainingDesign(schedule="b"),
    "frame-unit": TrainingDesign(frame_scale="unit"),
    "frame-unit-gradient": TrainingDesign(frame_scale="unit", subframe="gradient"),
    "frame-unit-reach": TrainingDesign(frame_scale="unit", reach_weighted=True),
    "frame-unit-gradient-reach": TrainingDesign(frame_scale="unit", subframe="gradient", reach_weighted=True),
    "frame-unit-trained": TrainingDesign(frame_scale="unit", subframe="trained"),
    "frame-unit-trained-reach": TrainingDesign(frame_scale="unit", subframe="trained", reach_weighted=True),
    "frame-unit-trained-reach-ef": TrainingDesign(frame_scale="unit", subframe="trained", reach_weighted=True, error_feedback=True),
    "flora": TrainingDesign(adapter="fresh", view="exact"),
    "continued": TrainingDesign(adapter="continue", view="truncated"),
    "continued-exact": TrainingDesign(adapter="continue", view="exact"),
}
"""The designs a run can select by name (``FederationConfig.training_design``):
``legacy`` (fresh adapter, truncated view), ``frame`` (shared frame, alternating
A/B, exact view), ``frame-b`` (shared frame, always B), ``frame-unit`` (shared frame, its frozen factor an
orthonormal basis at PEFT's initial norm), ``frame-unit-gradient`` (the same, nodes below the frame's rank training in
the r combinations of its directions that carry most of their gradient), ``frame-unit-reach`` and
``frame-unit-gradient-reach`` (each direction of the frame averaged over the nodes that reach it),
``frame-unit-trained`` and ``frame-unit-trained-reach`` (nodes below the frame's rank train in the whole frame
and send the best rank-r truncation of what they trained), ``frame-unit-trained-reach-ef`` (the same with error
feedback: what the cut left out joins the node's next update), ``flora`` (fresh
adapter on the exact view: FLoRA's stacked factors, compressed to their rank), ``continued``
(the global adapter's top-r factors resumed on the truncated view, both trained; FlexLoRA's start)."""


def design_named(name: str) -> TrainingDesign:
    """The training design called ``name`` (one of :data:`DESIGNS`); a clear error for any other name."""
    try:
        return DESIGNS[name]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown training design {name!r}; choose one of {sorted(DESIGNS)}") from None


def config_design(config: FederationConfig) -> TrainingDesign:
    """The design a run's config selects: ``training_design`` by name, with the config's ``frame_gain`` and its schedule."""
    return replace(design_named(config.training_design), gain=config.frame_gain, gain_schedule=config.frame_gain_schedule)


DEFAULT_DESIGN = design_named(FederationConfig.model_fields["training_design"].default)
"""The design a run uses unless its config names another (``FederationConfig.training_design``)."""


def factorise_view(deltas: Mapping[str, np.ndarray], key: int | None, tolerance: float = VIEW_TOLERANCE) -> dict[str, Factorised]:
    """The view's factors per module: exact (``key`` None) or truncated at rank ``key``."""
    if key is None:
        return {m: exact_factorise(d, tolerance) for m, d in deltas.items()}
    return {m: svd_factorise(d, key) for m, d in deltas.items()}


def view_error(deltas: Mapping[str, np.ndarray], factors: Mapping[str, Factorised]) -> float:
    """‖ΔW − B A‖_F / ‖ΔW‖_F over all modules, of the float32 factors actually sent (0 for a zero ΔW)."""
    err = total = 0.0
    for m, d in deltas.items():
        d64 = np.asarray(d, dtype=np.float64)
        f = factors[m]
        approx = f.b.astype(np.float64) @ f.a.astype(np.float64) if f.a.shape[0] else 0.0
        err += float(np.sum((d64 - approx) ** 2))
        total += float(np.sum(d64**2))
    return float(np.sqrt(err / total)) if total > 0 else 0.0


@dataclass(frozen=True)
class RoundViews:
    """The views of one global state: one record per view key, its error and its size."""

    records: dict[int | None, ArrayRecord]
    errors: dict[int | None, float]
    ranks: dict[int | None, dict[str, int]] = field(default_factory=dict)
    """View key → module → rank of the factors sent."""
    factors: dict[int | None, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    """View key → module → the (A, B) sent (a continued adapter's start is read off them)."""

    def bytes_of(self, key: int | None) -> int:
        """Bytes of the view with ``key`` on the wire (Flower's count: array data plus keys)."""
        return self.records[key].count_bytes()


_memo: dict[str, object] = {}


def _continued_split(part: Factorised) -> Factorised:
    """The same product split as a continued adapter's start reads it (``models.continued.continued_view_factors``)."""
    a, b = continued_view_factors(part.a, part.b, LORA_ALPHA_PER_RANK)
    return replace(part, a=a, b=b)


def round_views(state: GlobalState, design: TrainingDesign, ranks: Iterable[int]) -> RoundViews:
    """The views of ``state`` for nodes of ``ranks`` under ``design`` (memoised for the last state asked about).

    The configure step builds them; the per-role report asks again for the
    same state and gets the same object instead of a second factorisation.
    """
    keys = sorted({design.view_key(r) for r in ranks}, key=lambda k: -1 if k is None else k)
    cached = _memo.get("views")
    # The memo holds the state itself, so identity (not a reusable id()) says it is the same one.
    if _memo.get("state") is state and _memo.get("design") == design and isinstance(cached, RoundViews):
        if all(k in cached.records for k in keys):
            return cached
    records, errors, sent_ranks, factors = {}, {}, {}, {}
    for key in keys:
        parts = factorise_view(state.deltas, key, design.tolerance)
        if design.adapter == "continue":  # split so the node's start is read off the factors exactly
            parts = {m: _continued_split(f) for m, f in parts.items()}
        factors[key] = {m: (f.a, f.b) for m, f in parts.items()}
        records[key] = global_view_record(factors[key], state.head, state.head_mask)
        errors[key] = view_error(state.deltas, parts)
        sent_ranks[key] = {m: int(f.a.shape[0]) for m, f in parts.items()}
    views = RoundViews(records, errors, sent_ranks, factors)
    _memo.update(state=state, design=design, views=views)
    return views


__all__ = [
    "DEFAULT_DESIGN",
    "DESIGNS",
    "LEGACY_DESIGN",
    "RoundViews",
    "TrainingDesign",
    "VIEW_TOLERANCE",
    "config_design",
    "design_named",
    "factorise_view",
    "round_views",
    "view_error",
]
