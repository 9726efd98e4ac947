"""Pages of list answers: bounded sizes and opaque, validated page tokens.

A token names the last item of the page before (keyset pagination), so
following the pages visits every item once even while new ones are added; it
is base64url of a small JSON list of strings, checked on the way back in.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.limits import MAX_PAGE_BYTES, MAX_PAGE_TOKEN

_T = TypeVar("_T")


def page_size(requested: int, bounds: tuple[int, int]) -> int:
    """The page size to use: ``requested`` capped at the largest, 0 meaning the default (``bounds`` = default, largest)."""
    default, largest = bounds
    return min(requested, largest) if requested > 0 else default


def encode_token(*parts: str) -> str:
    """An opaque page token carrying ``parts``."""
    return base64.urlsafe_b64encode(json.dumps(list(parts), separators=(",", ":")).encode("utf-8")).decode("ascii")


def decode_token(token: str, parts: int) -> list[str]:
    """The ``parts`` strings a token from :func:`encode_token` carries; :class:`InvalidRequestError` if it is not one."""
    if len(token) > MAX_PAGE_TOKEN:
        raise InvalidRequestError(f"`page_token` is longer than {MAX_PAGE_TOKEN} characters: not one this server issued")
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError) as e:
        raise InvalidRequestError("`page_token` is not one this server issued") from e
    if not isinstance(values, list) or len(values) != parts or not all(isinstance(v, str) for v in values):
        raise InvalidRequestError("`page_token` is not one this server issued")
    return values


def cut_page(
    items: Sequence[_T], size: int, to_message: Callable[[_T], Any], *, max_bytes: int = MAX_PAGE_BYTES
) -> tuple[list[Any], _T | None]:
    """The messages of the first ``size`` items, stopping early past ``max_bytes``; and the last item taken if more remain.

    ``items`` may hold one item beyond ``size`` (to tell whether more remain);
    a page always holds at least one message when there are items.
    """
    messages: list[Any] = []
    total = 0
    for item in items[:size]:
        message = to_message(item)
        total += message.ByteSize()
        if messages and total > max_bytes:
            break
        messages.append(message)
    more = len(messages) < len(items)
    return messages, (items[len(messages) - 1] if more and messages else None)
