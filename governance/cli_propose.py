"""`sentinel governance propose ...`: one subcommand per proposal kind, each signed by the node's key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from sentinel.governance.cli_common import (
    DEFAULT_TARGET,
    Components,
    KeyPath,
    NodeId,
    RootCert,
    Target,
    Title,
    VotingPeriod,
    console,
    friendly_errors,
    make_client,
)
from sentinel.governance.parameters import FederationParameters
from sentinel.governance.proposals import (
    ContractChangeSpec,
    ProposalSpec,
    RegisterNodeSpec,
    RemoveNodeSpec,
    SetAgencySpec,
    SetParameterSpec,
)
from sentinel.governance.signing import utcnow
from sentinel.protos.vocabulary import ROLES

propose_app = typer.Typer(help="Submit a signed proposal (one subcommand per kind).", no_args_is_help=True)


def _submit(spec: ProposalSpec, target: str, node_id: str, key: Path, root_cert: Path | None, title: str, period: float | None) -> None:
    deadline = utcnow() + timedelta(seconds=period) if period else None
    with make_client(target, root_cert, node_id, key) as client:
        p = client.submit_proposal(spec, title=title, deadline=deadline)
    console.print(f"proposal [bold]{p.proposal_id}[/] ({p.kind}) submitted; deadline {p.deadline}")


def _change(kind: str, operation: str, components: list[str], roles: list[str], nodes: list[str], everyone: bool) -> ContractChangeSpec:
    return ContractChangeSpec(kind=kind, operation=operation, components=components, roles=roles, nodes=nodes, everyone=everyone)  # type: ignore[arg-type]


Roles = Annotated[list[str], typer.Option("--role", "-r", help=f"Role (repeatable): {', '.join(ROLES)}.")]
Nodes = Annotated[list[str], typer.Option("--node", help="Node id (repeatable).")]
Everyone = Annotated[bool, typer.Option("--everyone", help="Every registered node.")]
Op = Annotated[str, typer.Option("--operation", "-o", help="adapt, prune, grow or distill.")]


@propose_app.command("grant")
@friendly_errors
def propose_grant(
    operation: Op, component: Components, node_id: NodeId, key: KeyPath, role: Roles = [], node: Nodes = [],  # noqa: B006
    everyone: Everyone = False, title: Title = "", voting_period: VotingPeriod = None, target: Target = DEFAULT_TARGET,
    root_cert: RootCert = None,
) -> None:
    """Propose granting OPERATION on components to roles, nodes or everyone."""
    _submit(_change("grant", operation, component, role, node, everyone), target, node_id, key, root_cert, title, voting_period)


@propose_app.command("revoke")
@friendly_errors
def propose_revoke(
    operation: Op, component: Components, node_id: NodeId, key: KeyPath, role: Roles = [], node: Nodes = [],  # noqa: B006
    everyone: Everyone = False, title: Title = "", voting_period: VotingPeriod = None, target: Target = DEFAULT_TARGET,
    root_cert: RootCert = None,
) -> None:
    """Propose revoking OPERATION on components from roles, nodes or everyone."""
    _submit(_change("revoke", operation, component, role, node, everyone), target, node_id, key, root_cert, title, voting_period)


@propose_app.command("set-agency")
@friendly_errors
def propose_set_agency(
    component: Components,
    state: Annotated[str, typer.Option(help="active, resting or withdrawn.")],
    node_id: NodeId, key: KeyPath,
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    title: Title = "", voting_period: VotingPeriod = None, target: Target = DEFAULT_TARGET, root_cert: RootCert = None,
) -> None:
    """Propose setting the agency state of components (the only way to restore a withdrawn one)."""
    spec = SetAgencySpec(components=component, state=state, reason=reason)  # type: ignore[arg-type]
    _submit(spec, target, node_id, key, root_cert, title, voting_period)


@propose_app.command("register-node")
@friendly_errors
def propose_register_node(
    new_node: Annotated[str, typer.Argument(help="Id of the node to register.")],
    role: Annotated[str, typer.Option(help="edge, gpu or central.")],
    node_id: NodeId, key: KeyPath,
    public_key: Annotated[str, typer.Option(help="Its base64 Ed25519 public key.")] = "",
    organisation: Annotated[str, typer.Option(help="Its organisation.")] = "",
    title: Title = "", voting_period: VotingPeriod = None, target: Target = DEFAULT_TARGET, root_cert: RootCert = None,
) -> None:
    """Propose registering a node."""
    spec = RegisterNodeSpec(node_id=new_node, role=role, organisation=organisation, public_key=public_key)  # type: ignore[arg-type]
    _submit(spec, target, node_id, key, root_cert, title, voting_period)


@propose_app.command("remove-node")
@friendly_errors
def propose_remove_node(
    old_node: Annotated[str, typer.Argument(help="Id of the node to remove.")],
    node_id: NodeId, key: KeyPath,
    reason: Annotated[str, typer.Option(help="Why.")] = "",
    title: Title = "", voting_period: VotingPeriod = None, target: Target = DEFAULT_TARGET, root_cert: RootCert = None,
) -> None:
    """Propose removing a node."""
    _submit(RemoveNodeSpec(node_id=old_node, reason=reason), target, node_id, key, root_cert, title, voting_period)


@propose_app.command("set-parameter")
@friendly_errors
def propose_set_parameter(
    name: Annotated[str, typer.Argument(help=", ".join(FederationParameters.settable()))],
    value: Annotated[float, typer.Argument(help="New value.")],
    node_id: NodeId, key: KeyPath,
    title: Title = "", voting_period: VotingPeriod = None, target: Target = DEFAULT_TARGET, root_cert: RootCert = None,
) -> None:
    """Propose changing a federation parameter."""
    _submit(SetParameterSpec(name=name, value=value), target, node_id, key, root_cert, title, voting_period)


# ---------------------------------------------------------------------- keys
