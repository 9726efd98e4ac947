"""`sentinel simulate` answers a user's mistake with one clear line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner


def _run(*args: str) -> tuple[int, str]:
    from sentinel.server.cli import app

    result = CliRunner().invoke(app, ["simulate", *args])
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def test_an_unknown_model_is_one_line_that_lists_the_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, output = _run("--model", "tiny-bertt", "--out", str(tmp_path / "run"))
    line = _one_error_line(output)
    assert code != 0 and "tiny-bertt" in line and "tiny-bert, tiny-gpt2, tiny-llama, minilm" in line


def test_a_single_label_dataset_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "one.csv"
    data.write_text("text,label\n" + "".join(f"text {i},1\n" for i in range(20)))
    code, output = _run("--model", "tiny-bert", "--dataset", f"csv:{data}", "--nodes", "2", "--out", str(tmp_path / "run"))
    assert code != 0 and "single label" in _one_error_line(output)


def test_a_bad_policy_and_a_missing_data_file_are_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("just a string\n")
    code, output = _run("--model", "tiny-bert", "--policy", str(policy), "--out", str(tmp_path / "a"))
    assert code != 0 and "policy" in _one_error_line(output).lower()
    code, output = _run("--model", "tiny-bert", "--dataset", f"csv:{tmp_path / 'nope.csv'}", "--out", str(tmp_path / "b"))
    assert code != 0 and "nope.csv" in _one_error_line(output)


def test_resume_on_a_folder_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    code, output = _run("--resume", str(tmp_path))
    assert code != 0 and "holds no Sentinel run" in _one_error_line(output)


@pytest.mark.usefixtures("inside_a_server_app")
def test_nodes_build_the_base_model_with_the_run_seed() -> None:
    """17 of 41 tiny-bert tensors differed at --seed 1 when nodes used seed 0 (issue 13)."""
    import torch
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from sentinel.client.app import node_inputs
    from sentinel.models.loading import load_base_model
    from sentinel.protos import messages as P
    from sentinel.server.config import FederationConfig
    from sentinel.server.outcome import NodeInfo
    from sentinel.server.strategy import SentinelStrategy

    config = FederationConfig(model="tiny-bert", dataset="builtin:reviews?n=120", nodes=2, seed=1)
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set())
    cfg = strategy.node_config(NodeInfo(7, 0, "edge", None), 1)
    msg = Message(RecordDict({P.REC_CONFIG: ConfigRecord(dict(cfg))}), dst_node_id=7, message_type=P.MSG_TRAIN)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2, "key-file": "unused"}, state=RecordDict(), run_config={})
    _, _, node_base, _, _ = node_inputs(msg, context)
    coordinator_base = load_base_model("tiny-bert", task="classification", num_labels=2, seed=1)
    node_sd, coord_sd = node_base.model.state_dict(), coordinator_base.model.state_dict()
    assert node_sd.keys() == coord_sd.keys()
    assert all(torch.equal(node_sd[k], coord_sd[k]) for k in node_sd)
