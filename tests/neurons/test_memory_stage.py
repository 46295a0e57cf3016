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
    stage_param_count,
)
from neurons.stage_miner import MICRO_BATCHES
from protocol.hparams import load_hparams


def test_the_stage_micro_batches_are_the_stage_miners():
    assert STAGE_MICRO_BATCHES == MICRO_BATCHES


@pytest.mark.parametrize("preset", ["tiny", "150M", "8B"])
def test_stages_partition_the_trained_parameters(preset):
    m = load_hparams(preset).model
    for n in (2, 4):
        if n > m.num_layers:
            continue
        from protocol.layers import split_layers

        assert sum(stage_param_count(m, r.start, r.stop) for r in split_layers(m.num_layers, n)) == param_count(m)


def test_a_stage_needs_less_than_a_whole_miner_and_only_the_last_holds_logits():
    hp = load_hparams("150M")
    whole = estimate(hp, "miner", device="cuda")
    stages = [estimate(hp, "miner", device="cuda", stage=(s, 4)) for s in range(4)]
    assert all(st.needed_bytes < whole.needed_bytes for st in stages)
    # weights of the whole θ, a miner's other state for the slice
    m = hp.model
    assert stages[1].state_bytes == 4 * param_count(m) + (MINER_STATE_BYTES - 4) * stage_param_count(m, 3, 6)
    assert stages[3].activation_bytes > 2 * stages[1].activation_bytes  # the head's logits


def test_a_stage_that_does_not_fit_says_to_split_further():
    hp = load_hparams("8B")
    with pytest.raises(MemoryBudgetError, match="stage 0/4 needs .* split the model into more stages"):
        check_memory(hp, "miner", 1, "cuda", 80 * 1024**3, stage=(0, 4))
