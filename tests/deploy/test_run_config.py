"""One flat key space: pyproject's declared keys, --run-config, --config run.toml and FederationConfig."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.run_config import (
    RUN_KEYS,
    RunConfigError,
    declared_defaults,
    flatten,
    load_file,
    parse_pairs,
    to_federation_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_declares_every_key_with_its_default() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == declared_defaults()


def test_declared_keys_cover_every_config_field_and_profile_field() -> None:
    keys = set(declared_defaults()) - set(RUN_KEYS)
    fields = {f.replace("_", "-") for f in FederationConfig.model_fields if f != "profiles"}
    profile = {f"{r}-{f.replace('_', '-')}" for r in ("edge", "gpu", "central") for f in RoleProfile.model_fields}
    assert keys == fields | profile
    assert {"validation", "validator-roles", "update-norm-factor", "edge-lora-rank", "gpu-local-epochs"} <= keys


def test_flat_keys_round_trip_every_field() -> None:
    config = FederationConfig(
        model="tiny-bert", nodes=3, roles=["edge", "central", "gpu"], policy="p.yaml", validator_roles=["central"],
        profiles={"edge": RoleProfile(lora_rank=2, local_steps=3, local_epochs=1.5, batch_size=8, learning_rate=5e-3)},
    )
    assert to_federation_config(flatten(config)) == config
    assert to_federation_config(flatten(FederationConfig())) == FederationConfig()


def test_flags_override_a_file_and_the_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('rounds = 2\nmodel = "tiny-bert"\nedge-lora-rank = 2\nroles = "edge,gpu,central"\nnodes = 3\n')
    from_file = to_federation_config(load_file(path))
    assert (from_file.rounds, from_file.model, from_file.profiles["edge"].lora_rank) == (2, "tiny-bert", 2)
    assert from_file.roles == ["edge", "gpu", "central"]
    assert from_file.profiles["gpu"] == FederationConfig().profiles["gpu"]
    flagged = to_federation_config({"rounds": 5}, base=from_file)
    assert (flagged.rounds, flagged.model) == (5, "tiny-bert")


@pytest.mark.parametrize(
    ("flat", "expected"),
    [
        ({"roundz": 2}, "unknown run-config key `roundz` (did you mean `rounds`?)"),
        ({"rounds": 0}, "run-config `rounds`: Input should be greater than or equal to 1 (got 0)"),
        ({"edge-lora-rank": 0}, "run-config `edge-lora-rank`: Input should be greater than or equal to 1"),
        ({"aggregation": "mean"}, "run-config `aggregation`: Input should be 'exact' or 'naive' (got 'mean')"),
        ({"nodes": 2, "roles": "edge,gpu,central"}, "`roles` lists 3 roles but `nodes` is 2"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_it(flat: dict, expected: str) -> None:
    with pytest.raises(RunConfigError) as info:
        to_federation_config(flat)
    message = str(info.value)
    assert expected in message and "\n" not in message and "pydantic" not in message


def test_config_files_are_flat_and_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[profiles.edge]\nlora-rank = 2\n")
    with pytest.raises(RunConfigError, match="flat"):
        load_file(bad)
    bad.write_text("rounds = [1, 2]\n")
    with pytest.raises(RunConfigError, match="comma-separated"):
        load_file(bad)
    bad.write_text("rounds = \n")
    with pytest.raises(RunConfigError, match="not valid TOML"):
        load_file(bad)
    with pytest.raises(RunConfigError, match="cannot read"):
        load_file(tmp_path / "missing.toml")


def test_flower_syntax_pairs_parse() -> None:
    assert parse_pairs('rounds=2 model="tiny-bert" consent=false') == {"rounds": 2, "model": "tiny-bert", "consent": False}
