from __future__ import annotations

import math

import torch

from neurons.model import build_model, param_count, param_shapes


def test_same_seed_same_weights(hparams) -> None:
    a, b = build_model(hparams.model, 11), build_model(hparams.model, 11)
    for (name_a, pa), (name_b, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert name_a == name_b
        assert torch.equal(pa, pb), name_a


def test_different_seed_different_weights(hparams) -> None:
    a, b = build_model(hparams.model, 11), build_model(hparams.model, 12)
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)


def test_init_ignores_global_rng(hparams) -> None:
    torch.manual_seed(1)
    a = build_model(hparams.model, 5)
    torch.manual_seed(2)
    torch.rand(100)
    b = build_model(hparams.model, 5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_float32_shapes_and_init_scale(hparams) -> None:
    cfg = hparams.model
    model = build_model(cfg, 0)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    shapes = param_shapes(model)
    assert shapes["model.embed_tokens.weight"] == (cfg.vocab_size, cfg.hidden_size)
    assert shapes["lm_head.weight"] == (cfg.vocab_size, cfg.hidden_size)
    assert len([n for n in shapes if ".layers." in n and n.endswith("q_proj.weight")]) == cfg.num_layers
    assert param_count(model) == sum(math.prod(s) for s in shapes.values())
    assert param_count(model) <= 1_100_000  # CI budget: tiny models stay around 1M parameters
    assert abs(model.model.embed_tokens.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.model.norm.weight == 1.0)


def test_initial_loss_near_uniform(hparams) -> None:
    model = build_model(hparams.model, 0)
    tokens = torch.randint(0, hparams.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = model(input_ids=tokens, labels=tokens).loss.item()
    assert abs(loss - math.log(hparams.model.vocab_size)) < 0.2


def test_tied_embeddings_share_one_parameter(hparams) -> None:
    cfg = hparams.model.model_copy(update={"tie_embeddings": True})
    model = build_model(cfg, 0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in param_shapes(model)
