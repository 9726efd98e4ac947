"""Fixtures for federation tests: tiny configurations and in-process grids."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from sentinel.client.app import app as client_app
from sentinel.client.app import profile
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.local_grid import LocalGrid

TINY_PROFILES = {
    "edge": RoleProfile(lora_rank=2, local_steps=3, batch_size=8, learning_rate=5e-3),
    "gpu": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
    "central": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
}


def crashing_app() -> ClientApp:
    """A node that answers the profile handshake but whose training always fails (its update never arrives)."""
    app = ClientApp()
    app.query("profile")(profile)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        raise RuntimeError("node crashed")

    return app


def tiny_config(**overrides: object) -> FederationConfig:
    """3 nodes (edge, central, gpu) on tiny-bert and a small built-in dataset."""
    values: dict[str, object] = dict(
        model="tiny-bert",
        dataset="builtin:reviews?n=360",
        partition="by-domain",
        nodes=3,
        rounds=2,
        patience=5,
        max_length=24,
        checkpoint_rank=32,
        profiles=TINY_PROFILES,
    )
    values.update(overrides)
    return FederationConfig.model_validate(values)


def local_grid(num_nodes: int, first_id: int = 1001) -> LocalGrid:
    """A LocalGrid of ``num_nodes`` real ClientApps with partition ids 0..n-1."""
    ids = [first_id + 7 * i for i in range(num_nodes)]
    return LocalGrid(
        {n: client_app for n in ids},
        {n: {"partition-id": i, "num-partitions": num_nodes} for i, n in enumerate(ids)},
    )


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():  # noqa: ANN201
    """Factory of tiny federation configs (see :func:`tiny_config`)."""
    return tiny_config


@pytest.fixture(name="local_grid")
def local_grid_fixture():  # noqa: ANN201
    """Factory of in-process grids (see :func:`local_grid`)."""
    return local_grid


@pytest.fixture(name="tiny_profiles")
def tiny_profiles_fixture() -> dict[str, RoleProfile]:
    return dict(TINY_PROFILES)


def letters_task(path: Path, n: int = 900) -> Path:
    """A CSV a 2-layer byte-level model learns in a few steps: label 1 texts use a-m, label 0 texts n-z."""
    rng = random.Random(0)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(n):
            letters = "abcdefghijklm" if i % 2 else "nopqrstuvwxyz"
            words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(3, 6))]
            writer.writerow([" ".join(words), i % 2])
    return path


@pytest.fixture(scope="session")
def letters_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task tiny models learn (see :func:`letters_task`): honest updates share a direction, as on a real model."""
    return letters_task(tmp_path_factory.mktemp("letters") / "letters.csv")


@pytest.fixture
def kill_before_checkpoint(monkeypatch: pytest.MonkeyPatch) -> Callable[[int, type[BaseException]], None]:
    """Arm a simulated kill of the coordinator between round N's ledger commit and its checkpoint.

    ``arm(server_round, error)`` makes ``promote_state`` raise ``error`` when the
    staged checkpoint is round ``server_round``'s; ``monkeypatch.undo()`` disarms it.
    """
    import sentinel.server.rounds as rounds_module

    real_promote = rounds_module.promote_state

    def arm(server_round: int, error: type[BaseException]) -> None:
        def promote(checkpoint_dir: Path) -> None:
            staged = json.loads((checkpoint_dir / "pending" / "state.json").read_text())
            if staged["round"] == server_round:
                raise error(f"killed between round {server_round}'s ledger commit and its checkpoint")
            real_promote(checkpoint_dir)

        monkeypatch.setattr(rounds_module, "promote_state", promote)

    return arm
