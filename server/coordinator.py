"""Assembling a coordinator run: base model, data, strategy, evaluator, checkpoints.

Shared by ``sentinel simulate`` (simulation engine) and the deployment ServerApp,
so both run exactly the same federation logic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flwr.serverapp import Grid
from sentinel.client.data import DataSpecError, Example
from sentinel.client.data.federated import federated_split, node_train_val
from sentinel.governance.parameters import FederationParameters
from sentinel.ledger.store import Ledger
from sentinel.models.components import list_components, model_layout
from sentinel.models.consent import adapt_supports, touched_components
from sentinel.models.fileio import write_text_atomically
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.onnx_export import ADAPTER_CONTRACTS_FILE
from sentinel.server.central import CentralEvaluator, export_peft_adapter, initial_state
from sentinel.server.central_nodes import CentralNodeEvaluator
from sentinel.server.checkpoints import BEST, BEST_STATE, LAST, PENDING, load_state, recover_state, save_state
from sentinel.server.config import FederationConfig
from sentinel.server.contribution import contribution_scores
from sentinel.server.distill_phase import DistillationPhase
from sentinel.server.edge_deployment import EdgeDeployment
from sentinel.server.exceptions import CheckpointError, RunNotFoundError
from sentinel.server.governance_observer import GovernanceObserver
from sentinel.server.ledger_observer import LedgerObserver
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.plasticity import PlasticityPhase, mask_aware
from sentinel.server.role_figures import RoleFigures
from sentinel.server.rounds import Evaluate, RunResult, run_federation
from sentinel.server.state import GlobalState
from sentinel.server.strategy import PermittedFn, SentinelStrategy
from sentinel.server.validation import GateParameters, ValidationPhase

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoint"
LEDGER_FILE = "ledger.db"
GOVERNANCE_FILE = "governance.db"
COORDINATOR_KEY = "coordinator.key"


@dataclass
class Coordinator:
    """Everything the coordinator needs for one run, built once."""

    config: FederationConfig
    out_dir: Path
    base: LoadedModel
    evaluator: CentralEvaluator
    observers: list[RoundObserver] = field(default_factory=list)
    permitted_fn: PermittedFn | None = None
    ledger: Ledger | None = None
    governance: GovernanceObserver | None = None
    validation: ValidationPhase | None = None
    ledger_observer: LedgerObserver | None = None
    plasticity: PlasticityPhase | None = None
    distillation: DistillationPhase | None = None
    edge: EdgeDeployment | None = None
    train_sizes: tuple[int, ...] = ()
    """Training examples of each partition: the most a node can claim (its aggregation weight's bound)."""
    val_sizes: tuple[int, ...] = ()
    """Validation examples of each partition: the most a central node can evaluate on."""
    ledger_url: str | None = None
    """Where the run's ledger lives (a database URL); None: ``<out>/ledger.db`` (SQLite)."""
    governance_url: str | None = None
    """Where the run's governance store lives (a database URL); None: ``<out>/governance.db`` (SQLite)."""

    @classmethod
    def build(
        cls,
        config: FederationConfig,
        out_dir: Path,
        *,
        accountable: bool = True,
        ledger_url: str | None = None,
        governance_url: str | None = None,
    ) -> Coordinator:
        """Load the base model and held-out test set; open the ledger and governance (SQLite files in ``out_dir`` by default).

        ``ledger_url`` / ``governance_url`` put them in a database instead
        (``postgresql+psycopg://...``: the one the coordinator server's ledger and
        governance services serve, ``sentinel server --ledger-db/--governance-db``);
        the coordinator's signing key and trust anchor stay in ``out_dir``.
        With ``accountable=False`` the run keeps no ledger and enforces no consent
        (benchmarks that only measure learning).
        """
        out_dir = Path(out_dir)
        data = federated_split(
            config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed
        )
        labels = {e.label for e in data.test} | {e.label for part in data.partitions for e in part}
        if len(labels) < 2:
            raise DataSpecError(
                f"dataset {config.dataset!r} has a single label ({sorted(labels)}): a classifier cannot be trained or evaluated on it"
            )
        base = load_base_model(config.model, task="classification", num_labels=data.num_labels, seed=config.seed)
        splits = [node_train_val(data, i, config.val_fraction, config.seed) for i in range(config.nodes)]
        train_sizes = tuple(len(train) for train, _ in splits)
        val_sizes = tuple(len(val) for _, val in splits)
        evaluator = CentralEvaluator(base, data.test, config.max_length)
        coordinator = cls(
            config, out_dir, base, evaluator, train_sizes=train_sizes, val_sizes=val_sizes, ledger_url=ledger_url or None,
            governance_url=governance_url or None,
        )
        if accountable:
            coordinator._open_accountability(data.test[: config.contribution_examples])
        coordinator.observers.append(RoleFigures(config))  # after the ledger's: it reads contributions and tokens from the row
        return coordinator

    def _open_accountability(self, contribution_set: Sequence[Example]) -> None:
        """Open the ledger and governance stores and register their observers."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger.open(self.ledger_url or f"sqlite:///{self.out_dir / LEDGER_FILE}", self.out_dir / COORDINATOR_KEY)
        self.governance = GovernanceObserver.open(
            self.governance_url or self.out_dir / GOVERNANCE_FILE,
            self.ledger,
            list_components(self.base.model),
            self.config.model,
            self.config.policy,
            FederationParameters(token_budget=float(self.config.token_budget)),
        )
        self.observers.append(self.governance)  # first: it registers nodes on the ledger
        if self.config.consent:
            self.permitted_fn = self.governance.permitted
        scorer = None
        if self.config.contribution != "none":
            scoring_eval = CentralEvaluator(self.base, contribution_set, self.config.max_length)
            method, cfg = self.config.contribution, self.config

            def scorer(outcome: RoundOutcome, previous: GlobalState) -> dict[str, float]:
                return contribution_scores(
                    outcome.accepted,
                    previous,
                    cfg.aggregation,
                    scoring_eval,
                    method,
                    cfg.shapley_permutations,
                    cfg.seed + outcome.round,
                    outcome.frames,
                )

        governor = self.governance.governor
        budget = lambda: int(governor.parameters().token_budget)  # noqa: E731 - governance may change it between rounds
        self.ledger_observer = LedgerObserver(self.ledger, scorer, budget, self.config.contribution, anchor_dir=self.out_dir)
        self.observers.append(self.ledger_observer)

    def strategy(self) -> SentinelStrategy:
        """A fresh strategy wired to this model's components."""
        layout = model_layout(self.base.model)
        governance = self.governance
        return SentinelStrategy(
            self.config,
            touched_fn=lambda arrays, head: set(touched_components(layout, arrays, head)),
            support_fn=lambda arrays, permitted: adapt_supports(layout, arrays, permitted),
            permitted_fn=self.permitted_fn,
            contract_version_fn=(lambda: governance.contract_version) if governance is not None else None,
            max_examples_fn=self._max_examples,
            importance_shape=(layout.num_layers, layout.num_heads),
            norm_factor=self.config.update_norm_factor,
            min_cosine=self.config.update_min_cosine,
            num_labels=int(self.base.model.config.num_labels),
        )

    def _max_examples(self, node: NodeInfo) -> int:
        """The most examples ``node`` may claim this round (its aggregation weight's bound).

        The smallest of what the coordinator knows: the node's partition size
        (the coordinator's own split of the run's data; not for a node on its own
        dataset), the size the node declared at the handshake (required of a node
        on its own dataset), and the per-node cap governance sets (read each round,
        so a passed proposal takes effect on the next round).
        """
        if node.own_data:  # not a partition the coordinator knows: its declared size (required) bounds it
            bounds = []
        elif not 0 <= node.partition_id < len(self.train_sizes):
            return 0  # a partition the coordinator does not know: every claim is rejected
        else:
            bounds = [self.train_sizes[node.partition_id]]
        if node.declared_examples is not None:
            bounds.append(node.declared_examples)
        if self.governance is not None:
            bounds.append(int(self.governance.governor.parameters().max_examples_per_node))
        return min(bounds)

    def starting_state(self, resume: bool) -> GlobalState:
        """Round 0 (fresh run) or the checkpoint a resumed run continues from.

        On ``--resume`` a crash between a round's ledger records and its
        checkpoint is settled against the ledger (``checkpoints.recover_state``),
        so no round is recorded twice. A run stopped before its first round
        finished starts from round 0 again.
        """
        if not resume:
            return initial_state(self.base)
        checkpoints = self.out_dir / CHECKPOINT_DIR
        committed = self.ledger_observer.committed_round() if self.ledger_observer is not None else None
        if not (checkpoints / LAST).exists() and not (checkpoints / PENDING).exists():
            return initial_state(self.base)
        state = recover_state(checkpoints, committed)
        self._repair_best(state)
        return state

    def _repair_best(self, state: GlobalState) -> None:
        """Rewrite the best checkpoint if a crash came after its round committed but before the best was saved."""
        best_round = state.meta.get("best_round")
        best_dir = self.out_dir / CHECKPOINT_DIR / BEST_STATE
        if best_round != state.round:
            return
        try:
            saved = load_state(best_dir).round
        except CheckpointError:
            saved = -1
        if saved != state.round:
            save_state(state, best_dir)
            self.export_best(state, self.out_dir / CHECKPOINT_DIR / BEST)

    def export_best(self, state: GlobalState, directory: Path) -> None:
        """Write the best round's adapter in PEFT format, with the consent contracts it was trained under."""
        export_peft_adapter(self.base, state, directory, self.config.checkpoint_rank)
        if self.governance is not None:
            write_text_atomically(directory / ADAPTER_CONTRACTS_FILE, self.governance.contracts_json())

    def gate_parameters(self) -> GateParameters:
        """The validate phase's parameters, read from governance now (defaults without governance)."""
        params = self.governance.governor.parameters() if self.governance is not None else FederationParameters()
        return GateParameters.from_federation(params)

    def validation_phase(self, strategy: SentinelStrategy) -> ValidationPhase | None:
        """The validate phase of this run (None when validation is off)."""
        if not self.config.validation:
            return None
        return ValidationPhase(self.config.validator_roles, self.gate_parameters, strategy.node_config, self.config.seed)

    def plasticity_phase(self) -> PlasticityPhase | None:
        """The plasticity phase of this run (None when plasticity is off).

        Consent is asked of governance (``Governor.may``) whenever the run has it;
        its decisions go into the round's ledger batch.
        """
        if not self.config.plasticity:
            return None
        governor = self.governance.governor if self.governance is not None else None
        may = (lambda node, op, component: bool(governor.may(node, op, component))) if governor is not None else None
        record = self.ledger_observer.record_decision if self.ledger_observer is not None else None
        return PlasticityPhase(self.config, model_layout(self.base.model), may, record)

    def distillation_phase(self, strategy: SentinelStrategy) -> DistillationPhase | None:
        """The distillation phase of this run (None when ``distill`` is off).

        FFN narrowing asks governance whether the central nodes may ``prune``
        each layer's FFN; the bundle carries the contracts in force; the
        decision goes into the round's ledger batch.
        """
        if not self.config.distill:
            return None
        governor = self.governance.governor if self.governance is not None else None
        may = (lambda node, op, component: bool(governor.may(node, op, component))) if governor is not None else None
        record = self.ledger_observer.record_decision if self.ledger_observer is not None else None
        contracts = self.governance.contracts_json if self.governance is not None else None
        return DistillationPhase(
            self.config,
            self.base,
            self.out_dir,
            strategy.node_config,
            model_layout(self.base.model).num_layers,
            may=may,
            contracts=contracts,
            record=record,
            require_signature=strategy.require_signatures,
        )

    def edge_phase(self, strategy: SentinelStrategy) -> EdgeDeployment | None:
        """The edge phase of this run (None unless distillation exports bundles and ``edge_deploy`` is on)."""
        if self.distillation is None or not self.config.edge_deploy:
            return None
        return EdgeDeployment(
            self.distillation.current_bundle,
            strategy.node_config,
            max_examples_fn=self._max_val_examples,
            timeout=self.config.timeout_s,
        )

    def _max_val_examples(self, node: NodeInfo) -> int:
        """The most held-out examples a central node can evaluate on: its partition's validation split.

        A node on its own dataset has no partition here: the size it declared bounds it.
        """
        if node.own_data:
            return int(node.declared_examples or 0)
        if 0 <= node.partition_id < len(self.val_sizes):
            return self.val_sizes[node.partition_id]
        return 0  # a partition the coordinator does not know: every evaluation claim is refused

    def run_evaluator(self, grid: Grid, strategy: SentinelStrategy) -> tuple[Evaluate, list[RoundObserver]]:
        """The run's central evaluation (``central_evaluation``), head-mask aware under plasticity, and its observers.

        ``central-nodes``: the run's central nodes score the global model on their
        own held-out data (``server.central_nodes``), the coordinator's evaluator
        answering when there is none or none replies validly.
        """
        local = mask_aware(self.evaluator) if self.plasticity is not None else self.evaluator
        if self.config.central_evaluation != "central-nodes":
            return local, []
        nodes = CentralNodeEvaluator(
            grid, strategy.node_config, fallback=local, timeout=self.config.timeout_s, max_examples_fn=self._max_val_examples
        )
        return nodes, [nodes]

    def run(self, grid: Grid, resume: bool = False, extra_observers: Sequence[RoundObserver] = ()) -> RunResult:
        """Run the federation on ``grid`` and return its result."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2))
        strategy = self.strategy()
        self.validation = self.validation_phase(strategy)
        self.plasticity = self.plasticity_phase()
        self.distillation = self.distillation_phase(strategy)
        self.edge = self.edge_phase(strategy)
        evaluate, evaluator_observers = self.run_evaluator(grid, strategy)
        result = run_federation(
            grid,
            self.config,
            strategy,
            evaluate,
            self.starting_state(resume),
            self.out_dir / CHECKPOINT_DIR,
            observers=[strategy.direction, *evaluator_observers, *self.observers, *extra_observers],
            export_best=self.export_best,
            validation=self.validation,
            plasticity=self.plasticity,
            distillation=self.distillation,
            edge=self.edge,
        )
        if self.ledger_observer is not None:
            self.ledger_observer.publish()
        return result

    def report_extra(self) -> dict[str, object]:
        """What observers add to the run report (ledger totals, governance figures, ...)."""
        extra: dict[str, object] = {}
        phases = [p for p in (self.validation, self.plasticity, self.distillation, self.edge) if p is not None]
        for obs in [*self.observers, *phases]:
            extra.update(obs.report())
        return extra


def load_run_config(out_dir: Path) -> FederationConfig:
    """The configuration a run in ``out_dir`` was started with (for ``--resume``)."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunNotFoundError(f"{out_dir} holds no Sentinel run: `{CONFIG_FILE}` is missing")
    return FederationConfig.model_validate(json.loads(path.read_text()))
