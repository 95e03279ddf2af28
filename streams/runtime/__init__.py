"""What adapts or repairs Faust: tables, recovery, fencing, transactions, the commit gate, the
consumer, rebalance logging and topic administration.

``app_options()`` and ``install()`` put all of it into a Faust app, ``register()`` adds its
services once the app is built. Each module says which Faust behaviour it changes and why; a
method copied from Faust names the faust-streaming version and the method it came from, and
what was changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...config import ProcessingGuarantee

if TYPE_CHECKING:
    import faust

    from ..app import Meterwatch
    from .commit_gate import CommitGate


def app_options() -> dict[str, Any]:
    """What ``faust.App`` must be built with."""
    from .recovery import RebalanceSafeTableManager

    return {"TableManager": RebalanceSafeTableManager}


def install(app: faust.App, guarantee: ProcessingGuarantee) -> CommitGate:
    """Give ``app`` meterwatch's consumer and, under ``exactly_once``, its transaction manager;
    returns the commit gate every batch and commit goes through."""
    from .commit_gate import CommitGate
    from .consumer import CommittedOrBeginningConsumer

    app.transport.Consumer = CommittedOrBeginningConsumer
    commit_gate = CommitGate()
    if guarantee is ProcessingGuarantee.EXACTLY_ONCE:
        from .transactions import install as install_transactions

        install_transactions(app, commit_gate)
    return commit_gate


def register(mw: Meterwatch) -> None:
    """The services that watch the built app: rebalance log lines, recovery from fencing."""
    from . import fencing, rebalance_log

    rebalance_log.register(mw)
    fencing.register(mw)
