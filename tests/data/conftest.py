"""Fixtures of the data tests: the real UCI folder (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

UCI_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sentiment-labelled-sentences"


@pytest.fixture
def uci_dir() -> Path:
    """The real UCI Sentiment Labelled Sentences folder, read in place (never copied)."""
    if not (UCI_DIR / "imdb_labelled.txt").is_file():
        pytest.skip(f"the UCI sentiment data is not at {UCI_DIR.resolve()} (see shared/data/README.md)")
    return UCI_DIR.resolve()
