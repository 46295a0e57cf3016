"""The computed memory of a pipeline stage: θ's weights, plus a miner's training state and
activations for its slice only (``neurons.memory.estimate(stage=...)``)."""

from __future__ import annotations

import pytest

from neurons.memory import (
    MINER_STATE_BYTES,
    STAGE_MICRO_BATCHES,
    MemoryBudgetError,
    check_memory,
    estimate,
    param_count,
    stage_activation_bytes,
    stage_param_count,
)
from neurons.stage_miner import MICRO_BATCHES
from protocol.hparams import load_hparams
from protocol.layers import split_layers


def test_the_stage_micro_batches_are_the_stage_miners():
    assert STAGE_MICRO_BATCHES == MICRO_BATCHES


@pytest.mark.parametrize("preset", ["tiny", "150M", "8B"])
def test_stages_partition_the_trained_parameters(preset):
    m = load_hparams(preset).model
    for n in (2, 4):
        if n > m.num_layers:
            continue
        assert sum(stage_param_count(m, r.start, r.stop) for r in split_layers(m.num_layers, n)) == param_count(m)


def test_a_stage_needs_less_than_a_whole_miner_and_only_the_last_holds_logits():
    hp = load_hparams("150M")
    whole = estimate(hp, "miner", device="cuda")
    stages = [estimate(hp, "miner", device="cuda", stage=(s, 4)) for s in range(4)]
    assert all(st.needed_bytes < whole.needed_bytes for st in stages)
    # weights of the whole θ, a miner's other state for the slice
    m = hp.model
    assert stages[1].state_bytes == 4 * param_count(m) + (MINER_STATE_BYTES - 4) * stage_param_count(m, 3, 6)
    # the head: every micro-batch's logits and log-probabilities (8 bytes per token and vocabulary entry)
    t = hp.training
    assert stages[3].activation_bytes - stages[1].activation_bytes >= t.batch_size * t.seq_len * 8 * m.vocab_size


def test_a_cuda_stage_is_counted_in_fp32_with_the_math_kernel():
    """pipeline.worker trains without autocast; on CUDA, fp32 with fewer kv heads than heads runs
    sdpa's MATH kernel (s x s probabilities per head). Two 150M stages then need more than a whole
    bf16 miner (measured on an H200: docs/hardware.md), four do not."""
    hp = load_hparams("150M")
    whole = estimate(hp, "miner", device="cuda")
    assert all(estimate(hp, "miner", device="cuda", stage=(s, 2)).total_bytes > whole.total_bytes for s in range(2))
    assert all(estimate(hp, "miner", device="cuda", stage=(s, 4)).total_bytes < whole.total_bytes for s in range(4))
    # the probabilities: 4 bytes per head and position, per token and layer, for 2 micro-batches of 16 rows
    cpu = estimate(hp, "miner", device="cpu", stage=(0, 2))
    cuda = estimate(hp, "miner", device="cuda", stage=(0, 2))
    m, t = hp.model, hp.training
    assert cuda.activation_bytes - cpu.activation_bytes > t.batch_size * t.seq_len * 6 * 4 * m.num_heads * t.seq_len


@pytest.mark.parametrize(("stage", "measured"), [(0, 78_150_503_424), (1, 96_432_818_176)])
def test_the_stage_count_covers_the_h200_measurement(stage, measured):
    """scripts/device_memory_probe.py --device cuda --presets 150M on one H200 (torch 2.11): the peak
    of a GPipe step of two micro-batches of 16 x 2048 rows above the weights, against the count of
    the activations plus the slice's gradients (2.7 % and 1.4 % over)."""
    hp = load_hparams("150M")
    m, t = hp.model, hp.training
    span = split_layers(m.num_layers, 2)[stage]
    counted = stage_activation_bytes(m, t.batch_size // 2, t.seq_len, span, STAGE_MICRO_BATCHES, False, "cuda") \
        + 4 * stage_param_count(m, span.start, span.stop)
    assert measured <= counted <= 1.03 * measured


def test_a_stage_that_does_not_fit_says_to_split_further():
    hp = load_hparams("8B")
    with pytest.raises(MemoryBudgetError, match="stage 0/4 needs .* split the model into more stages"):
        check_memory(hp, "miner", 1, "cuda", 80 * 1024**3, stage=(0, 4))
