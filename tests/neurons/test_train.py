from __future__ import annotations

import math

import pytest
import torch

from neurons.data import assigned_batches, heldout_batches
from neurons.model import build_model
from neurons.train import InnerTrainer, evaluate, lr_at


def test_schedule_warmup_then_cosine(hparams) -> None:
    cfg = hparams.training.model_copy(update={"lr": 1.0, "warmup_steps": 4, "total_steps": 104, "min_lr_ratio": 0.1})
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(54, cfg) == pytest.approx(0.55)  # halfway down the cosine: floor + half the range
    assert lr_at(104, cfg) == pytest.approx(0.1)
    assert lr_at(10_000, cfg) == pytest.approx(0.1)
    values = [lr_at(s, cfg) for s in range(4, 105)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_loss_decreases_on_embedded_corpus(hparams, corpus) -> None:
    cfg = hparams.training.model_copy(update={"warmup_steps": 2})
    model = build_model(hparams.model, hparams.seed)
    trainer = InnerTrainer(model, cfg, "cpu")
    eval_batches = heldout_batches(corpus, 2, cfg.batch_size, cfg.seq_len)
    before = evaluate(model, eval_batches)
    stats = [
        trainer.train_window(assigned_batches(corpus, hparams.seed, 0, w, cfg.inner_steps, cfg.batch_size, cfg.seq_len))
        for w in range(2)
    ]
    after = evaluate(model, eval_batches)
    assert after < before - 0.5
    assert stats[0].loss_last < stats[0].loss_first
    assert stats[1].steps == cfg.inner_steps
    assert stats[1].tokens == cfg.inner_steps * cfg.batch_size * cfg.seq_len
    assert trainer.global_step == 2 * cfg.inner_steps
    assert stats[1].lr_last == pytest.approx(lr_at(2 * cfg.inner_steps - 1, cfg))


def test_optimizer_state_survives_outer_changes(hparams) -> None:
    """The outer step edits parameters in place between windows; AdamW moments must carry over."""
    cfg = hparams.training
    model = build_model(hparams.model, 0)
    trainer = InnerTrainer(model, cfg, "cpu")
    batch = [torch.randint(0, hparams.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))]
    trainer.train_window(batch)
    state = trainer.optimizer.state[model.lm_head.weight]
    step_before = int(state["step"])
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)
    trainer.train_window(batch)
    assert int(trainer.optimizer.state[model.lm_head.weight]["step"]) == step_before + 1


def test_weight_decay_skips_norms(hparams) -> None:
    trainer = InnerTrainer(build_model(hparams.model, 0), hparams.training, "cpu")
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == hparams.training.weight_decay and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in no_decay["params"]) and all(p.ndim == 2 for p in decay["params"])


def test_evaluate_is_pure(hparams) -> None:
    model = build_model(hparams.model, 0)
    model.train()
    batches = [torch.randint(0, hparams.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))]
    first = evaluate(model, batches)
    assert first == evaluate(model, batches)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert math.isfinite(first)


def test_evaluate_weights_by_tokens(hparams) -> None:
    model = build_model(hparams.model, 0)
    gen = torch.Generator().manual_seed(2)
    short, long = torch.randint(0, 2048, (1, 5), generator=gen), torch.randint(0, 2048, (3, 33), generator=gen)
    expected = (evaluate(model, [short]) * 4 + evaluate(model, [long]) * 96) / 100
    assert evaluate(model, [short, long]) == pytest.approx(expected, rel=1e-6)


def test_empty_inputs_are_errors(hparams) -> None:
    model = build_model(hparams.model, 0)
    with pytest.raises(ValueError):
        InnerTrainer(model, hparams.training, "cpu").train_window([])
    with pytest.raises(ValueError):
        evaluate(model, [])
    with pytest.raises(ValueError, match="move the model"):
        InnerTrainer(model, hparams.training, "meta")


def test_optimizer_state_round_trips_through_a_restart(hparams, corpus, tmp_path) -> None:
    """A miner restarted from saved state trains exactly as if it had never stopped."""
    from neurons.state import load_node_state, save_node_state

    cfg = hparams.training

    def batches(w):
        return assigned_batches(corpus, hparams.seed, 0, w, cfg.inner_steps, cfg.batch_size, cfg.seq_len)

    steady = build_model(hparams.model, hparams.seed)
    steady_trainer = InnerTrainer(steady, cfg, "cpu")
    steady_trainer.train_window(batches(0))
    opt = {f"opt.{k}": v for k, v in steady_trainer.state_tensors().items()}
    save_node_state(tmp_path / "state.safetensors", steady, "run", 1, opt)
    steady_trainer.train_window(batches(1))

    restarted = build_model(hparams.model, hparams.seed + 1)  # different θ until the state loads
    restored = load_node_state(tmp_path / "state.safetensors", restarted, "run")
    trainer = InnerTrainer(restarted, cfg, "cpu")
    trainer.global_step = cfg.inner_steps
    trainer.load_state_tensors({k.removeprefix("opt."): v for k, v in restored.extra.items()})
    trainer.train_window(batches(1))
    for (name, a), b in zip(steady.named_parameters(), restarted.parameters(), strict=True):
        assert torch.equal(a, b), name

    # without the moments the same window lands elsewhere: the test can tell the difference
    fresh = build_model(hparams.model, hparams.seed + 1)
    load_node_state(tmp_path / "state.safetensors", fresh, "run")
    InnerTrainer(fresh, cfg, "cpu").train_window(batches(1))
    assert not all(torch.equal(a, b) for a, b in zip(steady.parameters(), fresh.parameters(), strict=True))


def test_optimizer_state_of_another_shape_is_refused(hparams) -> None:
    model = build_model(hparams.model, hparams.seed)
    trainer = InnerTrainer(model, hparams.training, "cpu")
    name, p = next(iter(model.named_parameters()))
    bad = {f"{name}.step": torch.tensor(3.0), f"{name}.exp_avg": torch.zeros(2), f"{name}.exp_avg_sq": torch.zeros(2)}
    with pytest.raises(ValueError, match="optimizer state"):
        trainer.load_state_tensors(bad)
