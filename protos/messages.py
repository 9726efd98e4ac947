"""The Flower message schema between the coordinator and the nodes: message types and record keys.

A wire format like ``ledger.proto`` and ``governance.proto``, so it lives beside
them: both the ServerApp and the ClientApp import it, and it imports neither.
Keys are API: a rename happens in one place. Array keys for the global state the coordinator
sends are ``lora_A/<module>``, ``lora_B/<module>`` (factors of the global ΔW,
scaling 1: exact, at the rank ΔW has, or truncated at the node's rank in the
legacy design; components ordered by singular value) and ``head/<param>`` (the classification head); a node replies
with its adapter in PEFT's saved-key format (no adapter name).
"""

from __future__ import annotations

from typing import Final

# LoRA alpha is fixed at 2·rank, so every adapter's scaling alpha/rank is 2. The
# coordinator aggregates with this value and rejects replies that claim another:
# a node cannot amplify its update by reporting a larger scaling.
LORA_ALPHA_PER_RANK: Final = 2.0

# Message types ("<category>.<action>").
MSG_PROFILE: Final = "query.profile"
MSG_TRAIN: Final = "train"
MSG_EVALUATE: Final = "evaluate"
MSG_VALIDATE: Final = "evaluate.validate"

# RecordDict keys.
REC_ARRAYS: Final = "arrays"
REC_CONFIG: Final = "config"
REC_METRICS: Final = "metrics"
REC_IMPORTANCE: Final = "importance"
REC_PROFILE: Final = "profile"

# Array-key prefixes of the global state sent to nodes.
KEY_LORA_A: Final = "lora_A/"
KEY_LORA_B: Final = "lora_B/"
KEY_HEAD: Final = "head/"
KEY_DELTA: Final = "delta/"
"""Dense global ΔW per module (validators receive the exact global model; checkpoints use the same keys)."""

# Validation messages: the exact global state, and one ArrayRecord per candidate update.
REC_GLOBAL: Final = "global"
REC_CANDIDATE: Final = "candidate/"
"""Prefix of a candidate's record: ``candidate/<author node id>`` holds its update arrays as received."""
REC_VERDICT: Final = "verdict/"
"""Prefix of a validator's MetricRecord per candidate: ``verdict/<author node id>``."""
REC_ENTROPY_SHIFT: Final = "entropy-shift/"
"""Prefix of a validator's ArrayRecord per candidate: the per-head entropy shift."""
V_ACCEPT: Final = "accept"
V_LOSS_CHANGE: Final = "loss-change"
V_ACCURACY_CHANGE: Final = "accuracy-change"
V_KL: Final = "kl"
V_SHIFT_NORM: Final = "entropy-shift-norm"
V_EXAMPLES: Final = "num-examples"
KEY_SHIFT: Final = "shift"
C_LOSS_TOLERANCE: Final = "loss-gate-tolerance"
C_ENTROPY_Z: Final = "entropy-gate-z"
C_ENTROPY_MIN_RATIO: Final = "entropy-gate-min-ratio"

# Importance arrays (layers × heads).
KEY_ENTROPY: Final = "entropy"
KEY_GRAD_IMPORTANCE: Final = "gradient"
KEY_ENTROPY_NORMALISED: Final = "entropy-normalised"

# Metric keys.
M_EXAMPLES: Final = "num-examples"
M_TRAIN_LOSS: Final = "train-loss"
M_VAL_ACC: Final = "val-accuracy"
M_VAL_LOSS: Final = "val-loss"
M_SCALING: Final = "lora-scaling"
M_RANK: Final = "lora-rank"
M_CONTRACT_VERSION: Final = "contract-version"
M_ACCURACY: Final = "accuracy"
M_LOSS: Final = "loss"
KEY_HEAD_MASK: Final = "head_mask"

# Config keys the coordinator sends with every train message.
C_ROUND: Final = "server-round"
C_ROLE: Final = "role"
C_RANK: Final = "lora-rank"
C_STEPS: Final = "local-steps"
C_EPOCHS: Final = "local-epochs"
C_BATCH: Final = "batch-size"
C_LR: Final = "learning-rate"
C_SEED: Final = "seed"
C_MODEL: Final = "model"
C_DATASET: Final = "dataset"
C_PARTITION: Final = "partition"
C_NUM_PARTITIONS: Final = "num-partitions"
C_ALPHA: Final = "dirichlet-alpha"
C_TEST_FRACTION: Final = "test-fraction"
C_VAL_FRACTION: Final = "val-fraction"
C_MAX_LENGTH: Final = "max-length"
C_PERMITTED: Final = "permitted"
C_RESTRICTED: Final = "consent-restricted"
C_CONTRACT_VERSION: Final = "contract-version"
C_NUM_LABELS: Final = "num-labels"
"""Classes of the run's classifier: a node with its own data builds the base model with this many outputs."""
C_TRAIN_FACTOR: Final = "train-factor"
"""Which LoRA factor a node trains in the shared frame: ``b`` (A frozen), ``a`` (B frozen); absent or ``""``: a fresh adapter."""
C_FRAME_GAIN: Final = "frame-gain"
"""Scale of the frozen factor in the shared frame (``client.frames``): the step the trained factor makes in ΔW."""
C_MEASURE_GRADIENT: Final = "measure-gradient"
"""Whether a node measures gradient head importance after training (a backward pass per probe batch): what federated
plasticity reads; absent: yes."""
C_FRAME_SCALE: Final = "frame-scale"
"""How the frozen factor of the shared frame is normalised: ``balanced`` or ``unit`` (``client.frames.FrameScale``)."""
MAX_LORA_RANK: Final = 256
"""The largest LoRA rank a role may train at, and so the largest shared frame a node accepts."""
C_FRAME_RANK: Final = "frame-rank"
"""Rank R of the shared frame this round (the largest rank the coordinator sent): a node of rank r < R trains in r of
its directions, chosen by ``subframe``; absent or 0: the node's own rank."""
C_SUBFRAME: Final = "subframe"
"""How a node of rank r below the frame's picks its r directions: ``top``, ``gradient`` or ``trained`` (``client.frames.Subframe``)."""
C_ERROR_FEEDBACK: Final = "error-feedback"
"""True: a ``trained`` node below the frame's rank keeps what its cut left out and adds it next round (``client.error_feedback``)."""
MAX_FRAME_GAIN: Final = 64.0
"""The largest frame gain a node accepts (a larger one is a malformed message, not a step size)."""
C_ADAPTER_START: Final = "adapter-start"
"""``continue``: start from the view's factors and send the trained adapter at rank r; the coordinator rebuilds the change
(``models.continued``); absent: fresh or frame."""
C_BOOST_HEADS: Final = "boost-heads"
"""Component ids (``layer.{i}.head.{j}``) of heads regrown by federated plasticity, to train at a boosted learning rate."""
C_BOOST_FACTOR: Final = "boost-lr-factor"
"""The learning-rate factor for the ``boost-heads`` (``models.regrowth.HeadLRBoost``); absent: no boost."""

# Profile keys a node reports in reply to MSG_PROFILE.
P_PARTITION_ID: Final = "partition-id"
P_NUM_PARTITIONS: Final = "num-partitions"
P_ROLE: Final = "role"
P_PUBLIC_KEY: Final = "public-key"
P_LORA_RANK: Final = "lora-rank"
"""The LoRA rank a node trains at when its operator set one (``sentinel node --lora-rank``); absent: its role's."""
P_OWN_DATA: Final = "own-data"
"""True when the node trains on its own dataset (``sentinel node --dataset``), not a partition of the run's."""
P_DECLARED_EXAMPLES: Final = "declared-examples"
"""The training examples a node declares it holds (its node config's ``declared-examples``); absent: not declared."""
REC_SIGNATURE: Final = "signature"
C_RUN_SEED: Final = "run-seed"

# Keys of the signature record a node attaches to its update.
S_CONTENT_HASH: Final = "content-hash"
S_SIGNATURE: Final = "signature"
S_VERDICT: Final = "verdict/"
"""In a validator's signature record: ``verdict/<author>`` is its signature over that verdict's ledger payload."""
S_REASON: Final = "reason/"
"""In a validator's signature record: ``reason/<author>`` is the reason of a rejecting verdict."""

# Central evaluation replies (MSG_EVALUATE): the metrics beyond accuracy, loss and example count.
M_ECE: Final = "ece"
"""Expected calibration error, 15 equal-width bins (``models.calibration``)."""
M_KL_BASE: Final = "kl-from-base"
"""Mean KL(global ‖ base model) per example on the node's held-out data."""
M_DOMAIN_ACCURACY: Final = "accuracy/"
"""Prefix: ``accuracy/<domain>`` is the accuracy on that domain's examples."""
M_DOMAIN_EXAMPLES: Final = "examples/"
"""Prefix: ``examples/<domain>`` is how many of the examples are of that domain."""
REC_EVALUATOR: Final = "evaluator"
"""ConfigRecord of an evaluate reply: what answered (``E_RUNTIME``) and, from a bundle, its manifest hash."""
E_RUNTIME: Final = "runtime"
"""``torch`` (the global model materialised) or ``onnxruntime`` (the node's edge bundle)."""
E_BUNDLE_SHA256: Final = "bundle-manifest-sha256"
RUNTIME_TORCH: Final = "torch"
RUNTIME_ONNX: Final = "onnxruntime"
NODE_EDGE_BUNDLE: Final = "edge-bundle"
"""Node-config key (the operator's): directory of the edge bundle an edge node answers evaluation from."""

# Edge deployment: the coordinator delivers the newest edge bundle to edge nodes and they evaluate it.
MSG_EDGE_EVALUATE: Final = "evaluate.edge"
"""An edge node evaluates the bundle ``C_BUNDLE_SHA256`` names (delivered in ``REC_BUNDLE`` when it may lack it) through onnxruntime."""
C_BUNDLE_SHA256: Final = "bundle-manifest-sha256"
"""In an ``evaluate.edge`` config: the manifest hash of the bundle to evaluate (the ledger's ``student_distilled`` hash)."""
REC_BUNDLE: Final = "bundle"
"""ArrayRecord of an ``evaluate.edge`` message: the bundle's files as uint8 arrays keyed by relative path (``protos.records.bundle_record``)."""
NODE_EDGE_BUNDLE_DIR: Final = "edge-bundle-dir"
"""Node-config key (the operator's): where an edge node keeps the bundles delivered to it (default: beside its key, or the user cache)."""
NODE_STATE_DIR: Final = "state-dir"
"""Node-config key (the operator's): where a node keeps its state across restarts, its error-feedback remainder
(default: beside its key in a simulation, else the user cache)."""

# Distillation on central nodes: teacher = base + global adapter (the view in REC_ARRAYS), all heads;
# student = the teacher with the view's head mask applied physically and FFNs narrowed where consent allows.
MSG_DISTILL: Final = "train.distill"
C_DISTILL_STEPS: Final = "distill-steps"
C_DISTILL_LR: Final = "distill-learning-rate"
C_DISTILL_TEMPERATURE: Final = "distill-temperature"
C_FFN_KEEP: Final = "ffn-keep"
"""Share of each permitted layer's FFN width the student keeps (1.0: no narrowing)."""
C_FFN_LAYERS: Final = "ffn-layers"
"""Layers whose FFN consent lets the student narrow (``layer.{i}.ffn`` allows ``prune``)."""
C_REVERT_IF_WORSE: Final = "distill-revert-if-worse"
C_DISTILL_FROZEN: Final = "distill-frozen"
"""Component ids this central node may not ``distill``: their student weights stay the teacher's (``models.distill_consent``)."""
REC_STUDENT: Final = "student"
"""ConfigRecord of a distill reply: ``S_SPEC``, the student's architecture (``models.student.StudentSpec`` JSON)."""
S_SPEC: Final = "spec"
M_KL_BEFORE: Final = "kl-before"
"""KL(teacher ‖ student) on the node's validation split before distillation."""
M_KL_AFTER: Final = "kl-after"
M_STUDENT_ACCURACY: Final = "student-accuracy"
M_TEACHER_ACCURACY: Final = "teacher-accuracy"
M_STUDENT_LOSS: Final = "student-loss"
M_DISTILL_STEPS: Final = "distill-steps"
M_REVERTED: Final = "reverted"
M_STUDENT_PARAMETERS: Final = "student-parameters"
M_TEACHER_PARAMETERS: Final = "teacher-parameters"
