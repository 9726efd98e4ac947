"""Policy files: the default consent contracts of a model, written as patterns.

A policy file (YAML, or JSON with the same structure) has four parts::

    version: 1                      # schema version (only 1 exists)
    defaults:                       # the starting contract of every component
      purposes: [federated-fine-tuning]
      expires_at: null              # ISO 8601 with a timezone, or null
      operations:
        adapt:   {roles: [edge, gpu, central]}
        prune:   {roles: [gpu, central]}
    rules:                          # applied in file order to the components they match
      - name: protect-early-heads
        match: {layers: "0-1", heads: "*"}
        revoke:
          adapt: {roles: [edge]}
      - match: {components: classifier}
        grant:
          adapt: {everyone: true}
    agency:                         # rules by which components signal their own state
      entropy_saturation: {threshold: 0.97, rounds: 3, recover_below: 0.9}

**Grants.** ``{roles: [...], nodes: [...], everyone: bool}``; every key optional.

**Matching.** ``match`` holds one or more selectors; a component matches when
all given selectors match it:

- ``components``: a glob pattern or a list of them (``fnmatch`` syntax:
  ``*`` any text, ``?`` one character, ``[0-3]`` one character of a set), e.g.
  ``layer.*.ffn`` or ``layer.1?.head.*``. A list matches if any pattern does.
- ``kind``: ``head``, ``ffn``, ``embeddings``, ``classifier`` or ``lm_head`` (or a list).
- ``layers``: ``"*"``, an index, an inclusive range ``"0-1"``, or a list of indices
  and ranges. Only ``layer.*`` components have a layer.
- ``heads``: same syntax, over the head index. Only heads have one.

**Rule actions**, applied in this order within a rule: ``replace`` (the
operation's grant becomes exactly this), ``grant`` (added to the grant),
``revoke`` (roles and nodes removed; ``everyone: true`` clears the everyone
flag), then ``agency`` (``{state, reason}``), ``purposes``, ``expires_at`` and
``steward``, which overwrite.

**Agency versus grants.** Agency is the component's own state and applies to
every node alike. "Layers 0-1 are resting for edge nodes" is therefore written as
a rule that revokes ``adapt`` from role ``edge`` on those heads; use
``agency: {state: resting}`` only for a component that should rest for everyone.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sentinel.governance._source_lines import format_loc, line_index, line_of
from sentinel.governance.contracts import (
    AgencyState,
    AgencyStateName,
    ConsentContract,
    ContractSet,
    Grant,
    Operation,
)
from sentinel.governance.exceptions import PolicyFileError
from sentinel.protos.vocabulary import COMPONENT_KINDS, ComponentKind, ComponentRef, Role, parse_component

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DEFAULT_POLICY_RESOURCE = "default_policy.yaml"


def _parse_index_selector(value: Any) -> Any:
    """``"*"`` stays ``"*"``; an int, ``"a-b"`` or a list of them becomes a sorted tuple of indices."""
    if value == "*" or value is None:
        return value
    items = value if isinstance(value, list) else [value]
    indices: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"index selector item {item!r} is not an index")
        if isinstance(item, int):
            if item < 0:
                raise ValueError(f"index {item} is negative")
            indices.add(item)
            continue
        if isinstance(item, str):
            lo, sep, hi = item.partition("-")
            try:
                start, stop = (int(lo), int(hi)) if sep else (int(lo), int(lo))
            except ValueError as e:
                raise ValueError(f"{item!r} is not an index or an inclusive range like \"0-1\"") from e
            if start < 0 or stop < start:
                raise ValueError(f"range {item!r} is empty or negative")
            indices.update(range(start, stop + 1))
            continue
        raise ValueError(f"index selector item {item!r} is not an index, a range \"a-b\" or \"*\"")
    return tuple(sorted(indices))


IndexSelector = Annotated[Literal["*"] | tuple[int, ...], BeforeValidator(_parse_index_selector)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class GrantSpec(BaseModel):
    """A grant as written in a policy file."""

    model_config = ConfigDict(extra="forbid")

    roles: list[Role] = Field(default_factory=list)
    nodes: list[str] = Field(default_factory=list)
    everyone: bool = False

    def to_grant(self) -> Grant:
        """The contract-side :class:`Grant`."""
        return Grant(roles=frozenset(self.roles), nodes=frozenset(self.nodes), everyone=self.everyone)


class AgencySpec(BaseModel):
    """An agency state as written in a policy file."""

    model_config = ConfigDict(extra="forbid")

    state: AgencyStateName
    reason: str = ""


class Match(BaseModel):
    """Selects components; every given selector must match (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    components: Annotated[list[str] | None, BeforeValidator(_as_list)] = None
    kind: Annotated[list[ComponentKind] | None, BeforeValidator(_as_list)] = None
    layers: IndexSelector | None = None
    heads: IndexSelector | None = None

    @model_validator(mode="after")
    def _some_selector(self) -> Match:
        if self.components is None and self.kind is None and self.layers is None and self.heads is None:
            raise ValueError(f"`match` needs at least one of `components`, `kind`, `layers`, `heads` (kinds: {', '.join(COMPONENT_KINDS)})")
        return self

    def matches(self, ref: ComponentRef) -> bool:
        """True iff the parsed component satisfies every selector."""
        if self.components is not None and not any(fnmatch.fnmatchcase(ref.component, p) for p in self.components):
            return False
        if self.kind is not None and ref.kind not in self.kind:
            return False
        if self.layers is not None and (ref.layer is None or not _in(ref.layer, self.layers)):
            return False
        if self.heads is not None and (ref.head is None or not _in(ref.head, self.heads)):
            return False
        return True


def _in(index: int, selector: Literal["*"] | tuple[int, ...]) -> bool:
    return selector == "*" or index in selector


class Rule(BaseModel):
    """One pattern rule: which components it matches and what it changes in their contracts."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    match: Match
    replace: dict[Operation, GrantSpec] = Field(default_factory=dict)
    grant: dict[Operation, GrantSpec] = Field(default_factory=dict)
    revoke: dict[Operation, GrantSpec] = Field(default_factory=dict)
    agency: AgencySpec | None = None
    purposes: list[str] | None = None
    expires_at: AwareDatetime | None = None
    steward: str | None = None

    @model_validator(mode="after")
    def _does_something(self) -> Rule:
        if not (self.replace or self.grant or self.revoke or self.agency or self.purposes is not None
                or self.expires_at is not None or self.steward is not None):
            raise ValueError("rule changes nothing: give `replace`, `grant`, `revoke`, `agency`, `purposes`, `expires_at` or `steward`")
        return self


class Defaults(BaseModel):
    """The contract every component starts from before rules apply."""

    model_config = ConfigDict(extra="forbid")

    operations: dict[Operation, GrantSpec] = Field(default_factory=dict)
    purposes: list[str] = Field(default_factory=list)
    expires_at: AwareDatetime | None = None
    agency: AgencySpec = Field(default_factory=lambda: AgencySpec(state="active"))


class EntropySaturationRule(BaseModel):
    """A head whose normalised attention entropy stays >= ``threshold`` for ``rounds`` rounds rests itself.

    With ``recover_below`` set, a head this rule put to rest becomes active again
    once its latest entropy falls below that value.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(gt=0.0, le=1.0, description="Normalised entropy (0..1) counted as saturated.")
    rounds: int = Field(ge=1, description="Consecutive saturated rounds before the head rests.")
    recover_below: float | None = Field(default=None, ge=0.0, description="Entropy below which it becomes active again.")

    @model_validator(mode="after")
    def _hysteresis(self) -> EntropySaturationRule:
        if self.recover_below is not None and self.recover_below >= self.threshold:
            raise ValueError(f"`recover_below` ({self.recover_below}) must be below `threshold` ({self.threshold})")
        return self


class AgencyRules(BaseModel):
    """Measurement rules by which components signal their own agency state."""

    model_config = ConfigDict(extra="forbid")

    entropy_saturation: EntropySaturationRule | None = None


class PolicyFile(BaseModel):
    """A whole policy file (see the module docstring for the syntax and semantics)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    name: str = ""
    description: str = ""
    defaults: Defaults = Field(default_factory=Defaults)
    rules: list[Rule] = Field(default_factory=list)
    agency: AgencyRules = Field(default_factory=AgencyRules)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name and rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return rules


def parse_policy(text: str, source: str = "<policy>", fmt: Literal["yaml", "json"] | None = None) -> PolicyFile:
    """Parse and validate policy text; :class:`PolicyFileError` names ``source``, line and field."""
    fmt = fmt or ("json" if source.endswith(".json") else "yaml")
    try:
        data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise PolicyFileError(f"{source}:{e.lineno}: not valid JSON: {e.msg}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise PolicyFileError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from e
    if data is None:
        raise PolicyFileError(f"{source}: the policy file is empty")
    if not isinstance(data, dict):
        raise PolicyFileError(f"{source}:1: a policy file must be a mapping at the top level, got {type(data).__name__}")
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as e:
        lines = line_index(text)
        problems = []
        for err in e.errors():
            line = line_of(lines, err["loc"])
            where = f"{source}:{line}" if line is not None else source
            problems.append(f"{where}: `{format_loc(err['loc'])}`: {err['msg']}")
        raise PolicyFileError("invalid policy file:\n  " + "\n  ".join(problems)) from e


def load_policy(path: str | Path) -> PolicyFile:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) policy file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PolicyFileError(f"policy file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyFileError(f"policy file {path} cannot be read: {e}") from e
    return parse_policy(text, source=str(path), fmt="json" if path.suffix == ".json" else "yaml")


def default_policy_text() -> str:
    """Text of the policy shipped with the package (the default of ``sentinel simulate``)."""
    return resources.files("sentinel.governance").joinpath(DEFAULT_POLICY_RESOURCE).read_text(encoding="utf-8")


def load_default_policy() -> PolicyFile:
    """The policy shipped with the package, parsed."""
    return parse_policy(default_policy_text(), source=f"governance/{DEFAULT_POLICY_RESOURCE}")


def derive_contracts(
    policy: PolicyFile,
    components: Iterable[str],
    steward: str,
    *,
    model: str = "model",
    issued_at: datetime | None = None,
) -> ContractSet:
    """The contract set (version 1) the policy gives each of ``components``.

    ``steward`` is the steward of every component a rule does not give another
    one. ``issued_at`` (default: the epoch, so that derivation is deterministic)
    is the ``since`` time of agency states the policy sets.
    """
    since = issued_at or _EPOCH
    if since.tzinfo is None:
        raise ValueError("`issued_at` must be timezone-aware")
    contracts: dict[str, ConsentContract] = {}
    for component in components:
        try:
            ref = parse_component(component)
        except ValueError as e:
            raise ValueError(f"`components`: {e}") from e
        if component in contracts:
            raise ValueError(f"`components` lists {component!r} twice")
        contracts[component] = _contract_for(policy, ref, steward, since)
    return ContractSet(model=model, version=1, contracts=contracts)


def _contract_for(policy: PolicyFile, ref: ComponentRef, steward: str, since: datetime) -> ConsentContract:
    defaults = policy.defaults
    operations = {op: spec.to_grant() for op, spec in defaults.operations.items()}
    agency = AgencyState(state=defaults.agency.state, reason=defaults.agency.reason, since=since, source="policy")
    purposes, expires_at = list(defaults.purposes), defaults.expires_at
    for rule in policy.rules:
        if not rule.match.matches(ref):
            continue
        for op, spec in rule.replace.items():
            operations[op] = spec.to_grant()
        for op, spec in rule.grant.items():
            operations[op] = operations.get(op, Grant()).union(spec.to_grant())
        for op, spec in rule.revoke.items():
            operations[op] = operations.get(op, Grant()).minus(spec.to_grant())
        if rule.agency is not None:
            agency = AgencyState(state=rule.agency.state, reason=rule.agency.reason, since=since, source="policy")
        if rule.purposes is not None:
            purposes = list(rule.purposes)
        if rule.expires_at is not None:
            expires_at = rule.expires_at
        if rule.steward is not None:
            steward = rule.steward
    kept = {op: grant for op, grant in operations.items() if not grant.is_empty()}
    return ConsentContract(
        component=ref.component,
        steward=steward,
        operations=kept,
        purposes=purposes,
        expires_at=expires_at,
        agency=agency,
        version=1,
    )
