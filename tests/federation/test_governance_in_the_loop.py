"""Governance acts between rounds change what the next round permits; contracts travel with artefacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message
from sentinel.client.app import app as honest_app
from sentinel.client.node import simulated_node_key
from sentinel.governance.contracts import ContractSet
from sentinel.governance.proposals import ContractChangeSpec, sign_proposal, sign_vote
from sentinel.ledger.crypto import public_key_b64
from sentinel.protos import messages as P
from sentinel.protos.vocabulary import node_id_of_key
from sentinel.server.checkpoints import load_state
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid
from sentinel.server.observer import RoundObserver

IDS = [1001, 1008, 1015]  # partitions 0 (edge), 1 (central), 2 (gpu)


class Recorder:
    """A node app that remembers the permitted set and contract version each train message carried."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], tuple[set[str], int]] = {}

    def __call__(self, msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == P.MSG_TRAIN:
            cfg = msg.content[P.REC_CONFIG]
            key = (int(cfg[P.C_ROUND]), int(context.node_config["partition-id"]))
            self.seen[key] = (set(cfg[P.C_PERMITTED]), int(cfg[P.C_CONTRACT_VERSION]))
        return honest_app(msg, context)


def _key_id(keys: Path, partition: int) -> str:
    """The lasting id of a simulated node: derived from its key, as the coordinator derives it."""
    return node_id_of_key(public_key_b64(simulated_node_key(keys, partition)))


class PassProposalAfterRound(RoundObserver):
    """An observer that has two nodes pass a signed proposal once ``after`` rounds are done."""

    def __init__(self, coordinator: Coordinator, spec: ContractChangeSpec, after: int, keys: Path) -> None:
        self.coordinator, self.spec, self.after, self.keys = coordinator, spec, after, keys
        self.status: str | None = None

    def on_round(self, outcome: Any, row: Any, state: Any, previous: Any) -> dict[str, Any]:
        if outcome.round != self.after:
            return {}
        governor = self.coordinator.governance.governor
        gpu, central = _key_id(self.keys, 2), _key_id(self.keys, 1)
        proposal = governor.submit_proposal(sign_proposal(simulated_node_key(self.keys, 2), gpu, self.spec, title="let edge adapt layer 0"))
        governor.cast_vote(sign_vote(simulated_node_key(self.keys, 2), proposal.proposal_id, gpu, "yes"))
        record = governor.cast_vote(sign_vote(simulated_node_key(self.keys, 1), proposal.proposal_id, central, "yes"))
        self.status = record.status
        return {}


def test_a_passed_proposal_changes_the_next_rounds_permitted_sets(tmp_path: Path, tiny_config) -> None:
    config = tiny_config(rounds=2)
    coordinator = Coordinator.build(config, tmp_path / "gov")
    recorder = Recorder()
    spec = ContractChangeSpec(kind="grant", operation="adapt", components=["layer.0.head.*"], roles=["edge"])
    grid = LocalGrid({n: recorder for n in IDS}, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(IDS)})
    passer = PassProposalAfterRound(coordinator, spec, after=1, keys=grid.node_keys)
    result = coordinator.run(grid, extra_observers=[passer])

    assert passer.status == "executed"
    edge_r1, version_r1 = recorder.seen[(1, 0)]
    edge_r2, version_r2 = recorder.seen[(2, 0)]
    layer0 = {f"layer.0.head.{h}" for h in range(4)}
    assert not (edge_r1 & layer0)
    assert layer0 <= edge_r2
    assert version_r2 == version_r1 + 1
    # Nodes whose rights did not change see the same set.
    assert recorder.seen[(1, 2)][0] == recorder.seen[(2, 2)][0]
    assert coordinator.governance.governor.may(_key_id(grid.node_keys, 0), "adapt", "layer.0.head.0").allowed
    # The edge node now trains layer-0 heads and is still accepted.
    assert result.history[-1]["consent_violations"] == 0
    assert [n["contract_version"] for n in result.history[-1]["per_node"]] == [version_r2] * 3


@pytest.mark.slow
def test_contracts_travel_with_checkpoints_adapters_and_onnx(tmp_path: Path, tiny_config) -> None:
    from sentinel.models.onnx_export import ADAPTER_CONTRACTS_FILE, read_metadata
    from sentinel.server.cli import app
    from typer.testing import CliRunner

    out = tmp_path / "run"
    config = tiny_config(rounds=1)
    coordinator = Coordinator.build(config, out)
    grid = LocalGrid({n: honest_app for n in IDS}, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(IDS)})
    coordinator.run(grid)
    installed = coordinator.governance.governor.contracts()

    last = load_state(out / "checkpoint" / "last")
    assert ContractSet.from_json(last.meta["consent_contracts"]).content_hash() == installed.content_hash()
    adapter_file = out / "checkpoint" / "best" / ADAPTER_CONTRACTS_FILE
    assert ContractSet.from_json(adapter_file.read_text()).content_hash() == installed.content_hash()

    onnx_path = tmp_path / "edge.onnx"
    res = CliRunner().invoke(app, ["models", "export-onnx", "tiny-bert", "--adapter", str(out / "checkpoint" / "best"), "--out", str(onnx_path)])
    assert res.exit_code == 0, res.output
    meta = read_metadata(onnx_path)
    assert json.loads(meta["consent_contracts"]) == json.loads(adapter_file.read_text())


def test_heads_with_saturated_entropy_put_themselves_to_rest(tmp_path: Path, tiny_config) -> None:
    from sentinel.governance.policy_file import default_policy_text
    from sentinel.ledger.kinds import EntryKind

    # Every head of a random tiny model attends nearly uniformly: with a threshold of
    # 0.5 they all count as saturated after one round and rest themselves.
    text = default_policy_text().replace("threshold: 0.97", "threshold: 0.5").replace("rounds: 3", "rounds: 1")
    text = text.replace("recover_below: 0.9", "recover_below: 0.1")
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    coordinator = Coordinator.build(tiny_config(rounds=2, policy=str(policy)), tmp_path / "agency")
    recorder = Recorder()
    grid = LocalGrid({n: recorder for n in IDS}, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(IDS)})
    result = coordinator.run(grid)

    first, second = result.history[1], result.history[2]
    assert len(first["agency_changes"]) == 8 and all("active -> resting" in c for c in first["agency_changes"])
    gpu_r1, _ = recorder.seen[(1, 2)]
    gpu_r2, _ = recorder.seen[(2, 2)]
    assert any(".head." in c for c in gpu_r1)
    assert not any(".head." in c for c in gpu_r2)  # resting heads may not be adapted by anyone
    assert "classifier" in gpu_r2
    assert second["consent_violations"] == 0
    changed = list(coordinator.ledger.iter_entries(kind=EntryKind.CONTRACT_CHANGED))
    assert len(changed) >= 2  # installation, then the agency signal
