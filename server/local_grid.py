"""LocalGrid: a synchronous, in-process Flower Grid for debugging and fast tests.

It delivers each message straight to a ClientApp in the same process (no Ray,
no SuperLink), so a whole ServerApp round runs in well under a second on tiny
models. Messages are deep-copied on the way in and out, as a real transport
would serialise them, so in-place changes never leak between nodes. Use the
simulation engine or a deployment for anything that must be realistic.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ClientFn = Callable[[Message, Context], Message]
CLIENT_APP_RAISED_EXCEPTION = 2  # Flower's error code for an exception in a ClientApp


def _simulated_keys(node_configs: Mapping[int, dict[str, Any]]) -> Path:
    """A fresh directory of random keys for the partitions in ``node_configs``."""
    import tempfile

    from sentinel.client.node import ensure_simulated_keys

    partitions = [int(c["partition-id"]) for c in node_configs.values() if isinstance(c.get("partition-id"), int)]
    return ensure_simulated_keys(tempfile.mkdtemp(prefix="sentinel-node-keys-"), max(partitions, default=-1) + 1)


class LocalGrid(Grid):
    """A Grid whose nodes are ClientApps (or plain callables) called in-process.

    Parameters
    ----------
    apps : Mapping[int, ClientApp | ClientFn]
        Node id → the app that answers that node's messages.
    node_configs : Mapping[int, dict], optional
        Node id → its ``context.node_config``.
    node_keys : str or Path, optional
        The directory of the nodes' simulated keys, added to each node config
        that names no ``key-file`` (``node-keys``; see
        ``client.node.ensure_simulated_keys``). By default a fresh temporary
        directory of random keys for the grid's partitions; pass a run's
        directory to keep them with the run (a resumed run signs with the same keys).
    """

    def __init__(
        self,
        apps: Mapping[int, ClientApp | ClientFn],
        node_configs: Mapping[int, dict[str, Any]] | None = None,
        node_keys: str | Path | None = None,
    ) -> None:
        from sentinel.client.node import SIMULATED_KEYS

        self._apps = dict(apps)
        configs = {n: dict((node_configs or {}).get(n, {})) for n in self._apps}
        self.node_keys = Path(node_keys) if node_keys is not None else _simulated_keys(configs)
        for cfg in configs.values():
            if "key-file" not in cfg:
                cfg.setdefault(SIMULATED_KEYS, str(self.node_keys))
        self._contexts = {
            n: Context(run_id=1, node_id=n, node_config=configs[n], state=RecordDict(), run_config={}) for n in self._apps
        }
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._run = Run.create_empty(1)
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1

    def set_run(self, run: Run) -> None:
        """Set the run (kept for API compatibility)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The current run."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        """Create a message to one node."""
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        """All nodes of this grid."""
        return list(self._apps)

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        incoming = copy.deepcopy(message)
        try:
            reply = self._apps[node](incoming, self._contexts[node])
        except Exception as e:  # a real node answers with an error reply, so do we
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(e).__name__}: {e}"), reply_to=incoming)
        return copy.deepcopy(reply)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now and keep its reply for :meth:`pull_messages`."""
        ids = []
        for message in messages:
            if message.metadata.dst_node_id not in self._apps:
                raise ValueError(f"no node with id {message.metadata.dst_node_id} in this LocalGrid")
            mid = str(next(self._ids))
            self._replies[mid] = self._deliver(message)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to previously pushed messages."""
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push and pull at once (every reply is ready immediately)."""
        return self.pull_messages(self.push_messages(messages))
