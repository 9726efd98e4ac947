"""Domain errors of the coordinator, each with a reason a user can act on."""

from __future__ import annotations


class CoordinatorError(RuntimeError):
    """Base class of the coordinator's errors."""


class NodesUnavailableError(CoordinatorError):
    """Fewer nodes connected or answered the profile handshake than the run needs."""


class SimulationError(CoordinatorError):
    """The simulated federation did not finish."""


class RunNotFoundError(CoordinatorError, FileNotFoundError):
    """A directory given as a run (``--resume``) holds no Sentinel run."""


class CheckpointError(CoordinatorError, FileNotFoundError):
    """A checkpoint directory is missing or incomplete."""


__all__ = ["CheckpointError", "CoordinatorError", "NodesUnavailableError", "RunNotFoundError", "SimulationError"]
