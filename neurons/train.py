"""The inner loop: H AdamW steps per window on a node's own data, and a no-grad loss evaluation.

The AdamW state lives as long as the trainer, across windows: the outer step changes the
parameters in place between windows, and the moments carry over as in DiLoCo/SparseLoCo. The
learning rate follows a warm-up + cosine schedule on the *global* inner step, which the miner
sets from the window before each window (``global_step = window x inner_steps``), so a node
that joined late is at the same point of the schedule as everyone else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from neurons.distributed import World, ordered_sum_
from protocol.hparams import TrainingConfig
from protocol.precision import training_autocast


@dataclass(frozen=True)
class TrainStats:
    loss_first: float
    loss_last: float
    steps: int
    tokens: int
    loss_mean: float = math.nan
    lr_last: float = math.nan
    seconds: float = 0.0


def lr_at(step: int, cfg: TrainingConfig) -> float:
    """Learning rate at global inner step ``step``: linear warm-up, cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch, labels=batch, use_cache=False).loss


class MicroBatchError(ValueError):
    """The batch cannot be cut into the micro-batches asked for; the message names the numbers."""


def check_micro_batch_split(batch_size: int, micro_batches: int, groups: int) -> None:
    """``MicroBatchError`` unless ``batch_size`` rows cut into ``micro_batches`` equal blocks that
    fall into ``groups`` equal groups (one per rank)."""
    if micro_batches % groups:
        raise MicroBatchError(f"--micro-batches {micro_batches} does not split over {groups} ranks: "
                              f"give a multiple of {groups}")
    if batch_size % micro_batches:
        raise MicroBatchError(f"batch_size {batch_size} does not split into {micro_batches} equal micro-batches: "
                              f"use a world size / --micro-batches that divides {batch_size}")


class InnerTrainer:
    """AdamW over ``model``'s parameters; weight decay on matrices only (not on norm gains).

    ``micro_batches`` M cuts every batch into M equal row blocks, taken in G ``groups`` of k = M/G
    consecutive blocks; the step's gradient is ``(S_0 + S_1 + … + S_{G-1}) / M`` added left to
    right, where S_r = g_{rk} + … + g_{rk+k-1} (also left to right) and g_i is block i's unscaled
    gradient (``neurons.distributed`` states the rule). A ``world`` of G ranks computes S_rank on
    each rank and sums them in rank order; one process with the same ``groups`` computes every
    S_r in turn: the same bits. One process defaults to G = 1 (equal to G = M: with k = 1 both
    are g_0 + g_1 + …); M = 1 (the default) is the plain full-batch step.
    """

    def __init__(
        self, model: torch.nn.Module, cfg: TrainingConfig, device: torch.device | str,
        micro_batches: int = 1, world: World | None = None, groups: int | None = None,
    ):
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.world = world or World()
        if self.world.distributed and groups not in (None, self.world.size):
            raise MicroBatchError(f"{self.world.size} ranks make {self.world.size} micro-batch groups, not {groups}")
        self.groups = self.world.size if self.world.distributed else groups or 1
        self.micro_batches = micro_batches
        check_micro_batch_split(cfg.batch_size, micro_batches, self.groups)
        if any(p.device.type != self.device.type for p in model.parameters()):
            raise ValueError(f"move the model to {self.device} before building its trainer (optimizer state lives there)")
        self.global_step = 0
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr_at(0, cfg),
            betas=cfg.betas,
            fused=self.device.type == "cuda",
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The AdamW moments and step count per parameter (``optimizer_state_tensors``)."""
        return optimizer_state_tensors(self.model.named_parameters(), self.optimizer)

    def reset_optimizer(self) -> None:
        """Fresh AdamW moments for every parameter (as a new trainer would have)."""
        self.optimizer.state.clear()

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned (``load_optimizer_state``)."""
        load_optimizer_state(self.model.named_parameters(), self.optimizer, state)

    def _gradients(self, batch: torch.Tensor) -> torch.Tensor:
        """Fill ``.grad`` with the step's gradient under the micro-batch rule; the step's loss."""
        m, g = self.micro_batches, self.groups
        if m == 1:
            with training_autocast(self.device):
                loss = _lm_loss(self.model, batch)
            loss.backward()
            return loss
        if batch.shape[0] % m:
            raise MicroBatchError(f"a batch of {batch.shape[0]} rows does not split into {m} micro-batches")
        blocks = batch.view(m, batch.shape[0] // m, *batch.shape[1:])
        k = m // g
        losses = torch.zeros(m, dtype=torch.float32, device=self.device)
        if self.world.distributed:  # this rank's group, then the groups' sums in rank order
            self._accumulate(blocks, range(self.world.rank * k, (self.world.rank + 1) * k), losses)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            ordered_sum_(grads, self.world)
            ordered_sum_([losses], self.world)  # zeros elsewhere: every rank ends with all M losses
        else:
            grads = self._groups_in_turn(blocks, g, k, losses)
        with torch.no_grad():
            for t in grads:
                t.div_(m)
        return losses.mean()

    def _accumulate(self, blocks: torch.Tensor, indices: range, losses: torch.Tensor) -> None:
        """Backward of each block in order into ``.grad`` (None before the first: it assigns)."""
        for i in indices:
            with training_autocast(self.device):
                loss = _lm_loss(self.model, blocks[i])
            loss.backward()  # accumulates into .grad: ((g_0 + g_1) + g_2) + …
            losses[i] = loss.detach().float()

    def _groups_in_turn(self, blocks: torch.Tensor, g: int, k: int, losses: torch.Tensor) -> list[torch.Tensor]:
        """One process: S_0, then S_0 + S_1, … exactly as ``ordered_sum_`` adds the ranks' sums."""
        if g == 1:
            self._accumulate(blocks, range(k), losses)
            return [p.grad for p in self.model.parameters() if p.grad is not None]
        total: list[torch.Tensor] | None = None
        for r in range(g):
            self.optimizer.zero_grad(set_to_none=True)  # each group starts as a rank does: no .grad
            self._accumulate(blocks, range(r * k, (r + 1) * k), losses)
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if total is None:
                total = [t.clone() for t in grads]
            else:
                with torch.no_grad():
                    for acc, t in zip(total, grads, strict=True):
                        acc += t
        params = [p for p in self.model.parameters() if p.grad is not None]
        for p, t in zip(params, total, strict=True):
            p.grad = t
        return total

    def train_window(self, batches: Sequence[torch.Tensor]) -> TrainStats:
        """One inner step per batch; returns first/last/mean loss, steps and tokens seen."""
        if not batches:
            raise ValueError("train_window needs at least one batch")
        started = time.perf_counter()
        self.model.train()
        losses, tokens, lr = [], 0, math.nan
        for batch in batches:
            lr = lr_at(self.global_step, self.cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = batch.to(self.device, non_blocking=True)
            loss = self._gradients(batch)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            tokens += batch.numel()
            self.global_step += 1
        values = torch.stack(losses).float().cpu()  # one device sync per window, not per step
        if not torch.isfinite(values).all():
            raise FloatingPointError(f"non-finite training loss at global step {self.global_step}: {values.tolist()}")
        return TrainStats(
            loss_first=float(values[0]),
            loss_last=float(values[-1]),
            steps=len(batches),
            tokens=tokens,
            loss_mean=float(values.mean()),
            lr_last=lr,
            seconds=time.perf_counter() - started,
        )


@torch.no_grad()
def optimizer_state_tensors(
    named: Iterable[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer
) -> dict[str, torch.Tensor]:
    """The AdamW moments and step count per parameter, as plain tensors (safetensors-ready),
    so a restarted miner continues with the same optimizer instead of fresh moments."""
    out = {}
    for name, p in named:
        for key, value in optimizer.state.get(p, {}).items():
            out[f"{name}.{key}"] = value.detach().reshape(()) if key == "step" else value.detach()
    return out


def load_optimizer_state(
    named: Iterable[tuple[str, torch.nn.Parameter]], optimizer: torch.optim.Optimizer, state: dict[str, torch.Tensor]
) -> None:
    """Restore what ``optimizer_state_tensors`` returned; a parameter missing from ``state`` keeps
    fresh moments (e.g. state saved before any training). ValueError on a shape that does not fit."""
    for name, p in named:
        keys = ("step", "exp_avg", "exp_avg_sq")
        if not all(f"{name}.{k}" in state for k in keys):
            continue
        for k in keys[1:]:
            if tuple(state[f"{name}.{k}"].shape) != tuple(p.shape):
                raise ValueError(f"optimizer state {name}.{k} has shape {tuple(state[f'{name}.{k}'].shape)}")
        step = state[f"{name}.step"].to(torch.float32)
        optimizer.state[p] = {
            "step": step.to(p.device) if optimizer.defaults.get("fused") else step.cpu(),
            "exp_avg": state[f"{name}.exp_avg"].to(device=p.device, dtype=p.dtype).clone(),
            "exp_avg_sq": state[f"{name}.exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone(),
        }


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Sequence[torch.Tensor], autocast: bool = False) -> float:
    """Token-weighted mean next-token loss (float32 unless ``autocast``: scoring compares small deltas)."""
    if not batches:
        raise ValueError("evaluate needs at least one batch")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        total = torch.zeros((), dtype=torch.float64, device=device)
        predicted = 0
        for batch in batches:
            batch = batch.to(device, non_blocking=True)
            with training_autocast(device) if autocast else nullcontext():
                loss = _lm_loss(model, batch)
            n = batch.shape[0] * (batch.shape[1] - 1)  # next-token predictions in this batch
            total += loss.double() * n
            predicted += n
        return float(total / predicted)
    finally:
        model.train(was_training)
