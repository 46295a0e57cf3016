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


def _stage_steps(params: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer, seed: int, steps: int) -> None:
    """AdamW steps on synthetic gradients: the state's content, not the loss, is under test."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()


def test_a_stage_optimizer_state_round_trips_exactly_on_its_own_parameters(hparams) -> None:
    """A stage miner saves and restores the AdamW state of its layers only (the ``stage`` case of
    ``optimizer_state_tensors``/``load_optimizer_state``): after a restart it steps bit for bit as
    if it had never stopped."""
    from neurons.train import load_optimizer_state, optimizer_state_tensors
    from pipeline.replica import stage_optimizer
    from pipeline.stage import Stage, split_layers

    span = split_layers(hparams.model.num_layers, 2)[1]
    steady = Stage(build_model(hparams.model, hparams.seed), span)
    steady_opt = stage_optimizer(steady, hparams.training)
    _stage_steps(steady.params, steady_opt, seed=0, steps=3)
    saved = {k: v.clone() for k, v in optimizer_state_tensors(steady.params.items(), steady_opt).items()}
    assert {k.rpartition(".")[0] for k in saved} == set(steady.params)  # this stage's parameters, no others
    assert all(f"{n}.{k}" in saved for n in steady.params for k in ("step", "exp_avg", "exp_avg_sq"))

    restarted = Stage(build_model(hparams.model, hparams.seed), span)
    with torch.no_grad():
        for name, p in restarted.params.items():
            p.copy_(steady.params[name])
    restarted_opt = stage_optimizer(restarted, hparams.training)
    load_optimizer_state(restarted.params.items(), restarted_opt, saved)
    again = optimizer_state_tensors(restarted.params.items(), restarted_opt)
    assert again.keys() == saved.keys()
    assert all(torch.equal(again[k], saved[k]) for k in saved)

    fresh = Stage(build_model(hparams.model, hparams.seed), span)
    with torch.no_grad():
        for name, p in fresh.params.items():
            p.copy_(steady.params[name])
    fresh_opt = stage_optimizer(fresh, hparams.training)
    for stage, opt in ((steady, steady_opt), (restarted, restarted_opt), (fresh, fresh_opt)):
        _stage_steps(stage.params, opt, seed=1, steps=2)
    assert all(torch.equal(p, restarted.params[n]) for n, p in steady.params.items())
    # without the restored moments the same steps land elsewhere: the test can tell the difference
    assert not all(torch.equal(p, fresh.params[n]) for n, p in steady.params.items())


def test_a_stage_optimizer_state_of_another_shape_is_refused(hparams) -> None:
    from neurons.train import load_optimizer_state, optimizer_state_tensors
    from pipeline.replica import stage_optimizer
    from pipeline.stage import Stage, split_layers

    stage = Stage(build_model(hparams.model, hparams.seed), split_layers(hparams.model.num_layers, 2)[0])
    opt = stage_optimizer(stage, hparams.training)
    _stage_steps(stage.params, opt, seed=0, steps=1)
    state = optimizer_state_tensors(stage.params.items(), opt)
    name = next(n for n, p in stage.params.items() if p.ndim == 2 and p.shape[0] != p.shape[1])
    state[f"{name}.exp_avg"] = state[f"{name}.exp_avg"].T
    with pytest.raises(ValueError, match=f"optimizer state {name}.exp_avg has shape"):
        load_optimizer_state(stage.params.items(), stage_optimizer(stage, hparams.training), state)


def test_evaluate_builds_no_autograd_graph(hparams) -> None:
    """Validators evaluate many batches per window: with grad on, every batch's activations stay
    alive until the sum is read (memory grows with the batch count)."""
    model = build_model(hparams.model, 0)
    grad_enabled: list[bool] = []
    model.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    batches = [torch.randint(0, hparams.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))] * 2
    evaluate(model, batches)
    assert grad_enabled == [False, False]
    assert torch.is_grad_enabled()  # and it leaves the caller's mode alone
