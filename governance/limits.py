"""The bounds of everything a governance request may carry, and of every answer's pages.

The GovernanceService is open to anyone who can reach its port, and its write
RPCs to any registered node, so every field has a bound and every list is
paginated: no request can make the server work without limit, and no stored
proposal can make a later answer too large to send (gRPC refuses messages over
4 MB). The bounds are checked where the values are parsed (the pydantic models
of :mod:`governance.proposals`, :mod:`governance.patterns`,
:mod:`governance.signing`), before anything is verified or written.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

MAX_NODE_ID: Final = 128
"""Characters of a node id (Flower's uint64 ids as decimal text are 20)."""
MAX_TITLE: Final = 200
"""Characters of a proposal title."""
MAX_REASON: Final = 500
"""Characters of a reason (agency changes, node removals)."""
MAX_ORGANISATION: Final = 128
"""Characters of an organisation name."""
MAX_PATTERN: Final = 128
"""Characters of a component id or glob pattern."""
MAX_COMPONENTS: Final = 64
"""Component patterns one proposal may name."""
MAX_NODES: Final = 256
"""Node ids one grant or revoke proposal may name."""
MAX_ROLES: Final = 8
"""Roles one grant or revoke proposal may name (there are three; repeats are harmless)."""
MAX_PARAMETER_NAME: Final = 64
"""Characters of a federation parameter's name."""
MAX_TIMESTAMP: Final = 64
"""Characters of an ISO 8601 timestamp."""
MAX_PROPOSAL_ID: Final = 64
"""Characters of a proposal id (ids are 32 hex digits)."""
MAX_VOTING_PERIOD: Final = timedelta(days=366)
"""The latest deadline a proposal may ask for, and the longest default voting period."""

MAX_REQUEST_BYTES: Final = 256 * 1024
"""Requests larger than this are refused by gRPC (RESOURCE_EXHAUSTED) before they are parsed."""
MAX_PAGE_BYTES: Final = 1 << 20
"""A page of a list answer stops growing past this many bytes (it always holds at least one item)."""
MAX_PAGE_TOKEN: Final = 512
"""Characters of a page token."""

PROPOSAL_PAGE: Final = (50, 100)
"""Default and largest ``page_size`` of ListProposals."""
NODE_PAGE: Final = (200, 500)
"""Default and largest ``page_size`` of ListNodes."""
CONTRACT_PAGE: Final = (500, 1000)
"""Default and largest ``page_size`` of ListContracts."""
