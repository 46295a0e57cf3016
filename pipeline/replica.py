"""A pipeline replica: N stages of one model, trained together for H inner steps per window.

Each stage has its own AdamW over its own parameters (what a stage machine would hold); the
only numbers stages share besides boundary frames are their gradients' squared norms (one float
each per step), so clipping uses the same global norm as an unsplit replica. A compressed
replica keeps its residual writers and embedding drift in span(U) after every step
(``SubspaceConstraint``), which makes its boundary codec exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LlamaForCausalLM

from pipeline.codec import DenseCodec, SubspaceCodec
from pipeline.schedule import Codec, Traffic, gpipe_step
from pipeline.stage import Stage, split_layers
from pipeline.subspace import EMBED_NAME, SubspaceConstraint
from pipeline.window_basis import boundary_basis
from protocol.hparams import TrainingConfig


@dataclass(frozen=True)
class WindowStats:
    loss_mean: float
    steps: int
    activation_bytes: int
    gradient_bytes: int
    per_boundary_bytes: tuple[int, ...]


def stage_optimizer(stage: Stage, cfg: TrainingConfig) -> torch.optim.AdamW:
    # The lr is set before every step from the schedule; this one is a placeholder.
    params = list(stage.params.values())
    return torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
    )


class PipelineReplica:
    """``n_stages`` stages over ``model``; ``constraint`` set means subspace-compressed boundaries.

    ``lr_schedule`` maps the global inner step to the learning rate (the nodes pass
    ``neurons.train.lr_at``; this package does not import ``neurons``). Default: constant ``cfg.lr``.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        n_stages: int,
        cfg: TrainingConfig,
        constraint: SubspaceConstraint | None = None,
        n_micro: int = 2,
        lr_schedule: Callable[[int], float] | None = None,
    ) -> None:
        self.model = model
        self.lr_schedule = lr_schedule or (lambda _step: cfg.lr)
        self.cfg = cfg
        self.constraint = constraint
        self.n_micro = n_micro
        self.vocab = int(model.config.vocab_size)
        self.stages = [Stage(model, span) for span in split_layers(model.config.num_hidden_layers, n_stages)]
        self.optimizers = [stage_optimizer(stage, cfg) for stage in self.stages]
        self.codecs: list[Codec] = []
        self.global_step = 0

    def begin_window(self, global_step: int, probe: torch.Tensor | None = None) -> None:
        """Fix this window's anchor (the embedding at its start, which every stage holds) and, if
        compressed, project the starting point into the subspace; build the boundary codecs.
        With ``probe`` (the window's first batch) each boundary projects onto the window's own
        principal basis (``pipeline.window_basis``, adaptive boundaries) instead of the fixed one."""
        self.global_step = global_step
        hidden = int(self.model.config.hidden_size)
        if self.constraint is None:
            self.codecs = [DenseCodec(hidden) for _ in self.stages[1:]]
            return
        anchor = dict(self.model.named_parameters())[EMBED_NAME].detach().clone()
        self.constraint.project_(dict(self.model.named_parameters()), anchor)
        self._anchor = anchor
        k = self.constraint.k
        self.codecs = [
            SubspaceCodec(self.constraint.basis if probe is None else boundary_basis(self.model, st.span.stop, probe, anchor, k),
                          anchor)
            for st in self.stages[:-1]
        ]

    def _clip(self) -> None:
        # Each stage reports one number (its squared gradient norm); all apply the same factor.
        squares = [sum(float(p.grad.double().pow(2).sum()) for p in st.params.values() if p.grad is not None)
                   for st in self.stages]
        total = math.sqrt(sum(squares))
        factor = min(1.0, self.cfg.grad_clip / (total + 1e-6))
        if factor < 1.0:
            with torch.no_grad():
                for st in self.stages:
                    for p in st.params.values():
                        if p.grad is not None:
                            p.grad.mul_(factor)

    def train_window(self, batches: Sequence[torch.Tensor]) -> WindowStats:
        if not self.codecs and len(self.stages) > 1:
            raise RuntimeError("call begin_window before train_window")
        self.model.train()
        losses, total = [], Traffic()
        for batch in batches:
            lr = self.lr_schedule(self.global_step)
            loss, traffic = gpipe_step(self.stages, self.codecs, batch, self.n_micro, self.vocab)
            self._clip()
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.step()
                opt.zero_grad(set_to_none=True)
            if self.constraint is not None:
                self.constraint.project_(dict(self.model.named_parameters()), self._anchor)
            losses.append(float(loss))
            total.merge(traffic)
            self.global_step += 1
        if not all(math.isfinite(v) for v in losses):
            raise FloatingPointError(f"non-finite pipeline loss at global step {self.global_step}: {losses}")
        return WindowStats(
            loss_mean=sum(losses) / len(losses),
            steps=len(batches),
            activation_bytes=total.activation_bytes,
            gradient_bytes=total.gradient_bytes,
            per_boundary_bytes=tuple(total.per_boundary),
        )
