"""Counting votes: the electorate, quorum and majority, and when a proposal is decided.

The electorate is the active nodes that hold a key. A proposal passes when at
least ``quorum`` of the electorate voted (abstentions count towards the quorum)
and yes / (yes + no) is above ``majority``. It is decided early as soon as the
outcome cannot change whatever the remaining voters do, otherwise at its deadline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

Choice = Literal["yes", "no", "abstain"]
CHOICES: tuple[Choice, ...] = ("yes", "no", "abstain")


class Tally(BaseModel):
    """Votes counted against the electorate, with the thresholds they were held to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    yes: int = 0
    no: int = 0
    abstain: int = 0
    eligible: int = 0
    quorum: float
    majority: float

    @property
    def cast(self) -> int:
        """Votes cast, abstentions included."""
        return self.yes + self.no + self.abstain

    @property
    def quorum_reached(self) -> bool:
        """At least ``quorum`` of the electorate voted."""
        return self.eligible > 0 and self.cast >= self.quorum * self.eligible

    @property
    def majority_reached(self) -> bool:
        """yes / (yes + no) is above ``majority``."""
        return self.yes + self.no > 0 and self.yes > self.majority * (self.yes + self.no)


def tally_votes(choices: Iterable[Choice], *, eligible: int, quorum: float, majority: float) -> Tally:
    """Count ``choices`` for an electorate of ``eligible`` nodes."""
    counts = {c: 0 for c in CHOICES}
    for choice in choices:
        counts[choice] += 1
    return Tally(yes=counts["yes"], no=counts["no"], abstain=counts["abstain"], eligible=eligible, quorum=quorum, majority=majority)


def decide(tally: Tally, *, deadline_passed: bool) -> Literal["passed", "rejected"] | None:
    """The outcome if it is settled: at the deadline always, before it only when no further vote can change it."""
    if deadline_passed:
        return "passed" if tally.quorum_reached and tally.majority_reached else "rejected"
    if tally.eligible == 0:
        return None
    remaining = max(0, tally.eligible - tally.cast)
    decisive_worst = tally.yes + tally.no + remaining
    if tally.quorum_reached and tally.yes > tally.majority * decisive_worst:
        return "passed"
    if tally.yes + remaining <= tally.majority * decisive_worst:
        return "rejected"
    return None
