"""A rich live display of a running federation: one row per round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.state import GlobalState


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


class RoundProgress(RoundObserver):
    """Round observer that shows a progress bar and prints a line per finished round."""

    def __init__(self, total_rounds: int, console: Console | None = None, start_round: int = 0) -> None:
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]federation"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("waiting for nodes", total=total_rounds, completed=start_round)

    def __enter__(self) -> RoundProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """Show the roles that joined."""
        roles = ", ".join(f"{n.partition_id}:{n.role}" for n in nodes)
        self.progress.update(self.task, description=f"{len(nodes)} nodes ({roles})")

    def on_round_start(self, server_round: int) -> None:
        """Show which round is running."""
        self.progress.update(self.task, description=f"round {server_round} training")

    def on_round(
        self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState
    ) -> dict[str, Any]:
        """Print the round's figures and advance the bar (adds nothing to the row)."""
        self.console.print(
            f"round {row['round']:>3}  acc [bold]{row['accuracy']:.4f}[/]  loss {row['loss']:.4f}  "
            f"accepted {row['accepted']}/{row['nodes']}  consent-rejected {row['consent_violations']}  "
            f"up {_mb(row['bytes_up'])}  down {_mb(row['bytes_down'])}  "
            f"svd-residual {row['svd_residual']:.3f}  {row['duration_s']:.1f}s"
        )
        self.progress.update(self.task, advance=1, description=f"acc {row['accuracy']:.3f}")
        return {}
