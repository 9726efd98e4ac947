"""Each node's direction record across rounds, for the check phase's direction check.

Near the optimum a single round's cosines say little: honest updates of a
non-IID federation share less and less, so an honest cosine to the median of
the others scatters around zero, and a sign-flipped update, being an honest one
negated, scatters with it (measured on the robustness benchmark at round 5:
honest −0.002 to +0.008, flipped −0.010 to +0.002). What stays apart is the
record: a flipped update points against the round every round. So the check
keeps, per node (by key id), an exponentially weighted mean of its round's
*standardised* cosine — its cosine over the round's median |cosine|, so a
round with strong agreement (round 2: |cosine| ~0.1) does not outweigh the
later ones (~0.005) — and flags an update when that record, this round in, is
against the round: the record decides (with ``memory`` 0 it is this
round alone, the plain sign rule).

It also keeps who is in *good standing* — the nodes whose updates the last
aggregated round accepted — which the direction check takes as its reference
(``server.update_checks.direction_cosines``). Both survive ``--resume`` through
the checkpoint's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sentinel.server.observer import RoundObserver

META_KEY = "direction"


class DirectionMemory(RoundObserver):
    """Per node key id: the direction record; and the key ids in good standing."""

    def __init__(self, memory: float) -> None:
        if not 0.0 <= memory < 1.0:
            raise ValueError(f"`memory` must be in [0, 1), got {memory}")
        self.memory = memory
        self.records: dict[str, float] = {}
        self.standing: frozenset[str] = frozenset()
        self._pending: dict[str, float] = {}
        self.scale = 0.0
        """The last judged round's median |cosine| (the unit of the records)."""

    def judge(self, cosines: Mapping[str, float]) -> dict[str, float]:
        """Key id → its record with this round's cosine in (not yet kept: :meth:`settle` keeps it).

        A node without a record starts from this round's standardised cosine; a
        round whose cosines are all zero standardises to zeros.
        """
        values = np.array([float(c) for c in cosines.values()], dtype=np.float64)
        scale = float(np.median(np.abs(values))) if values.size else 0.0
        self.scale = scale
        new: dict[str, float] = {}
        for key, cosine in cosines.items():
            standardised = float(cosine) / scale if scale > 0 else 0.0
            old = self.records.get(key)
            new[key] = standardised if old is None else self.memory * old + (1.0 - self.memory) * standardised
        self._pending = new
        return dict(new)

    def settle(self, accepted: frozenset[str]) -> None:
        """The round is aggregated: keep its records, and ``accepted`` (key ids) are the nodes in good standing."""
        self.records.update(self._pending)
        self._pending = {}
        self.standing = accepted

    def checkpoint_meta(self) -> Mapping[str, Any]:
        """The records and the standing, saved with every checkpoint."""
        return {META_KEY: {"records": dict(sorted(self.records.items())), "standing": sorted(self.standing)}}

    def restore(self, meta: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's metadata (``--resume``); nothing saved: start afresh."""
        saved = meta.get(META_KEY) or {}
        self.records = {str(k): float(v) for k, v in (saved.get("records") or {}).items()}
        self.standing = frozenset(str(k) for k in saved.get("standing") or [])
        self._pending = {}


__all__ = ["DirectionMemory"]
