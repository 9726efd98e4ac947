"""deploy/: YAML lint, Kubernetes schemas (bundled with kubernetes-validate, offline) and what the files must say.

Images are not built here (no Docker engine); these checks are what can be
verified without one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
RUN_ROLES = tomllib.loads((DEPLOY / "run.toml").read_text())["roles"].split(",")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_yaml_lint() -> None:
    pytest.importorskip("yamllint")
    res = subprocess.run([sys.executable, "-m", "yamllint", "-c", str(DEPLOY / ".yamllint"), str(DEPLOY)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_schemas(path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for doc in _docs(path):
        kv.validate(doc, "1.30.0", strict=True)


def test_kubernetes_has_the_pieces_the_issue_names() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for p in K8S for d in _docs(p)}
    assert ("Deployment", "sentinel-coordinator") in kinds and ("Service", "sentinel-coordinator") in kinds
    assert ("PersistentVolume", "sentinel-coordinator-data") in kinds and ("PersistentVolumeClaim", "sentinel-coordinator-data") in kinds
    assert {n for k, n in kinds if k == "Secret"} >= {"sentinel-coordinator-tls", "sentinel-node-cards"}
    nodes = [d for d in _docs(DEPLOY / "k8s" / "nodes.yaml") if d["kind"] == "Deployment"]
    for d in nodes:
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        pid = int(args[args.index("--partition-id") + 1])
        assert args[args.index("--role") + 1] == RUN_ROLES[pid]
        assert "--key-file" in args and "--ca" in args and "--insecure" not in args
        secret = d["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
        assert secret == d["metadata"]["name"]  # each node mounts only its own keys
    coordinator = next(d for d in _docs(DEPLOY / "k8s" / "coordinator.yaml") if d["kind"] == "Deployment")
    args = coordinator["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--tls-cert" in args and "--insecure" not in args and "--no-node-auth" not in args


def test_compose_runs_tls_node_auth_and_keys_with_matching_roles() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"coordinator", "node-edge", "node-gpu", "node-central", "keys"} <= set(services)
    assert services["coordinator"]["ports"] == ["127.0.0.1:9093:9093"]  # loopback only
    text = (DEPLOY / "compose.yaml").read_text()
    assert "--insecure" not in text and "0.0.0.0:" not in text
    for name in ("node-edge", "node-gpu", "node-central"):
        svc = services[name]
        args = svc["command"]
        assert "ports" not in svc
        pid = int(args[args.index("--partition-id") + 1])
        assert args[args.index("--role") + 1] == RUN_ROLES[pid] == name.removeprefix("node-")
        assert "--key-file" in args and "--auth-key" in args and "--ca" in args
        (mount,) = svc["volumes"]
        assert mount["read_only"] and mount["volume"]["subpath"] == f"{name.removeprefix('node-')}-0"


def test_the_deploy_run_config_is_valid() -> None:
    from sentinel.server.run_config import load_file, to_federation_config

    config = to_federation_config(load_file(DEPLOY / "run.toml"))
    assert [config.role_of_partition(i) for i in range(config.nodes)] == RUN_ROLES


@pytest.mark.parametrize("image", sorted((DEPLOY / "images").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_images_copy_every_package_folder(image: Path) -> None:
    text = image.read_text()
    for folder in ("models", "client", "server", "ledger", "governance", "protos"):
        assert f"COPY {folder} ./{folder}" in text
    if "gpu" not in image.name:
        assert "-c constraints-cpu.txt" in text and "nvidia-" in text
    if shutil.which("hadolint"):  # pragma: no cover - not installed here
        assert subprocess.run(["hadolint", str(image)], timeout=60).returncode == 0
