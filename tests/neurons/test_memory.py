"""The computed memory per device, and the start-up refusal that names what is needed."""

from __future__ import annotations

import pytest
import torch

from neurons import distributed
from neurons.cli import main, one_line_errors
from neurons.distributed import DistributedError, World, check_micro_batches
from neurons.memory import (
    CUDA_WORKSPACE_BYTES,
    GATHER_BUCKET,
    GIB,
    MemoryBudgetError,
    available_ram,
    check_memory,
    estimate,
    layer_bytes,
    param_count,
)
from neurons.model import build_model
from neurons.node import enable_activation_checkpointing
from neurons.train import InnerTrainer
from protocol.hparams import load_hparams
from tests.neurons.saved_storages import saved_storages

PRESETS = ("tiny", "150M", "1B", "8B", "70B")


def test_param_count_matches_the_built_model():
    hp = load_hparams("tiny")
    assert param_count(hp.model) == sum(p.numel() for p in build_model(hp.model, hp.seed).parameters())


@pytest.mark.parametrize(("preset", "billions"), [("150M", 0.154), ("1B", 1.236), ("8B", 8.030), ("70B", 70.554)])
def test_param_count_of_the_large_presets(preset, billions):
    # Llama-3 8B / 70B shapes give their published parameter counts (8.03e9, 70.55e9)
    assert param_count(load_hparams(preset).model) / 1e9 == pytest.approx(billions, abs=5e-4)


def test_the_gather_bucket_is_the_one_the_node_uses():
    assert GATHER_BUCKET == distributed.GATHER_BUCKET


@pytest.mark.parametrize("preset", PRESETS)
def test_more_ranks_never_need_more_activation_memory_and_sharding_cuts_state(preset):
    hp = load_hparams(preset)
    one, eight = estimate(hp, "miner", 1), estimate(hp, "miner", 8)
    assert eight.activation_bytes < one.activation_bytes
    assert eight.state_bytes == one.state_bytes == 24 * one.params  # replicated: every rank holds it all
    assert estimate(hp, "miner", 8, layout="sharded").state_bytes < eight.state_bytes / 4
    assert estimate(hp, "miner", 1, checkpointing=True).activation_bytes < one.activation_bytes
    validator = estimate(hp, "validator", 1)
    assert validator.state_bytes == 16 * validator.params


def test_8b_miner_on_one_h200_is_refused_naming_the_memory_needed():
    hp = load_hparams("8B")
    with pytest.raises(MemoryBudgetError) as exc:
        check_memory(hp, "miner", 8, "cuda:0", available=141 * GIB)
    text = str(exc.value)
    assert "\n" not in text
    assert "8B miner needs" in text and "at world size 8" in text and "141.0 GiB free" in text
    assert "no world size or micro-batch count brings it under" in text  # replicated: the state alone is 180 GiB


def test_a_preset_that_fits_with_more_micro_batches_names_the_world_size_and_the_flag():
    hp = load_hparams("150M")
    needed_at_8 = estimate(hp, "miner", 8).needed_bytes
    with pytest.raises(MemoryBudgetError, match=r"into 8 micro-batches, with torchrun --nproc_per_node 8 \(world size 8\) "
                                                r"or --micro-batches 8 on world size 1"):
        check_memory(hp, "miner", 1, "cuda:0", available=needed_at_8)
    assert check_memory(hp, "miner", 8, "cuda:0", available=needed_at_8).world_size == 8
    # accumulation on one device has the activations of one micro-batch (the state stays)
    assert check_memory(hp, "miner", 1, "cuda:0", available=needed_at_8, micro_batches=8).activation_bytes == \
        estimate(hp, "miner", 8).activation_bytes


def test_every_preset_fits_somewhere_or_says_so():
    for preset in PRESETS:
        hp = load_hparams(preset)
        for role in ("miner", "validator"):
            est = estimate(hp, role, 8)
            assert check_memory(hp, role, 8, "cuda", available=est.needed_bytes) == est
            with pytest.raises(MemoryBudgetError, match=f"{preset} {role} needs"):
                check_memory(hp, role, 8, "cuda", available=est.needed_bytes - 1)


def test_refusal_is_one_cli_line_without_a_fix_suffix():
    hp = load_hparams("70B")
    with pytest.raises(MemoryBudgetError) as exc:
        check_memory(hp, "validator", 1, "cuda", available=80 * GIB)
    (line,) = one_line_errors(exc.value)
    assert line.startswith("70B validator needs") and "-- fix" not in line


def test_available_ram_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    1234567 kB\n")
    assert available_ram(meminfo) == 1234567 * 1024


def test_micro_batch_rule_is_a_startup_error():
    assert check_micro_batches(8, None, World(0, 2, 0)) == 2
    assert check_micro_batches(8, 4, World()) == 4
    assert check_micro_batches(8, 4, World(0, 2, 0)) == 4  # two per rank
    with pytest.raises(DistributedError, match="--micro-batches 3 with 2 ranks: .* a multiple of 2"):
        check_micro_batches(8, 3, World(0, 2, 0))
    with pytest.raises(DistributedError, match="batch_size 8 does not split into 3"):
        check_micro_batches(8, None, World(0, 3, 0))


def test_activation_checkpointing_gives_the_same_bits():
    hp = load_hparams("tiny")
    g = torch.Generator().manual_seed(3)
    batches = list(torch.randint(0, hp.model.vocab_size, (2, hp.training.batch_size, 64), generator=g).unbind(0))
    thetas = []
    for checkpointing in (False, True):
        model = build_model(hp.model, hp.seed)
        if checkpointing:
            enable_activation_checkpointing(model)
        InnerTrainer(model, hp.training, "cpu").train_window(batches)
        thetas.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(thetas[0], thetas[1])


def test_activation_checkpointing_falls_back_to_the_older_transformers_name():
    """transformers 5.17 has no activation_checkpointing_enable; the node uses the older name there."""
    calls = []

    class Older(torch.nn.Module):
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            calls.append(gradient_checkpointing_kwargs)

    enable_activation_checkpointing(Older())
    assert calls == [{"use_reentrant": False}]


def test_memory_command_prints_the_table(capsys):
    assert main(["memory", "--hparams", "8B", "--world-size", "8", "--role", "miner", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"computed": true' in out and '"world_size": 8' in out and '"layout": "sharded"' in out


def test_a_node_that_does_not_fit_refuses_before_building_its_model(monkeypatch):
    """assemble_node checks memory before θ0 is built and before chain, storage or signer are
    touched (all None here): a 2 MiB device cannot hold even the tiny miner."""
    import threading
    from types import SimpleNamespace

    from neurons import node as node_module

    monkeypatch.setattr(node_module, "device_memory", lambda device, ranks: 2 * 2**20)
    monkeypatch.setattr(node_module, "build_model", lambda *a: pytest.fail("built the model before the check"))
    config = SimpleNamespace(device="cpu", role="miner", micro_batches=None, memory_check=True, pipeline=None,
                             activation_checkpointing=False)
    hp = load_hparams("tiny")
    with pytest.raises(MemoryBudgetError, match=r"^tiny miner needs .* at world size 1 .* but cpu has 2.0 MiB free"):
        node_module.assemble_node(config, hp, None, None, 0, None, threading.Event())
    with pytest.raises(DistributedError, match="--micro-batches 3 with 2 ranks"):
        node_module.assemble_node(config.__class__(**{**vars(config), "micro_batches": 3}), hp, None, None, 0, None,
                                  threading.Event(), world=World(0, 2, 0))


@pytest.mark.parametrize("role", ["miner", "validator"])
def test_the_node_command_refuses_a_preset_that_does_not_fit_in_one_line(role, tmp_path, capsys, monkeypatch):
    """`tessera miner|validator --hparams 70B` on this CPU: exit 2 and one line naming the memory,
    before the chain (a file that does not exist) or the bucket (nothing listens) is touched."""
    for var in ("TESSERA_BUCKET_WRITE_KEY_ID", "TESSERA_BUCKET_WRITE_SECRET", "TESSERA_BUCKET_READ_SECRET"):
        monkeypatch.setenv(var, "x")
    argv = [role, "--netuid", "1", "--hparams", "70B", "--devchain", str(tmp_path / "absent.sqlite"),
            "--bucket.endpoint", "http://127.0.0.1:9", "--bucket.name", "unused", "--bucket.read-key-id", "r",
            "--state-dir", str(tmp_path / "state")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"tessera {role}: error: 70B {role} needs") and "per device at world size 1" in err
    assert not (tmp_path / "absent.sqlite").exists() and not (tmp_path / "state").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_measured_cuda_window_reports_the_allocator_footprint():
    from neurons.memory import measure_miner_window

    r = measure_miner_window(load_hparams("tiny"), "cuda")
    assert 0 < r["measured_bytes"] <= r["reserved_bytes"]
    assert r["outside_allocator_bytes"] >= 0 and r["computed_bytes"] == estimate(load_hparams("tiny"), "miner").total_bytes


def _saved_bytes(model: torch.nn.Module, batch: torch.Tensor, autocast: bool) -> int:
    """Bytes of the distinct storages autograd saves in one forward (the parameters' own excluded)."""
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with saved_storages(model) as saved, cast:
        loss = model(input_ids=batch, labels=batch).loss
    del loss
    return saved.bytes


@pytest.mark.parametrize(("autocast", "math"), [(True, False), (False, False), (False, True)])
def test_a_layer_keeps_what_layer_bytes_counts(autocast, math):
    """What one more decoder layer adds to the tensors saved for the backward is ``layer_bytes`` per
    token (plus, under bf16 autocast, a bf16 copy of its matrices), with fewer kv heads than heads as
    in the 150M preset. ``math``: sdpa forced to its MATH kernel, what CUDA runs in fp32 with GQA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from neurons.memory import _matrix_params

    m = load_hparams("tiny").model.model_copy(update={"num_kv_heads": 2})
    batch = torch.randint(0, m.vocab_size, (3, 20), generator=torch.Generator().manual_seed(0))
    backend = SDPBackend.MATH if math else SDPBackend.FLASH_ATTENTION
    with sdpa_kernel(backend):
        one, two = (_saved_bytes(build_model(m.model_copy(update={"num_layers": n}), 0), batch, autocast) for n in (1, 2))
    casts = 2 * _matrix_params(m, 1, head=False) if autocast else 0
    assert two - one == batch.numel() * layer_bytes(m, autocast, batch.shape[1], math) + casts


def _with_training(hp, **update):
    return hp.model_copy(update={"training": hp.training.model_copy(update=update)})


@pytest.mark.parametrize(("preset", "update", "measured"), [
    ("tiny", {}, 133_447_680),
    ("150M", {}, 68_291_894_272),
    ("150M", {"batch_size": 16}, 36_005_583_872),
    ("150M", {"seq_len": 1024}, 36_005_059_584),
])
def test_the_miner_count_matches_the_h200_measurement(preset, update, measured):
    """One miner window's allocated peak on an H200 (torch 2.11, transformers 5.17;
    ``scripts/device_memory_probe.py --device cuda --presets tiny,150M``, 3 inner steps) against
    the count: within 1 %. tiny's peak is half fixed allocations (the 64 MiB of cuBLAS workspaces)."""
    hp = _with_training(load_hparams(preset), **update)
    counted = estimate(hp, "miner", 1, "cuda").total_bytes
    assert counted == pytest.approx(measured, rel=0.01)


def test_the_validator_count_covers_the_h200_evaluation():
    """stage 2's fp32 evaluation of one 150M batch (32 x 2048) on an H200: 17,382,770,688 bytes above
    the weights (``scripts/device_memory_probe.py``), counted 4 % over."""
    hp = load_hparams("150M")
    act = estimate(hp, "validator", 1, "cuda").activation_bytes
    assert 17_382_770_688 <= act <= 1.05 * 17_382_770_688


def test_cuda_counts_the_cublas_workspaces():
    hp = load_hparams("tiny")
    assert estimate(hp, "miner", 1, "cuda").buffer_bytes == CUDA_WORKSPACE_BYTES
    assert estimate(hp, "miner", 1, "cpu").buffer_bytes == 0
    assert estimate(hp, "validator", 1, "cuda").buffer_bytes == CUDA_WORKSPACE_BYTES
