"""Micro-benchmark of the policy engine: `python tests/benchmarks/policy_speed.py`.

Times what the coordinator does each round for a BERT-base-sized model (12
layers x 12 heads) and a federation of many nodes: building the engine for a new
contract-set version, the permitted sets of every node (cold and cached), and a
`may` question for every head of every node. Prints; asserts nothing.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from sentinel.governance.policy import PolicyEngine
from sentinel.governance.policy_file import derive_contracts, load_default_policy
from sentinel.protos.vocabulary import standard_components


def _timed(label: str, fn, per: int) -> None:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {elapsed * 1e3:9.3f} ms total  {elapsed / per * 1e6:9.2f} us per node")


def main(num_nodes: int = 1000) -> None:
    """Run the benchmark for ``num_nodes`` nodes."""
    components = standard_components(12, 12)
    contracts = derive_contracts(load_default_policy(), components, "bench", model="bert-base")
    nodes = {str(2**63 + i): ("edge", "gpu", "central")[i % 3] for i in range(num_nodes)}
    now = datetime.now(timezone.utc)
    heads = [c for c in components if ".head." in c]
    print(f"{len(contracts)} components ({len(heads)} heads), {num_nodes} nodes")

    holder: dict[str, PolicyEngine] = {}
    _timed("build engine (new contract version)", lambda: holder.setdefault("e", PolicyEngine(contracts, nodes)), num_nodes)
    engine = holder["e"]
    _timed("permitted_set, every node, cold", lambda: engine.permitted_sets("adapt", now), num_nodes)
    _timed("permitted_set, every node, cached", lambda: engine.permitted_sets("adapt", now), num_nodes)
    _timed(
        "may(), every head of every node",
        lambda: [engine.may(n, "adapt", h, now) for n in nodes for h in heads],
        num_nodes,
    )


if __name__ == "__main__":
    main()
