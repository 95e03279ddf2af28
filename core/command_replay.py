"""A signed command is applied once: the ids of the commands applied lately, per workspace and
per contract, kept as long as a copy of one could still be judged fresh.

A copy passes the freshness check (``models/signing.py``) only within ``max_age`` of its
``issued_at``, on the clock of the worker that routes it. Pruning uses only signed times: an id
is dropped once a command issued ``2 * max_age`` (plus a margin for clocks of different
workers) after it has been applied, when no copy of it can be fresh any more.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

CLOCK_MARGIN_MS = 60_000

RecentCommands = Mapping[str, int]  # command_id -> issued_at, epoch milliseconds
NO_COMMANDS: RecentCommands = MappingProxyType({})


def admit(recent: RecentCommands, command_id: str, issued_ms: int, max_age_ms: int) -> RecentCommands | None:
    """``recent`` with ``command_id`` added and what can no longer be replayed dropped; None if
    the command was applied already."""
    if command_id in recent:
        return None
    horizon = issued_ms - 2 * max_age_ms - CLOCK_MARGIN_MS
    kept = {known: at for known, at in recent.items() if at >= horizon}
    kept[command_id] = issued_ms
    return MappingProxyType(kept)
