"""Misbehaving nodes for red-team tests of the coordinator's defences.

A real federation must assume some nodes ignore the rules. These ClientApps
behave like an honest node except for one deliberate fault, so tests (and
operators rehearsing an incident) can check that the coordinator catches it:

- ``consent_ignoring_app``: trains every head, ignoring its permitted set.
- ``signature_forging_app``: signs its update with a key that is not its own.
- ``scaling_inflating_app``: reports a huge LoRA scaling to amplify its update.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from sentinel.client import app as honest
from sentinel.client.node import node_identity
from sentinel.ledger.crypto import generate_private_key
from sentinel.ledger.recorder import update_submitted_payload
from sentinel.ledger.signing import sign_payload
from sentinel.protos import messages as P


def _misbehaves(context: Context, partitions: Collection[int]) -> bool:
    ident = node_identity(context)
    return ident.partition_id in partitions or bool(context.node_config.get("misbehave", False))


def _app_with_train(train: Callable[[Message, Context], Message]) -> ClientApp:
    """An honest node's app with its train handler replaced."""
    app = ClientApp()
    app.query("profile")(honest.profile)
    app.evaluate()(honest.evaluate)
    app.train()(train)
    return app


def consent_ignoring_app(partitions: Collection[int]) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` (or with node config ``misbehave=true``) ignore consent."""
    partitions = frozenset(partitions)

    def train(msg: Message, context: Context) -> Message:
        if _misbehaves(context, partitions):
            cfg = ConfigRecord(dict(msg.content[P.REC_CONFIG]))
            cfg[P.C_RESTRICTED] = False  # train outside the permitted set
            msg.content[P.REC_CONFIG] = cfg
        return honest.train(msg, context)

    return _app_with_train(train)


def signature_forging_app(partitions: Collection[int]) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` sign their updates with a foreign key."""
    partitions = frozenset(partitions)

    def train(msg: Message, context: Context) -> Message:
        reply = honest.train(msg, context)
        if _misbehaves(context, partitions):
            signed = reply.content[P.REC_SIGNATURE]
            round_ = int(msg.content[P.REC_CONFIG][P.C_ROUND])
            examples = int(reply.content[P.REC_METRICS][P.M_EXAMPLES])
            payload = update_submitted_payload(context.node_id, round_, str(signed[P.S_CONTENT_HASH]), examples)
            signed[P.S_SIGNATURE] = sign_payload(generate_private_key(), payload)
        return reply

    return _app_with_train(train)


def scaling_inflating_app(partitions: Collection[int], factor: float = 500.0) -> ClientApp:
    """A ClientApp whose nodes on ``partitions`` claim a LoRA scaling ``factor`` times the real one."""
    partitions = frozenset(partitions)

    def train(msg: Message, context: Context) -> Message:
        reply = honest.train(msg, context)
        if _misbehaves(context, partitions):
            metrics = reply.content[P.REC_METRICS]
            metrics[P.M_SCALING] = float(metrics[P.M_SCALING]) * factor
        return reply

    return _app_with_train(train)
