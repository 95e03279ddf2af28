"""Everything meterwatch keeps about one workspace, as one value.

One value, written once per batch, so that the replay guard (``usage.applied_through``) always
describes exactly the counts, settings and states it was written with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .contracts import WorkspaceProfile
from .metering import WorkspaceUsage


@dataclass(frozen=True, slots=True)
class WorkspaceState:
    usage: WorkspaceUsage = field(default_factory=WorkspaceUsage)
    profile: WorkspaceProfile = field(default_factory=WorkspaceProfile)
