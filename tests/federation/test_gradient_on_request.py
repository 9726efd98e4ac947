"""Nodes measure gradient head importance only when the coordinator asks for it (federated plasticity on).

Gradient importance costs a backward pass per probe batch after every round
of training (1.7 s of a MiniLM node's 10.7 s round here, with the entropies);
only federated plasticity reads it.
"""

from __future__ import annotations

import pytest
from flwr.app import Message, RecordDict
from sentinel.client.app import app as client_app
from sentinel.models.loading import load_base_model
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, global_view_record
from sentinel.server.central import initial_state
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo
from sentinel.server.strategy import SentinelStrategy

NODE = 904


def _strategy(plasticity: bool) -> SentinelStrategy:
    config = FederationConfig.model_validate(
        dict(
            model="tiny-bert", dataset="builtin:reviews?n=120", partition="iid", nodes=2, rounds=1, max_length=16,
            plasticity=plasticity, profiles={"gpu": RoleProfile(lora_rank=2, local_steps=1, batch_size=4, learning_rate=1e-2)},
        )
    )
    return SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)


@pytest.mark.parametrize("plasticity", [False, True])
def test_the_node_reports_gradient_importance_exactly_when_plasticity_runs(plasticity: bool) -> None:
    grid = LocalGrid({NODE: client_app}, {NODE: {"partition-id": 0, "num-partitions": 2, "role": "gpu", "device": "cpu"}})
    strategy = _strategy(plasticity)
    info = NodeInfo(NODE, 0, "gpu", "")
    config = strategy.node_config(info, 1)
    assert config[P.C_MEASURE_GRADIENT] is plasticity
    state = initial_state(load_base_model("tiny-bert", task="classification", num_labels=2, seed=0))
    content = RecordDict({P.REC_ARRAYS: global_view_record({}, state.head), P.REC_CONFIG: config})
    (reply,) = grid.send_and_receive([Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=NODE)])
    assert not reply.has_error(), reply.error
    importance = from_array_record(reply.content[P.REC_IMPORTANCE])
    assert (P.KEY_GRAD_IMPORTANCE in importance) is plasticity
    assert {P.KEY_ENTROPY, P.KEY_ENTROPY_NORMALISED} <= set(importance)
