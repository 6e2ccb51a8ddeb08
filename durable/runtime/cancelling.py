"""A cancel that reaches a held claim (``db.cancel`` of the instance or of an ancestor): the heartbeat says
which held claims have ``cancel_requested`` (:meth:`Runtime.beat`); a running step is cancelled through its
cancel scope, ``Machine.on_cancel`` runs once (shielded, bounded), and the claim commits a ``cancel``
outcome. The claim is still held, unlike a lost lease: its outcome must commit."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..machine import Machine, describe
from .claim import Claim, Encoded

if TYPE_CHECKING:
    from ..context import Context

log = logging.getLogger("durable.runtime")


def interrupted(claim: Claim) -> bool:
    """The step (or handle) was cut off by a cancel of its instance, not by a lost lease or a drain."""
    return claim.cancel_requested and claim.lost is None


async def compensate(machine: Machine, ctx: Context, claim: Claim) -> None:
    """Run ``machine.on_cancel(ctx)`` once for this claim, shielded from the cancellation that brought it
    here and cut off after ``on_cancel_timeout`` seconds; what happened goes to ``claim.compensation``
    (recorded with the cancel outcome). An exception is recorded, never retried."""
    if claim.compensation is not None:
        return
    if type(machine).on_cancel is Machine.on_cancel:  # nothing to run
        claim.compensation = "none"
        return
    timeout = float(type(machine).on_cancel_timeout)
    claim.compensation = "running"
    with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
        try:
            await machine.on_cancel(ctx)
            claim.compensation = "ok"
        except Exception as exc:  # user code: recorded, the cancel goes on
            claim.compensation = describe(exc)
            log.warning("durable: on_cancel of %s instance %d failed: %s", machine.name, claim.id, claim.compensation)
    if scope.cancelled_caught:
        claim.compensation = f"timed out after {timeout:g}s"
        log.warning("durable: on_cancel of %s instance %d %s", machine.name, claim.id, claim.compensation)


def cancel_outcome(claim: Claim, *, interrupted: bool) -> Encoded:
    """The ``cancel`` outcome of a claim whose instance has a cancel pending (``complete`` ends it cancelled
    whatever the outcome says; this one says why and what on_cancel did)."""
    detail: dict[str, object] = {"reason": "cancel requested", "interrupted": interrupted}
    if claim.compensation not in (None, "none"):
        detail["on_cancel"] = claim.compensation
    return Encoded("cancel", error="cancelled", detail=detail)
