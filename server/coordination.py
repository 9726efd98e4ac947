"""Coordinated updates: a group of nodes whose updates agree with each other far more than honest nodes do.

Validators judge an update on clean data, so they cannot see a backdoor: a model
that behaves on clean inputs and flips its label when a trigger appears. What
they cannot see in the model's behaviour shows in the updates themselves.
Honest LoRA updates from different nodes are nearly orthogonal (pairwise
cosines of the dense ΔW ~0.00–0.02 in a first round on MiniLM, even within one
domain), while nodes that train toward the same hidden objective — the same
trigger and target — share that objective's direction (0.04–0.07 measured on the
robustness benchmark's backdoor scenario: robust z-scores 6–11 against the
round's pairs, honest pairs at most 2.8). This is the premise of FoolsGold (Fung et al., "The Limitations of
Federated Learning in Sybil Settings", RAID 2020): sybils pursuing one goal
are more similar to each other than honest clients are.

The check is relative to the round: every pairwise cosine of the updates gets
a robust z-score against the median and MAD of all of the round's pairwise
cosines (a direction all honest updates share raises every pair alike, and the
median takes it out), and nodes joined by a pair above the threshold form a
coordinated group. One node alone is never flagged (it has nobody to coordinate with), and
a round of fewer than :data:`COORDINATION_MIN_UPDATES` updates is not judged.
Pure numpy; the validate phase applies it to the updates its validators accepted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TypeVar

import numpy as np

N = TypeVar("N", int, str)
"""A node handle (Flower node id or key id)."""

COORDINATION_MIN_UPDATES = 5
"""Fewest updates in a round from which the pairwise-cosine distribution is calibrated (10 pairs)."""
MIN_COSINE_SCALE = 1e-3
"""Floor of the robust scale of pairwise cosines (identical honest updates would otherwise give MAD 0)."""


def lora_cosines(updates: Mapping[N, Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> dict[tuple[N, N], float]:
    """Pairwise cosines (i < j) of the dense updates ΔWᵢ = Bᵢ·Aᵢ over all modules, without forming B·A.

    ``updates`` maps a node to its module → (A, B) pairs (every node the same
    modules). ⟨B₁A₁, B₂A₂⟩_F = Σ (B₁ᵀB₂) ∘ (A₁A₂ᵀ) costs r² per module and pair.
    The LoRA scaling is the same for every node and cancels. A zero update has
    cosine 0 with everything.
    """
    ids = sorted(updates)
    modules = sorted(updates[ids[0]]) if ids else []
    for i in ids:
        if sorted(updates[i]) != modules:
            raise ValueError(f"update of {i!r} adapts other modules than {ids[0]!r}'s")
    f64 = {i: {m: (np.asarray(a, np.float64), np.asarray(b, np.float64)) for m, (a, b) in updates[i].items()} for i in ids}

    def inner(i: N, j: N) -> float:
        return float(sum(np.sum((f64[i][m][1].T @ f64[j][m][1]) * (f64[i][m][0] @ f64[j][m][0].T)) for m in modules))

    norms = {i: float(np.sqrt(max(inner(i, i), 0.0))) for i in ids}
    out: dict[tuple[N, N], float] = {}
    for x, i in enumerate(ids):
        for j in ids[x + 1 :]:
            out[(i, j)] = inner(i, j) / (norms[i] * norms[j]) if norms[i] > 0 and norms[j] > 0 else 0.0
    return out


def pair_z_scores(cosines: Mapping[tuple[N, N], float]) -> tuple[dict[tuple[N, N], float], float]:
    """(pair → robust z-score of its cosine against the round's pairwise cosines, the round's median cosine).

    Median and 1.4826·MAD of all the round's pairs, the scale floored at
    :data:`MIN_COSINE_SCALE`; empty below :data:`COORDINATION_MIN_UPDATES` nodes,
    where the distribution cannot be calibrated.
    """
    nodes = {n for pair in cosines for n in pair}
    if len(nodes) < COORDINATION_MIN_UPDATES:
        return {}, float("nan")
    values = np.array(list(cosines.values()), dtype=np.float64)
    median = float(np.median(values))
    scale = max(1.4826 * float(np.median(np.abs(values - median))), MIN_COSINE_SCALE)
    return {pair: (c - median) / scale for pair, c in cosines.items()}, median


def strongest_pair_z(z_by_pair: Mapping[tuple[N, N], float]) -> dict[N, float]:
    """Node → the largest z-score among its pairs (what the report shows per update)."""
    out: dict[N, float] = {}
    for (a, b), z in z_by_pair.items():
        for n in (a, b):
            out[n] = max(out.get(n, -np.inf), float(z))
    return out


def coordinated_pairs(
    z_by_pair: Mapping[tuple[N, N], float],
    z_threshold: float,
    records: Mapping[tuple[N, N], float] | None = None,
    probation: Collection[tuple[N, N]] = (),
) -> tuple[dict[tuple[N, N], float], set[tuple[N, N]]]:
    """(coordinated pair → its score, the pairs among them coordinated by probation alone).

    A pair's score is its record where ``records`` gives one, else its z-score
    this round; it is coordinated when the score exceeds ``z_threshold``, or
    when it is in ``probation`` and its z-score this round is above 0.
    """
    score = {pair: (records or {}).get(pair, z) for pair, z in z_by_pair.items()}
    edges = {pair: s for pair, s in score.items() if s > z_threshold}
    on_probation = {pair for pair in probation if pair in z_by_pair and pair not in edges and z_by_pair[pair] > 0}
    edges.update({pair: score[pair] for pair in on_probation})
    return edges, on_probation


def coordinated_groups(
    cosines: Mapping[tuple[N, N], float],
    z_threshold: float,
    records: Mapping[tuple[N, N], float] | None = None,
    probation: Collection[tuple[N, N]] = (),
) -> dict[N, str]:
    """Nodes in a coordinated group: node → reason (empty below :data:`COORDINATION_MIN_UPDATES` nodes).

    Pairs are coordinated by :func:`coordinated_pairs`: a record over rounds
    (``server.coordination_memory``) or this round's robust z-score
    (:func:`pair_z_scores`) above ``z_threshold``, or a pair in ``probation``
    (caught together before) more alike than the round's typical pair.
    Groups are the connected components of those pairs.
    Only a minority is flagged: a group of half the round's nodes or more is
    what the round shares, not a coalition against it. ``z_threshold`` ≤ 0: off.
    """
    nodes = sorted({n for pair in cosines for n in pair})
    if len(nodes) < COORDINATION_MIN_UPDATES or z_threshold <= 0:
        return {}
    z_by_pair, median = pair_z_scores(cosines)
    edges, on_probation = coordinated_pairs(z_by_pair, z_threshold, records, probation)
    parent = {n: n for n in nodes}

    def root(n: N) -> N:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in edges:
        parent[root(a)] = root(b)
    groups: dict[N, list[N]] = {}
    for n in {n for pair in edges for n in pair}:
        groups.setdefault(root(n), []).append(n)
    flagged: dict[N, str] = {}
    for members in groups.values():
        if 2 * len(members) >= len(nodes):  # the federation assumes an honest majority: a majority is not "coordinated"
            continue
        members.sort()
        for n in members:
            strongest = max((z, pair) for pair, z in edges.items() if n in pair)
            pair = strongest[1]
            other = pair[0] if pair[1] == n else pair[1]
            if pair in on_probation:
                flagged[n] = (
                    f"coordinated update: cosine {cosines[pair]:.3f} with the update of {other}, caught together before "
                    f"and again more alike than the round's typical pair (z-score {z_by_pair[pair]:.1f} > 0, median "
                    f"{median:.3f}); group of {len(members)}"
                )
                continue
            over = f"record {strongest[0]:.1f} over rounds (this round's z-score {z_by_pair[pair]:.1f})" if records else f"z-score {strongest[0]:.1f}"
            flagged[n] = (
                f"coordinated update: cosine {cosines[pair]:.3f} with the update of {other}, {over} > {z_threshold:g} "
                f"against the round's pairwise cosines (median {median:.3f}); group of {len(members)}"
            )
    return flagged
