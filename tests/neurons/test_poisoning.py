"""Poisoning with finite values, on the project's own model, data, trainer and codec.

One honest miner and one or two peers whose correctly signed payloads carry huge finite values
(the class that once took parameters to 1e38 and the loss to NaN on every node). The value
bounds every node applies alone refuse them, so the held-out loss is the honest run's. Without
the bounds, two such peers outnumber the honest one, the median-norm clip no longer helps, and
the model is ruined: the bounds, not the number of honest peers, are what protect it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from compression import ErrorFeedbackCompressor, PayloadManifest, aggregate, encode_payload, outer_step
from neurons.data import assigned_batches, heldout_batches
from neurons.gather import acceptance_rule_for
from neurons.model import build_model, param_shapes
from neurons.train import InnerTrainer, evaluate
from protocol.acceptance import RejectReason, judge_payload, parameter_norms
from protocol.signing import HotkeySigner

WINDOWS = 2


def _payload(hp, signer, uid, window, delta, compressor) -> bytes:
    message = compressor.compress(delta)
    manifest = PayloadManifest.for_message(
        message, run_id=hp.run_id, window=window, uid=uid, hotkey=signer.hotkey, global_step=0
    )
    return encode_payload(message, manifest, sign=signer.sign)


def _run(hp, corpus, hostile_scale: float | None, hostiles: int = 1, bounded: bool = True) -> tuple[float, list[str]]:
    """Held-out loss after WINDOWS windows of [honest (+ hostile)] gathering, and the hostile verdicts."""
    t = hp.training
    model = build_model(hp.model, hp.seed)
    shapes = param_shapes(model)
    trainer = InnerTrainer(build_model(hp.model, hp.seed), t, "cpu")
    codec = {"chunk_size": hp.codec.chunk_size, "topk_per_chunk": hp.codec.topk_per_chunk, "beta": hp.codec.ef_beta}
    honest_ef = ErrorFeedbackCompressor(shapes, **codec)
    honest = HotkeySigner.from_uri("//PoisonHonest")
    hostile = {2 + i: (HotkeySigner.from_uri(f"//PoisonHostile{i}"), ErrorFeedbackCompressor(shapes, **codec))
               for i in range(hostiles)}
    gen = torch.Generator().manual_seed(7)
    verdicts = []
    for w in range(WINDOWS):
        trainer.model.load_state_dict(model.state_dict())
        trainer.global_step = w * t.inner_steps
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train_window(assigned_batches(corpus, hp.seed, 1, w, t.inner_steps, t.batch_size, t.seq_len))
        delta = {n: start[n] - p.detach() for n, p in trainer.model.named_parameters()}
        peers = [(1, honest, _payload(hp, honest, 1, w, delta, honest_ef))]
        for uid, (signer, ef) in hostile.items() if hostile_scale is not None else ():
            junk = {n: torch.randn(s, generator=gen) * hostile_scale for n, s in shapes.items()}
            peers.append((uid, signer, _payload(hp, signer, uid, w, junk, ef)))
        rule = acceptance_rule_for(hp, w, 0.0, parameter_norms(model))
        if not bounded:
            rule = dataclasses.replace(rule, bounds=None)
        accepted = []
        for uid, signer, data in peers:
            verdict = judge_payload(data, uid, signer.hotkey, rule, shapes)
            if uid != 1:
                verdicts.append(str(verdict.result.reason))
            if verdict.result.passed:
                accepted.append(verdict.decoded.update)
        outer_step(model, aggregate(accepted, shapes), lr=hp.outer.outer_lr)
    held = heldout_batches(corpus, 2, t.batch_size, t.seq_len)
    return evaluate(model, held), verdicts


@pytest.fixture(scope="module")
def honest_loss(hparams, corpus) -> float:
    return _run(hparams, corpus, None)[0]


@pytest.mark.parametrize(("scale", "hostiles"), [(1e4, 1), (1e30, 1), (1e4, 2)])
def test_hostile_value_peers_change_nothing(hparams, corpus, honest_loss, scale, hostiles):
    loss, verdicts = _run(hparams, corpus, scale, hostiles)
    assert verdicts == [str(RejectReason.OUT_OF_BOUNDS)] * (WINDOWS * hostiles)
    assert abs(loss - honest_loss) <= 0.01 * honest_loss


def test_without_the_bounds_the_same_peers_ruin_the_model(hparams, corpus, honest_loss):
    try:
        loss, verdicts = _run(hparams, corpus, 1e4, hostiles=2, bounded=False)
    except FloatingPointError as exc:  # the next window's training already diverges
        assert "non-finite training loss" in str(exc)
        return
    assert verdicts == ["None"] * (WINDOWS * 2)  # accepted: only the bounds stood in their way
    assert not math.isfinite(loss) or loss > 1.5 * honest_loss
