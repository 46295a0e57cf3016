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
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from neurons.distributed import World, ordered_sum_
from protocol.hparams import TrainingConfig


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


def _autocast(device: torch.device):
    # bf16 autocast only where it is fast and well supported; on CPU it would be slower and
    # would change the numerics the tests and the CPU localnet rely on.
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(input_ids=batch, labels=batch, use_cache=False).loss


class MicroBatchError(ValueError):
    """The batch cannot be cut into the micro-batches asked for; the message names the numbers."""


class InnerTrainer:
    """AdamW over ``model``'s parameters; weight decay on matrices only (not on norm gains).

    ``micro_batches`` M cuts every batch into M equal row blocks whose unscaled gradients are
    summed in order and divided by M (``neurons.distributed`` states the rule). One process does
    all M in turn; a ``world`` of M ranks does block ``rank`` each and sums them in rank order,
    which gives the same bits. M = 1 (the default) is the plain full-batch step.
    """

    def __init__(
        self, model: torch.nn.Module, cfg: TrainingConfig, device: torch.device | str,
        micro_batches: int = 1, world: World | None = None,
    ):
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)
        self.world = world or World()
        self.micro_batches = micro_batches
        if self.world.distributed and micro_batches != self.world.size:
            raise MicroBatchError(
                f"{self.world.size} ranks need --micro-batches {self.world.size} (one micro-batch per rank), not {micro_batches}"
            )
        if cfg.batch_size % micro_batches:
            raise MicroBatchError(
                f"batch_size {cfg.batch_size} does not split into {micro_batches} equal micro-batches; "
                f"use a world size / --micro-batches that divides it"
            )
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
        """The AdamW moments and step count per parameter, as plain tensors (safetensors-ready),
        so a restarted miner continues with the same optimizer instead of fresh moments."""
        out = {}
        for name, p in self.model.named_parameters():
            for key, value in self.optimizer.state.get(p, {}).items():
                out[f"{name}.{key}"] = value.detach().reshape(()) if key == "step" else value.detach()
        return out

    def reset_optimizer(self) -> None:
        """Fresh AdamW moments for every parameter (as a new trainer would have)."""
        self.optimizer.state.clear()

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned; a parameter missing from ``state`` keeps
        fresh moments (e.g. state saved before any training)."""
        for name, p in self.model.named_parameters():
            keys = ("step", "exp_avg", "exp_avg_sq")
            if not all(f"{name}.{k}" in state for k in keys):
                continue
            for k in keys[1:]:
                if tuple(state[f"{name}.{k}"].shape) != tuple(p.shape):
                    raise ValueError(f"optimizer state {name}.{k} has shape {tuple(state[f'{name}.{k}'].shape)}")
            step = state[f"{name}.step"].to(torch.float32)
            self.optimizer.state[p] = {
                "step": step.to(p.device) if self.optimizer.defaults.get("fused") else step.cpu(),
                "exp_avg": state[f"{name}.exp_avg"].to(device=p.device, dtype=p.dtype).clone(),
                "exp_avg_sq": state[f"{name}.exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone(),
            }

    def _gradients(self, batch: torch.Tensor) -> torch.Tensor:
        """Fill ``.grad`` with the step's gradient under the micro-batch rule; the step's loss."""
        m = self.micro_batches
        if m == 1:
            with _autocast(self.device):
                loss = _lm_loss(self.model, batch)
            loss.backward()
            return loss
        if batch.shape[0] % m:
            raise MicroBatchError(f"a batch of {batch.shape[0]} rows does not split into {m} micro-batches")
        blocks = batch.view(m, batch.shape[0] // m, *batch.shape[1:])
        mine = [self.world.rank] if self.world.distributed else range(m)
        losses = []
        for i in mine:
            with _autocast(self.device):
                loss = _lm_loss(self.model, blocks[i])
            loss.backward()  # accumulates into .grad: ((g_0 + g_1) + g_2) + …
            losses.append(loss.detach().float().reshape(1))
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        losses_t = torch.cat(losses)
        if self.world.distributed:
            ordered_sum_(grads, self.world)
            gathered = torch.zeros(m, dtype=losses_t.dtype, device=losses_t.device)
            gathered[self.world.rank] = losses_t[0]
            ordered_sum_([gathered], self.world)  # zeros elsewhere: every rank ends with all M losses
            losses_t = gathered
        with torch.no_grad():
            for g in grads:
                g.div_(m)
        return losses_t.mean()

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
            with _autocast(device) if autocast else nullcontext():
                loss = _lm_loss(model, batch)
            n = batch.shape[0] * (batch.shape[1] - 1)  # next-token predictions in this batch
            total += loss.double() * n
            predicted += n
        return float(total / predicted)
    finally:
        model.train(was_training)
