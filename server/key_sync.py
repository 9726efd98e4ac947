"""Keeping Flower's SuperNode key registry in step with the governance node registry.

Flower admits a SuperNode only if its ECDSA key is registered with the
SuperLink; governance knows a node by its Ed25519 key. A node's **card**
(``sentinel keys node``) binds the two: the Ed25519 key signs the ECDSA key.
The coordinator keeps the cards it admits in one directory, and
:class:`KeySync` reconciles, every few seconds:

- a card whose binding verifies and whose Ed25519 key governance has not
  removed → its ECDSA key is registered with Flower;
- a node governance removes (``status: removed``), a card taken out of the
  directory, or a key registered by hand without a card → unregistered, so the
  SuperNode can no longer connect;
- a node governance registers with no card for its key is reported (Flower
  cannot admit it without the ECDSA half).

The card directory plus governance is the source of truth; Flower's registry
follows them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sentinel.governance.registry import NodeRegistry
from sentinel.server.control import Link, auth_key_bytes, control_client, list_nodes, register_node, unregister_node
from sentinel.server.tls import NodeCard

log = logging.getLogger("sentinel.server")


@dataclass
class SyncResult:
    """What one reconciliation changed."""

    registered: list[str] = field(default_factory=list)
    unregistered: list[int] = field(default_factory=list)
    without_card: list[str] = field(default_factory=list)


def load_cards(directory: Path) -> list[NodeCard]:
    """The valid cards in ``directory`` (a bad or forged card is logged and skipped)."""
    cards = []
    for path in sorted(Path(directory).glob("*.card.json")):
        try:
            card = NodeCard.load(path)
        except ValueError as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if not card.verified():
            log.warning("skipping %s: its Ed25519 key did not sign its SuperNode key", path)
            continue
        cards.append(card)
    return cards


def desired_keys(cards: list[NodeCard], registry: NodeRegistry) -> tuple[dict[bytes, NodeCard], list[str]]:
    """Flower keys that should be registered, and governance nodes that have no card."""
    removed = {r.public_key for r in registry.values() if not r.active and r.public_key}
    desired: dict[bytes, NodeCard] = {}
    for card in cards:
        if card.public_key in removed:
            continue
        try:
            desired[auth_key_bytes(card.auth_public_key)] = card
        except ValueError as e:
            log.warning("skipping card %s: %s", card.name, e)
    carded = {c.public_key for c in cards}
    without = [r.node_id for r in registry.active() if r.public_key and r.public_key not in carded]
    return desired, without


class KeySync:
    """Reconciles Flower's SuperNode registry with the cards and governance, on demand or in a thread."""

    def __init__(self, link: Link, cards_dir: Path, registry: Callable[[], NodeRegistry], interval: float = 5.0) -> None:
        self.link, self.cards_dir, self.registry, self.interval = link, Path(cards_dir), registry, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: set[str] = set()

    def reconcile(self) -> SyncResult:
        """One pass: register what should be, unregister what should not."""
        desired, without = desired_keys(load_cards(self.cards_dir), self.registry())
        result = SyncResult(without_card=without)
        with control_client(self.link) as client:
            current = {n.public_key: n for n in list_nodes(client)}
            for key, card in desired.items():
                if key not in current:
                    node_id = register_node(client, key, card.name)
                    result.registered.append(card.name)
                    log.info("registered SuperNode key of %s (Flower node %d)", card.name, node_id)
            for key, node in current.items():
                if key not in desired:
                    unregister_node(client, node.node_id)
                    result.unregistered.append(node.node_id)
                    log.info("unregistered SuperNode %d (%s): no admitted card, or removed by governance", node.node_id, node.name or "unnamed")
        for node_id in set(without) - self._reported:
            log.warning("governance node %s has no card in %s: its SuperNode cannot be admitted", node_id, self.cards_dir)
        self._reported |= set(without)
        return result

    def start(self) -> KeySync:
        """Reconcile every ``interval`` seconds in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="key-sync", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reconcile()
            except Exception as e:  # a SuperLink restart or a locked database: try again next time
                log.warning("key sync failed (will retry): %s", e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)


__all__ = ["KeySync", "SyncResult", "desired_keys", "load_cards"]
