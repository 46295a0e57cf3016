"""One stage of a pipeline group as its own process: GPipe over TCP links, H inner steps a window.

The schedule is the in-process one (``pipeline.schedule``) with each boundary split across two
machines: the upstream stage sends activation frames on its downstream link and receives
gradient frames on it; frames are checked as a peer's bytes (``pipeline.wire``). The global
gradient norm for clipping travels as one float per stage: partial sums go downstream, the
total comes back up, so every stage scales by the same factor as an unsplit replica would.

Every stage of a group reads the group's batches itself (the assignment is a function of the
seed, the group's uid and the window), so labels never cross a link; token ids still travel with
subspace frames, where the receiver rebuilds the embedding part from them.

A stage computes as a whole-model miner does (``Stage.train_forward``: bf16 autocast on CUDA,
fp32 on CPU); the codecs run outside autocast, in fp32, and frames carry fp32 values whatever the
precision, so the wire format and its byte counts do not depend on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from pipeline.codec import Boundary, DenseCodec, SubspaceCodec
from pipeline.replica import stage_optimizer
from pipeline.stage import Stage, lm_loss
from pipeline.subspace import SubspaceConstraint
from pipeline.transport import Link, StageLost
from pipeline.wire import (
    BoundaryError,
    Expected,
    FrameKind,
    decode_frame,
    encode_frame,
    frame_bytes,
    id_bytes,
)
from protocol.hparams import TrainingConfig

Codec = DenseCodec | SubspaceCodec


class StageWorker:
    """Holds one stage's parameters and optimizer; trains with its neighbours over links."""

    def __init__(
        self,
        stage: Stage,
        cfg: TrainingConfig,
        constraint: SubspaceConstraint | None,
        n_micro: int,
        lr_schedule: Callable[[int], float],
    ) -> None:
        self.stage = stage
        self.cfg = cfg
        self.constraint = constraint
        self.n_micro = n_micro
        self.lr_schedule = lr_schedule
        self.vocab = int(stage.model.config.vocab_size)
        self.hidden = int(stage.model.config.hidden_size)
        self.optimizer = stage_optimizer(stage, cfg)
        # the codec of the boundary above this stage (to its upstream) and below it (downstream)
        self.up_codec: Codec = DenseCodec(self.hidden)
        self.down_codec: Codec = DenseCodec(self.hidden)
        self._anchor: torch.Tensor | None = None
        self.sent_bytes = 0

    def begin_window(
        self, anchor_embedding: torch.Tensor, up_basis: torch.Tensor | None = None,
        down_basis: torch.Tensor | None = None,
    ) -> None:
        """``anchor_embedding``: θ_w's embedding table, which every stage holds as a lookup.
        ``up_basis``/``down_basis``: this window's basis of the boundary above/below this stage
        (``pipeline.window_basis``); default the constraint's fixed basis."""
        if self.constraint is None:
            self.up_codec = self.down_codec = DenseCodec(self.hidden)
            return
        self._anchor = anchor_embedding.detach().clone()
        self.constraint.project_(self.stage.params, self._anchor)
        fixed = self.constraint.basis
        self.up_codec = SubspaceCodec(fixed if up_basis is None else up_basis, self._anchor)
        self.down_codec = SubspaceCodec(fixed if down_basis is None else down_basis, self._anchor)

    def _expected(self, codec: Codec, kind: FrameKind, ids: torch.Tensor) -> Expected:
        with_ids = kind is FrameKind.ACTIVATION and codec.sends_token_ids
        return Expected(kind, int(ids.shape[0]), int(ids.shape[1]), codec.width, self.vocab, with_ids)

    def _send(self, link: Link, kind: FrameKind, msg) -> None:
        frame = encode_frame(kind, msg, self.vocab)
        self.sent_bytes += len(frame)
        link.send_frame(frame)

    def _recv(self, link: Link, codec: Codec, kind: FrameKind, ids: torch.Tensor) -> Boundary:
        """The next frame, checked, its tensors moved to the stage's device (frames decode on CPU)."""
        most = frame_bytes(int(ids.shape[0]), int(ids.shape[1]), codec.width, id_bytes(self.vocab))
        msg = decode_frame(link.recv_frame(most), self._expected(codec, kind, ids))
        device = ids.device
        return Boundary(msg.values.to(device), None if msg.token_ids is None else msg.token_ids.to(device))

    def _step(self, batch: torch.Tensor, up: Link | None, down: Link | None) -> float:
        micro = batch.to(self.stage.device).chunk(self.n_micro)  # batches are read on CPU
        saved, losses = [], []
        for ids in micro:
            x = None
            if up is not None:
                msg = self._recv(up, self.up_codec, FrameKind.ACTIVATION, ids)
                if msg.token_ids is not None and not torch.equal(msg.token_ids, ids):
                    raise BoundaryError("the upstream stage sent token ids of another batch; the group's data is out of step")
                x = self.up_codec.decode_activation(msg, ids).requires_grad_(True)
            out = self.stage.train_forward(x, ids)
            saved.append((x, out))
            if down is not None:
                self._send(down, FrameKind.ACTIVATION, self.down_codec.encode_activation(out, ids))
            else:
                losses.append(lm_loss(out, ids) / self.n_micro)
        for m in reversed(range(self.n_micro)):
            x, out = saved[m]
            if down is None:
                losses[m].backward()
            else:
                out.backward(self.down_codec.decode_gradient(self._recv(down, self.down_codec, FrameKind.GRADIENT, micro[m])))
            if up is not None:
                self._send(up, FrameKind.GRADIENT, self.up_codec.encode_gradient(x.grad))
        self._clip(up, down)
        return float(sum(loss.detach() for loss in losses)) if losses else math.nan  # nan: not the last stage

    def _clip(self, up: Link | None, down: Link | None) -> None:
        mine = sum(float(p.grad.double().pow(2).sum()) for p in self.stage.params.values() if p.grad is not None)
        partial = mine + (up.recv_scalar() if up is not None else 0.0)
        if down is not None:
            down.send_scalar(partial)
            total = down.recv_scalar()
        else:
            total = partial
        if up is not None:
            up.send_scalar(total)
        # Sums of squares only grow down the chain: a neighbour's share that is negative or not a
        # number, or a total below this stage's partial sum, would switch clipping off (huge
        # gradients then overflow AdamW's float32 moments to inf, for good).
        if not (math.isfinite(total) and mine <= partial <= total):
            raise StageLost(f"the group's squared gradient norm does not add up (this stage {mine}, "
                            f"with the stages above {partial}, the group's {total}); a stage diverged or misbehaves")
        factor = min(1.0, self.cfg.grad_clip / (math.sqrt(total) + 1e-6))
        if factor < 1.0:
            with torch.no_grad():
                for p in self.stage.params.values():
                    if p.grad is not None:
                        p.grad.mul_(factor)

    def train_window(
        self, batches: Sequence[torch.Tensor], global_step: int, up: Link | None, down: Link | None
    ) -> list[float]:
        """H inner steps; the last stage returns the step losses, the others (which never see a
        loss) an empty list. Raises StageLost if a neighbour goes away: the caller drops the
        window and keeps θ_w."""
        self.stage.model.train()
        losses = []
        for i, batch in enumerate(batches):
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_schedule(global_step + i)
            loss = self._step(batch, up, down)
            if down is None:
                losses.append(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.constraint is not None:
                self.constraint.project_(self.stage.params, self._anchor)
        return losses
