"""Per-role figures of every round: view error, bytes down and up, leave-one-out contribution, token share.

A round observer (``server.observer``): it reads what the round loop and the
earlier observers put in the row (``per_node``, ``contributions``, ``tokens``)
and the views the configure step built (``server.views.round_views``, the
same memoised factorisation), and returns one ``by_role`` field. Its report
section sums the run: each role's share of the tokens, its mean contribution
and its traffic per round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sentinel.server.config import FederationConfig
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.state import GlobalState
from sentinel.server.views import TrainingDesign, config_design, round_views

META_KEY = "by_role_rows"
"""Checkpoint-metadata key of the per-role rows."""


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


class RoleFigures(RoundObserver):
    """Adds ``by_role`` to every round's row: {role: nodes, view_error, bytes_down, bytes_up, loo_mean, token_share}."""

    def __init__(self, config: FederationConfig, design: TrainingDesign | None = None) -> None:
        self.config = config
        self.design = design if design is not None else config_design(config)
        self.nodes: list[NodeInfo] = []
        self.rows: list[dict[str, dict[str, Any]]] = []

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """Remember the run's nodes (the ones every round is configured for, less those sitting out)."""
        self.nodes = list(nodes)

    def restore(self, meta: Mapping[str, Any]) -> None:
        """Continue the per-role rows of a resumed run (what :meth:`checkpoint_meta` saved)."""
        self.rows = [dict(row) for row in meta.get(META_KEY, [])]

    def checkpoint_meta(self) -> dict[str, Any]:
        """The per-role rows so far (a few numbers per role and round), so a resumed run reports them all."""
        return {META_KEY: self.rows}

    def on_round(self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState) -> dict[str, Any]:
        """This round's figures per role (``previous`` is the state the nodes were sent)."""
        sent = [n for n in self.nodes if n.key_id not in set(outcome.excluded)]
        rank = {n.key_id: n.lora_rank or self.config.profiles[n.role].lora_rank for n in sent}
        views = round_views(previous, self.design, rank.values())
        contributions = row.get("contributions") or {}
        tokens = row.get("tokens") or {}
        token_total = float(sum(tokens.values())) or 0.0
        by_role: dict[str, dict[str, Any]] = {}
        for role in sorted({n.role for n in sent}):
            members = [n for n in sent if n.role == role]
            keys = [self.design.view_key(rank[n.key_id]) for n in members]
            results = [r for r in outcome.results if r.node.role == role]
            by_role[role] = {
                "nodes": len(members),
                "view_error": max(views.errors[k] for k in keys),
                "bytes_down": int(sum(views.bytes_of(k) for k in keys)),
                "bytes_up": int(sum(r.bytes_up for r in results)),
                "accepted": sum(1 for r in results if r.accepted),
                "loo_mean": _mean([float(contributions[n.key_id]) for n in members if n.key_id in contributions]),
                "tokens": sum(float(tokens.get(n.key_id, 0.0)) for n in members),
                "token_share": (sum(float(tokens.get(n.key_id, 0.0)) for n in members) / token_total) if token_total else None,
            }
        self.rows.append(by_role)
        return {"by_role": by_role}

    def report(self) -> dict[str, Any]:
        """The run per role: mean contribution, share of all tokens, mean traffic and worst view error per round."""
        roles = sorted({role for row in self.rows for role in row})
        all_tokens = sum(r["tokens"] for row in self.rows for r in row.values())
        summary: dict[str, Any] = {}
        for role in roles:
            rows = [row[role] for row in self.rows if role in row]
            loo = [r["loo_mean"] for r in rows if r["loo_mean"] is not None]
            summary[role] = {
                "loo_mean": _mean(loo),
                "token_share": (sum(r["tokens"] for r in rows) / all_tokens) if all_tokens else None,
                "bytes_down_per_round": _mean([r["bytes_down"] for r in rows]),
                "bytes_up_per_round": _mean([r["bytes_up"] for r in rows]),
                "view_error_max": max((r["view_error"] for r in rows), default=None),
            }
        return {"by_role": summary}


__all__ = ["META_KEY", "RoleFigures"]
