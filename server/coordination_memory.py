"""Each pair of nodes' coordination record across rounds, for the coordinated-minority check.

One round's pairwise z-score (``server.coordination``) says too much in one
place and too little in another:

- Near a non-IID optimum, honest nodes of one domain share what is left of
  their update. Measured on the robustness benchmark's clean run: in round 5 a
  group of three honest nodes of one domain had pairwise cosine 0.09 against the
  round's median of 0.004 (z 8.5) and was rejected as coordinated, having looked
  like everybody else for four rounds.
- Nodes that train toward one hidden objective stand out most in the round they
  first send it (backdoor: z 6–11 in round 1), much less once honest updates
  dominate theirs too (z ≤ 3 when they came back from their cool-down in round
  4). Judged on that round alone they were let back in and implanted the
  backdoor before being caught again.

So the check keeps, per pair of nodes (by key id), an exponentially weighted
mean of the pair's z-score over the rounds in which both were judged — the
analogue over rounds of FoolsGold's similarity of the clients' update
histories (Fung et al., RAID 2020), at the cost of one float per pair rather
than a model-sized history per node — and the record decides: a pair's first
round is its z-score, a one-round spike after a clean record is damped, and a
record earned once carries through the cool-down into the rounds after it.
Records live in the validate phase's state and travel with every checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

PAIR_SEPARATOR = "|"
"""Joins a pair's two key ids (sorted) into its record's key."""


def pair_key(a: str, b: str) -> str:
    """The record key of the (unordered) pair of key ids ``a`` and ``b``."""
    if PAIR_SEPARATOR in a or PAIR_SEPARATOR in b:
        raise ValueError(f"key ids must not contain {PAIR_SEPARATOR!r}: {a!r}, {b!r}")
    return PAIR_SEPARATOR.join(sorted((a, b)))


def updated_pair_records(
    records: Mapping[str, float], z_by_pair: Mapping[tuple[str, str], float], memory: float
) -> dict[tuple[str, str], float]:
    """Pair → its record with this round's z-score in: ``memory``·old + (1 − ``memory``)·z; a new pair starts at z.

    ``memory`` 0 is the round alone (the plain check). Pairs not judged this
    round keep their records untouched (the caller stores the returned ones).
    """
    if not 0.0 <= memory < 1.0:
        raise ValueError(f"`memory` must be in [0, 1), got {memory}")
    out: dict[tuple[str, str], float] = {}
    for (a, b), z in z_by_pair.items():
        old = records.get(pair_key(a, b))
        out[(a, b)] = float(z) if old is None else memory * float(old) + (1.0 - memory) * float(z)
    return out


__all__ = ["PAIR_SEPARATOR", "pair_key", "updated_pair_records"]
