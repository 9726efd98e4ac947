"""One flat key space for a run: ``[tool.flwr.app.config]``, ``--run-config``, ``--config run.toml`` and CLI flags.

Flower's run config is flat (``key = value``, values bool/int/float/str) and the
SuperLink refuses any key its app does not declare. Every ``FederationConfig``
field is therefore a key with dashes (``edge-fraction``), the per-role profiles
are flattened as ``<role>-<field>`` (``edge-lora-rank``, ``gpu-local-steps``),
lists are comma-separated strings (``roles = "edge,gpu,central"``) and an unset
optional value is ``""`` (strings, lists) or ``0`` (``<role>-local-epochs``).
A few keys belong to the run, not to the federation (:data:`RUN_KEYS`).

:func:`declared_defaults` is the one source of the declared keys; a test checks
that ``pyproject.toml`` declares exactly these, with these defaults.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError
from sentinel.protos.vocabulary import ROLES
from sentinel.server.config import DEFAULT_PROFILES, FederationConfig, RoleProfile

FlatValue = bool | int | float | str

RUN_KEYS: dict[str, FlatValue] = {
    "out": "",  # output directory of the run (deployment: on the coordinator's host); "": runs/<timestamp>
    "resume": False,  # continue from the last checkpoint in `out`
    "node-wait-s": 600.0,  # how long the coordinator waits for the run's nodes to connect
    "ledger-db": "",  # database URL of the run's ledger; "": the coordinator server's --ledger-db, else <out>/ledger.db
    "governance-db": "",  # database URL of the run's governance store; "": the server's --governance-db, else <out>/governance.db
}
"""Keys of the run itself (not ``FederationConfig`` fields), with their defaults."""

_UNSET_STR = ""
_PROFILE_FIELDS = tuple(RoleProfile.model_fields)


class RunConfigError(ValueError):
    """A run-config key or value is wrong; the message is one line naming it."""


def _key(name: str) -> str:
    return name.replace("_", "-")


def _flat_value(name: str, value: Any) -> FlatValue:
    """A config value as Flower can carry it."""
    if value is None:
        return 0.0 if name == "local_epochs" else _UNSET_STR
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"`{name}` has a value Flower's run config cannot carry: {value!r}")


def flatten(config: FederationConfig) -> dict[str, FlatValue]:
    """Every field of ``config`` as flat run-config keys (profiles as ``<role>-<field>``)."""
    flat: dict[str, FlatValue] = {}
    for name in FederationConfig.model_fields:
        if name == "profiles":
            continue
        flat[_key(name)] = _flat_value(name, getattr(config, name))
    for role in ROLES:
        profile = config.profiles[role]
        for name in _PROFILE_FIELDS:
            flat[f"{role}-{_key(name)}"] = _flat_value(name, getattr(profile, name))
    return flat


def declared_defaults() -> dict[str, FlatValue]:
    """The keys ``[tool.flwr.app.config]`` declares, with their defaults: the run's keys, then the federation's."""
    return {**RUN_KEYS, **flatten(FederationConfig(profiles=dict(DEFAULT_PROFILES)))}


def _is_list_field(name: str) -> bool:
    annotation = FederationConfig.model_fields[name].annotation
    return any(getattr(a, "__origin__", None) is list for a in (annotation, *get_args(annotation)))


def _field_value(name: str, value: Any) -> Any:
    """A flat value back as the field's value ("" → None, comma list → list)."""
    if _is_list_field(name) and isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
        return items or None
    if value == _UNSET_STR and FederationConfig.model_fields[name].default is None:
        return None
    return value


def split_keys(flat: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run keys, federation keys)``; an unknown key is a :class:`RunConfigError` naming it."""
    known = declared_defaults()
    run: dict[str, Any] = {}
    fed: dict[str, Any] = {}
    for key, value in flat.items():
        if key not in known:
            raise RunConfigError(f"unknown run-config key `{key}`{_suggestion(key, known)}")
        (run if key in RUN_KEYS else fed)[key] = value
    return run, fed


def _suggestion(key: str, known: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean `{close[0]}`?)" if close else " (see `sentinel simulate --help` or pyproject.toml's [tool.flwr.app.config])"


def to_federation_config(flat: Mapping[str, Any], base: FederationConfig | None = None) -> FederationConfig:
    """Build (or update ``base`` with) flat federation keys; errors are one :class:`RunConfigError` line.

    ``base`` supplies every key ``flat`` does not set (the defaults when None).
    """
    _, fed = split_keys(flat)
    current = base or FederationConfig()
    data: dict[str, Any] = current.model_dump()
    data["profiles"] = {role: p.model_dump() for role, p in current.profiles.items()}
    for key, value in fed.items():
        role, _, rest = key.partition("-")
        if role in ROLES and rest.replace("-", "_") in _PROFILE_FIELDS:
            name = rest.replace("-", "_")
            data["profiles"][role][name] = None if (name == "local_epochs" and value in (0, 0.0, "")) else value
        else:
            name = key.replace("-", "_")
            data[name] = _field_value(name, value)
    try:
        return FederationConfig.model_validate(data)
    except ValidationError as e:
        raise RunConfigError(_one_line(e, fed)) from e


def _one_line(error: ValidationError, given: Mapping[str, Any]) -> str:
    """The first validation error as ``key: reason (got value)``, in run-config key names."""
    err = error.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if loc and loc[0] == "profiles" and len(loc) >= 3:
        key = f"{loc[1]}-{_key(loc[2])}"
    elif loc:
        key = _key(loc[0])
    else:
        key = "config"
    got = f" (got {given[key]!r})" if key in given else ""
    message = err["msg"].removeprefix("Value error, ")
    return f"run-config `{key}`: {message}{got}" if loc else f"run config: {message}"


def load_file(path: Path) -> dict[str, Any]:
    """The flat keys of a run-config TOML file (``key = value`` lines, as ``[tool.flwr.app.config]``)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise RunConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise RunConfigError(f"config file {path} is not valid TOML: {e}") from e
    for key, value in data.items():
        if isinstance(value, dict):
            raise RunConfigError(f"config file {path}: `[{key}]` is a table; keys are flat (e.g. `edge-lora-rank = 4`)")
        if isinstance(value, list):
            raise RunConfigError(f"config file {path}: `{key}` is a TOML list; write a comma-separated string")
    split_keys(data)  # unknown keys fail here, naming the file's key
    return data


def parse_pairs(text: str) -> dict[str, Any]:
    """``'rounds=2 model="tiny-bert"'`` (Flower's ``--run-config`` syntax) as a dict."""
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args([text]))
    except Exception as e:  # flwr raises ValueError or tomli's errors for bad values
        raise RunConfigError(f"cannot parse run config {text!r}: {e}") from e


def to_run_config(config: FederationConfig, **run: FlatValue) -> dict[str, FlatValue]:
    """What to submit as ``--run-config``: the run's keys given plus every federation key."""
    unknown = set(run) - set(RUN_KEYS)
    if unknown:
        raise RunConfigError(f"unknown run key(s): {', '.join(sorted(unknown))}")
    return {**run, **flatten(config)}


def toml_value(value: FlatValue) -> str:
    """A value as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    return str(value)


def declared_block() -> str:
    """The ``[tool.flwr.app.config]`` table, generated (``python -m sentinel.server.run_config``)."""
    lines = ["[tool.flwr.app.config]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in declared_defaults().items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(declared_block(), end="")


__all__ = [
    "RUN_KEYS",
    "RunConfigError",
    "declared_block",
    "declared_defaults",
    "flatten",
    "load_file",
    "parse_pairs",
    "split_keys",
    "to_federation_config",
    "to_run_config",
]
