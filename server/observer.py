"""The round observer protocol: what the round loop tells observers, and what they may give back.

Observers never write into what they are handed. They *return* their fields:
``on_round`` returns the fields it adds to the round's row of the history,
``checkpoint_meta`` what goes into the checkpoint's metadata (``restore`` reads
it back on ``--resume``), ``commit_round`` makes the round's records durable
once its checkpoint is staged, and ``report`` adds to the run report. Subclass :class:`RoundObserver` to inherit the
no-op defaults and implement only what an observer needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.state import GlobalState


class RoundObserver(Protocol):
    """Something that wants to know what the round loop did (progress, ledger, governance, report)."""

    def restore(self, meta: Mapping[str, Any]) -> None:
        """Continue from the metadata of the checkpoint a run resumes from (what :meth:`checkpoint_meta` saved)."""

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """The nodes of the run are known (after the profile handshake)."""

    def on_round_start(self, server_round: int) -> None:
        """A round is about to be configured."""

    def on_round(
        self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState
    ) -> Mapping[str, Any]:
        """A round finished: ``previous`` was the global state before it, ``state`` after.

        ``row`` is the round's row so far (read-only: the loop's own fields and
        those of earlier observers). Returns the JSON-ready fields this observer
        adds to the row.
        """
        return {}

    def checkpoint_meta(self) -> Mapping[str, Any]:
        """JSON-ready fields saved in the metadata of the checkpoint written after each round."""
        return {}

    def commit_round(self, server_round: int) -> None:
        """The round's checkpoint is staged: make the round's own records durable now, all or nothing.

        Called once per round, after :meth:`on_round` and before the staged
        checkpoint is put in force, so a crash leaves either both or neither
        (``server.checkpoints.recover_state`` settles a crash in between).
        """

    def report(self) -> Mapping[str, Any]:
        """JSON-ready sections this observer adds to the run report."""
        return {}


__all__ = ["RoundObserver"]
