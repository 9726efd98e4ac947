"""Domain errors of the `models` package.

Every error carries a human-readable reason; callers chain the underlying
library error with ``raise ... from e`` so the root cause stays visible.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by the `models` package."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModelLoadError(ModelError):
    """A base model (preset, local directory or Hugging Face id) could not be loaded."""


class UnsupportedModelError(ModelError):
    """The model's architecture is not one of the supported families (bert, gpt2, llama)."""


class PresetUnavailableError(ModelLoadError):
    """A preset exists but cannot be built here (for example its package is not installed)."""


class ComponentError(ModelError, ValueError):
    """A component id is malformed or does not exist in the model."""


class AdapterError(ModelError, ValueError):
    """LoRA adapter arrays or files do not match the model they are applied to."""
