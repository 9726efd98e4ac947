"""What a node resolves from its own config: device, identity."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict
from sentinel.client.node import node_identity


def test_device_resolution_is_explicit_about_missing_cuda() -> None:
    import torch
    from sentinel.client.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")



def test_node_identity_is_validated_with_clear_errors() -> None:
    def ctx(cfg: dict) -> Context:
        return Context(run_id=1, node_id=7, node_config=cfg, state=RecordDict(), run_config={})

    ident = node_identity(ctx({"partition-id": 2, "num-partitions": 4, "role": "edge", "device": "cpu"}))
    assert (ident.partition_id, ident.num_partitions, ident.role, ident.device) == (2, 4, "edge", "cpu")
    with pytest.raises(ValueError, match="role"):
        node_identity(ctx({"partition-id": 0, "num-partitions": 1, "role": "laptop"}))
    with pytest.raises(ValueError, match="partition-id"):
        node_identity(ctx({"num-partitions": 1}))
