"""Map positions inside a parsed YAML/JSON document back to source line numbers.

Used to turn a pydantic error location such as ``('rules', 1, 'grant')`` into
``policy.yaml:14`` so a user knows where in the file the problem is.
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

Path = tuple[str | int, ...]


def line_index(text: str) -> dict[Path, int]:
    """1-based line of every mapping key and sequence item in ``text`` (empty when it does not parse)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[Path, int] = {}
    if root is not None:
        _walk(root, (), lines)
    return lines


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines)


def line_of(lines: dict[Path, int], loc: Sequence[str | int]) -> int | None:
    """Line of the longest prefix of ``loc`` found in ``lines`` (None when nothing matches)."""
    path = tuple(loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def format_loc(loc: Sequence[str | int]) -> str:
    """``('rules', 1, 'grant')`` -> ``rules[1].grant``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"
