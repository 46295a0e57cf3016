"""A miner's inner loop over all the node's ranks: the leader's trainer and the followers' half.

The leader's ``Miner`` uses a ``LeaderTrainer`` exactly like an ``InnerTrainer``. Each window it
announces ``train`` to the followers and sends them θ_w (its parameters, which the outer step
changed since the last window), the AdamW state when it changed outside training (a restore
from local state, a reset), and the window's batches; then every rank trains its micro-batch of
every step (``neurons.distributed``: the exact rule), so all ranks end the window with the same θ.
The leader alone computes Δ, compresses and uploads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neurons.distributed import (
    TRAIN,
    Command,
    World,
    broadcast_object,
    broadcast_tensor_dict,
    broadcast_tensors_,
    send,
)
from neurons.train import InnerTrainer, TrainStats, check_micro_batch_split
from protocol.hparams import TrainingConfig


class LeaderTrainer:
    """An ``InnerTrainer`` whose windows the followers train with it (duck-typed for the miner)."""

    def __init__(self, inner: InnerTrainer) -> None:
        self.inner = inner
        self.optimizer_synced = False  # the followers' AdamW state is the leader's

    @property
    def global_step(self) -> int:
        return self.inner.global_step

    @global_step.setter
    def global_step(self, value: int) -> None:
        self.inner.global_step = value

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.inner.state_tensors()

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_tensors(state)
        self.optimizer_synced = False

    def reset_optimizer(self) -> None:
        self.inner.reset_optimizer()
        self.optimizer_synced = False

    def train_window(self, batches: Sequence[torch.Tensor]) -> TrainStats:
        inner = self.inner
        args = {"global_step": inner.global_step, "sync_optimizer": not self.optimizer_synced,
                "micro_batches": inner.micro_batches}
        send(Command(TRAIN, args), inner.world)
        share_window(inner, batches, sync_optimizer=not self.optimizer_synced)
        self.optimizer_synced = True
        return inner.train_window(batches)


def share_window(trainer: InnerTrainer, batches: Sequence[torch.Tensor] | None, sync_optimizer: bool) -> list[torch.Tensor]:
    """Leader and followers alike: θ, (the optimizer state), the batches, from the leader."""
    world, device = trainer.world, str(trainer.device)
    broadcast_tensors_(trainer.model.parameters(), world)
    if sync_optimizer:
        state = broadcast_tensor_dict(trainer.state_tensors() if world.leader else None, world, device)
        if not world.leader:
            trainer.reset_optimizer()
            trainer.load_state_tensors(state)
    stacked = torch.stack(list(batches)).to(device) if world.leader else None
    layout = broadcast_object((tuple(stacked.shape), stacked.dtype) if stacked is not None else None, world)
    if stacked is None:
        stacked = torch.empty(layout[0], dtype=layout[1], device=device)
    broadcast_tensors_([stacked], world)
    return list(stacked.unbind(0))


def train_handler(trainer: InnerTrainer):
    """A follower's ``train`` command: receive the window, train its share of every step."""

    def handle(command: Command) -> None:
        # the leader's count wins (torchrun gives every rank the same flags; this keeps them in step)
        check_micro_batch_split(trainer.cfg.batch_size, command.args["micro_batches"], trainer.groups)
        trainer.micro_batches = command.args["micro_batches"]
        trainer.global_step = command.args["global_step"]
        batches = share_window(trainer, None, command.args["sync_optimizer"])
        trainer.train_window(batches)

    return handle


def make_trainer(
    model: torch.nn.Module, cfg: TrainingConfig, device: str, world: World, micro_batches: int | None = None
) -> InnerTrainer | LeaderTrainer:
    """The miner's trainer: plain on one process, a ``LeaderTrainer`` on rank 0 of several.
    ``micro_batches`` defaults to the world size (the only value a world of several accepts)."""
    inner = InnerTrainer(model, cfg, device, micro_batches=micro_batches or world.size, world=world)
    return LeaderTrainer(inner) if world.distributed else inner
