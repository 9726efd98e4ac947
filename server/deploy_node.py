"""``sentinel node``: one SuperNode for this machine, with its key, role and data, checked before it starts.

A node refuses to start without its Ed25519 signing key (``--key-file``): every
update, verdict and vote it sends is signed with it, and the coordinator
admits only the key governance registered. The SuperNode key (``--auth-key``,
ECDSA) is what Flower's SuperNode authentication checks; ``sentinel keys
node NAME`` makes both, with the card the coordinator admits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sentinel.protos.messages import NODE_EDGE_BUNDLE_DIR, NODE_STATE_DIR
from sentinel.protos.vocabulary import ROLES
from sentinel.server.processes import flower_bin, flower_env


def _toml(value: str | int) -> str:
    return str(value) if isinstance(value, int) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class NodeSettings:
    """What ``sentinel node`` was asked for."""

    key_file: Path | None
    superlink: str = "127.0.0.1:9093"
    ca: Path | None = None
    insecure: bool = False
    auth_key: Path | None = None
    role: str | None = None
    partition_id: int = 0
    num_partitions: int = 1
    dataset: str | None = None
    lora_rank: int | None = None
    device: str = "auto"
    port: int = 9094
    home: Path | None = None
    edge_bundle_dir: Path | None = None
    state_dir: Path | None = None

    def checked(self) -> NodeSettings:
        """These settings, validated (``ValueError`` names the problem); the default auth key filled in."""
        from sentinel.ledger.crypto import load_private_key

        if self.key_file is None:
            raise ValueError("a node needs its signing key: --key-file NODE.key (make one with `sentinel keys node NAME --out DIR`)")
        try:
            load_private_key(self.key_file)
        except (OSError, ValueError) as e:
            raise ValueError(f"--key-file: {e}") from e
        if self.insecure == (self.ca is not None):
            raise ValueError("give --ca (the CA that signed the coordinator's certificate), or --insecure for plaintext")
        if self.ca is not None and not Path(self.ca).is_file():
            raise ValueError(f"--ca {self.ca} is not a file")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"--role {self.role!r} is not one of {', '.join(ROLES)}")
        if not 0 <= self.partition_id < self.num_partitions:
            raise ValueError(f"--partition-id {self.partition_id} is not in 0..{self.num_partitions - 1} (--num-partitions)")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError("--lora-rank must be at least 1")
        auth = self.auth_key
        if auth is None:
            candidate = Path(self.key_file).with_suffix(".auth")
            auth = candidate if candidate.is_file() else None
        elif not Path(auth).is_file():
            raise ValueError(f"--auth-key {auth} is not a file")
        return replace(self, auth_key=auth)

    def node_config(self) -> str:
        """The SuperNode's ``--node-config`` (TOML values)."""
        items: dict[str, str | int] = {
            "partition-id": self.partition_id,
            "num-partitions": self.num_partitions,
            "key-file": str(Path(self.key_file).resolve()),  # type: ignore[arg-type]
            "device": self.device,
        }
        if self.role:
            items["role"] = self.role
        if self.dataset:
            items["dataset"] = self.dataset
        if self.lora_rank is not None:
            items["lora-rank"] = self.lora_rank
        for key, directory in ((NODE_EDGE_BUNDLE_DIR, self.edge_bundle_dir), (NODE_STATE_DIR, self.state_dir)):
            if directory is not None:  # absolute: the ClientApp does not run in the operator's working directory
                items[key] = str(Path(directory).expanduser().resolve())
        return " ".join(f"{k}={_toml(v)}" for k, v in items.items())

    def argv(self) -> list[str]:
        argv = [flower_bin("flower-supernode"), "--superlink", self.superlink, "--port", str(self.port)]
        argv += ["--insecure"] if self.insecure else ["--root-certificates", str(self.ca)]
        if self.auth_key is not None:
            argv += ["--auth-supernode-private-key", str(self.auth_key)]
        return argv + ["--node-config", self.node_config()]

    def env(self) -> dict[str, str]:
        import os

        home = self.home or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr") / f"supernode-{self.port}"
        return {**os.environ, **flower_env(home)}


__all__ = ["NodeSettings"]
