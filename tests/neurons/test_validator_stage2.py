"""How ``Validator.stage2`` hands a window's candidates to the measurement: whole-model miners
on ``eval_batches`` with no context; pipeline stages on ``stage_eval_factor`` times that, each
next to its group partners' scaled updates, on stage 0's data; θ_w's shared "before" pass only
when some update has no context (``neurons.parallel_eval.measure_candidates`` is recorded)."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import torch

import neurons.validator as validator_module
from compression import DecodedPayload, PayloadManifest, StageClaim
from compression.sparse import SparseTensor
from neurons.corpus import ensure_embedded_data
from neurons.distributed import World
from neurons.fetch import FetchedPayload
from neurons.model import build_model
from neurons.shards import TokenShards
from neurons.validator import Stage1, Validator
from protocol.acceptance import Stage1Result
from protocol.hparams import load_hparams
from protocol.layers import split_layers

FULL, LEAD, SECOND = 2, 4, 5


def _update(names, model, value: float) -> dict[str, SparseTensor]:
    params = dict(model.named_parameters())
    return {n: SparseTensor(tuple(params[n].shape), torch.tensor([0]), torch.tensor([value])) for n in names}


def _fetched(uid: int, update, claim: StageClaim | None = None) -> FetchedPayload:
    manifest = PayloadManifest(run_id="r", window=1, uid=uid, hotkey="hk", global_step=0, names_digest="",
                               shapes=[], pipeline_stage=claim)
    return FetchedPayload(uid, Stage1Result.accept(uid), decoded=DecodedPayload(manifest, b"", update))


def test_stages_are_measured_on_more_batches_next_to_their_partners(tmp_path: Path, monkeypatch):
    hp = load_hparams("tiny-pipeline")
    model = build_model(hp.model, hp.seed)
    spans = split_layers(hp.model.num_layers, 2)
    names = [n for n, _ in model.named_parameters()]
    halves = [[n for n in names if span.owns(n)] for span in spans]
    claims = [StageClaim(group="g", index=i, n_stages=2, layer_start=s.start, layer_stop=s.stop, data_uid=LEAD)
              for i, s in enumerate(spans)]
    fetched = {FULL: _fetched(FULL, _update(names, model, 1.0)),
               LEAD: _fetched(LEAD, _update(halves[0], model, 2.0), claims[0]),
               SECOND: _fetched(SECOND, _update(halves[1], model, 3.0), claims[1])}
    stage1 = Stage1({u: f.result for u, f in fetched.items()}, {}, norms=dict.fromkeys(fetched, 1.0), typical={})
    calls = []

    def record(world, model, updates, lr, own, rand, before, reference, contexts=None):
        calls.append(SimpleNamespace(updates=updates, own=own, rand=rand, before=before, contexts=contexts))
        return {}

    monkeypatch.setattr(validator_module, "measure_candidates", record)
    shards = TokenShards(ensure_embedded_data(tmp_path / "data", hp.model.vocab_size, 150000))
    node = SimpleNamespace(hparams=hp, model=model, world=World())
    stub = SimpleNamespace(node=node, shards=shards, secret=b"s" * 32, reference=None)
    stub.measure = functools.partial(Validator.measure, stub)

    Validator.stage2(stub, 3, fetched, stage1, [FULL, LEAD, SECOND])

    whole, stages = calls
    n = hp.scoring.eval_batches
    assert set(whole.updates) == {FULL} and len(whole.own[FULL]) == len(whole.rand) == n and len(whole.before) > 0
    assert not whole.contexts
    assert set(stages.updates) == {LEAD, SECOND}
    assert len(stages.rand) == len(stages.own[LEAD]) == n * hp.scoring.stage_eval_factor
    assert all(torch.equal(a, b) for a, b in zip(stages.own[LEAD], stages.own[SECOND], strict=True))  # stage 0's data
    assert set(stages.contexts[LEAD]) == set(halves[1]) and set(stages.contexts[SECOND]) == set(halves[0])
    assert stages.contexts[LEAD] == stages.updates[SECOND]  # the partner's scaled update itself
    assert stages.before == ()  # every stage had a context: θ_w's shared pass is not needed
