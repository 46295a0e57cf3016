"""A stage's window as all-or-nothing: trained by every stage of the group, or skipped by all.

A stage that loses a neighbour mid-window (it crashed, was killed, or went silent) cannot finish
its half of the computation, and what it trained so far was trained against a partner that is
gone. So the window is dropped: the stage puts back θ_w and its optimizer state exactly as they
were, tells its other neighbour it is leaving (so that one skips at once instead of waiting for
its deadline), publishes nothing for the window and is ready for the next. A neighbour that
sends a malformed or unexpected boundary frame is treated the same way. A restarted stage
joins at the next window from θ_w like any node; nothing of the lost window survives anywhere.

After the last inner step the stages exchange one "done" message along the chain (downstream,
then back up), so no stage keeps a window its partner dropped in its final step.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pipeline.transport import Link, StageLost
from pipeline.wire import BoundaryError
from pipeline.worker import StageWorker

log = logging.getLogger(__name__)

_DONE = 1.0


@dataclass(frozen=True)
class WindowOutcome:
    window: int
    trained: bool
    reason: str = ""
    losses: list[float] = field(default_factory=list)


def _agree_done(up: Link | None, down: Link | None) -> None:
    """Done travels to the last stage and back; every stage then knows every stage finished."""
    if up is not None and up.recv_scalar() != _DONE:
        raise StageLost("the upstream stage did not finish the window")
    if down is not None:
        down.send_scalar(_DONE)
        if down.recv_scalar() != _DONE:
            raise StageLost("the downstream stage did not finish the window")
    if up is not None:
        up.send_scalar(_DONE)


def run_window(
    worker: StageWorker,
    window: int,
    batches: Sequence[torch.Tensor],
    global_step: int,
    up: Link | None,
    down: Link | None,
    before_done: Callable[[], None] | None = None,
    on_skip: Callable[[], None] | None = None,
    deadline: float | None = None,
) -> WindowOutcome:
    """Train this stage's part of ``window``; on a lost neighbour, restore θ_w and skip.

    ``before_done`` runs after training, still inside the window (e.g. compress and exchange
    what the neighbours need); ``on_skip`` undoes whatever it changed when the window is dropped.
    ``deadline`` (``time.monotonic()``) is when the window's work must be done: no message is
    awaited past it, so a neighbour that answers each message just in time cannot stretch the
    window over the next ones.
    """
    for link in (up, down):
        if link is not None and deadline is not None:
            link.deadline = deadline
    params = {n: p.detach().clone() for n, p in worker.stage.params.items()}
    optimizer_state = copy.deepcopy(worker.optimizer.state_dict())
    try:
        losses = worker.train_window(batches, global_step, up, down)
        if before_done is not None:
            before_done()
        _agree_done(up, down)
    except (StageLost, BoundaryError) as exc:  # a neighbour gone or sending what it must not
        if on_skip is not None:
            on_skip()
        for link in (up, down):
            if link is not None:
                link.bye()
        with torch.no_grad():
            for name, p in worker.stage.params.items():
                p.copy_(params[name])
                p.grad = None
        worker.optimizer.load_state_dict(optimizer_state)
        log.warning("window %d skipped by stage %s: %s", window, worker.stage.span.label, exc)
        return WindowOutcome(window, trained=False, reason=str(exc))
    return WindowOutcome(window, trained=True, losses=losses)
