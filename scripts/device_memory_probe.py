"""Measured peaks beside neurons.memory's counts, one JSON line per case (docs/hardware.md, "Measured").

Cases: the miner window (``measure_miner_window``) at the preset's batch and at half its rows and
half its sequence (what scales with tokens against what does not); stage 2's fp32 evaluation of
one batch; a GPipe pipeline stage's forward/backward of two micro-batches (fp32, as
``pipeline.worker`` trains); plus which sdpa kernel torch picks for the preset's attention shapes
and the bytes the allocator still holds after a warm-up was freed (cuBLAS workspaces).

    python scripts/device_memory_probe.py --device cuda --presets tiny,150M --inner-steps 3
    python scripts/device_memory_probe.py --device cpu --presets tiny            # a CPU dry run

On CUDA the peaks are ``torch.cuda.max_memory_allocated``: for the miner cases as
``measure_miner_window`` reports it (from after its warm-up, cuBLAS's workspaces included), for the
evaluation and stage cases above what was allocated before (the model's weights). On CPU they are
not measured (null): the CPU run checks the script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neurons.memory import (  # noqa: E402
    STAGE_MICRO_BATCHES,
    _warm_kernels,
    activation_bytes,
    estimate,
    measure_miner_window,
    stage_activation_bytes,
    stage_param_count,
)
from neurons.model import build_model  # noqa: E402
from neurons.train import evaluate  # noqa: E402
from pipeline.stage import Stage, lm_loss  # noqa: E402
from protocol.hparams import Hparams, load_hparams  # noqa: E402
from protocol.layers import split_layers  # noqa: E402


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def with_training(hp: Hparams, **update) -> Hparams:
    return hp.model_copy(update={"training": hp.training.model_copy(update=update)})


class Peak:
    """Peak allocated bytes above what was allocated on entry (CUDA; None on CPU)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.bytes: int | None = None

    def __enter__(self) -> Peak:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.before


def sdpa_choice(hp: Hparams, device: str) -> dict:
    """The backend torch's dispatcher picks for the preset's q/k/v shapes, in bf16 and fp32, with
    enable_gqa as transformers passes it when kv heads < heads."""
    m = hp.model
    d = m.hidden_size // m.num_heads
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        q = torch.zeros(1, m.num_heads, 256, d, dtype=dtype, device=device, requires_grad=True)
        k = torch.zeros(1, m.num_kv_heads, 256, d, dtype=dtype, device=device, requires_grad=True)
        try:
            choice = torch._fused_sdp_choice(q, k, k, is_causal=True, enable_gqa=m.num_kv_heads < m.num_heads)
            name = torch.nn.attention.SDPBackend(choice).name
        except (TypeError, RuntimeError, ValueError, AttributeError) as e:  # another torch's signature
            name = f"unknown ({type(e).__name__}: {e})"
        out[str(dtype).removeprefix("torch.")] = name
    return out


def miner_case(hp: Hparams, device: str, label: str) -> None:
    t0 = time.perf_counter()
    r = measure_miner_window(hp, device)
    est = estimate(hp, "miner", 1, device)
    emit({"case": "miner", "label": label, "preset": hp.name, "rows": hp.training.batch_size,
          "seq_len": hp.training.seq_len, "inner_steps": hp.training.inner_steps,
          "measured_bytes": r["measured_bytes"] if device.startswith("cuda") else None,
          "reserved_bytes": r.get("reserved_bytes"), "computed_bytes": est.total_bytes,
          "computed_state": est.state_bytes, "computed_activations": est.activation_bytes,
          "seconds": round(time.perf_counter() - t0, 1)})


def validator_case(hp: Hparams, device: str, model: torch.nn.Module) -> None:
    t = hp.training
    batch = torch.randint(0, hp.model.vocab_size, (t.batch_size, t.seq_len), generator=torch.Generator().manual_seed(1))
    with Peak(device) as p:
        evaluate(model, [batch])
    emit({"case": "validator-eval", "preset": hp.name, "rows": t.batch_size, "seq_len": t.seq_len,
          "measured_bytes": p.bytes,
          "computed_bytes": activation_bytes(hp.model, t.batch_size, t.seq_len, device, False, backward=False)})


def stage_forward(stage: Stage, hidden: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
    """``Stage.forward``, or where this transformers' ``create_causal_mask`` takes other arguments
    (5.17: no ``cache``), the same layers with the mask sdpa gets there for a causal batch without
    padding (None: ``is_causal``)."""
    try:
        return stage.forward(hidden, ids)
    except TypeError as e:
        if "create_causal_mask" not in str(e):
            raise
    inner, span = stage.model.model, stage.span
    h = inner.embed_tokens(ids) if span.first else hidden
    position_ids = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
    position_embeddings = inner.rotary_emb(h, position_ids=position_ids)
    for layer in inner.layers[span.start : span.stop]:
        h = layer(h, attention_mask=None, position_embeddings=position_embeddings, position_ids=position_ids)
    return stage.model.lm_head(inner.norm(h)) if span.last else h


def stage_case(hp: Hparams, device: str, model: torch.nn.Module, s: int, n: int) -> None:
    """What ``StageWorker._step`` does without links: every micro-batch's forward (inputs from
    upstream are random, requiring grad), then the backwards in reverse (downstream gradients random)."""
    m, t = hp.model, hp.training
    span = split_layers(m.num_layers, n)[s]
    stage = Stage(model, span)
    g = torch.Generator().manual_seed(2)
    batch = torch.randint(0, m.vocab_size, (t.batch_size, t.seq_len), generator=g).to(device)
    micro = batch.chunk(STAGE_MICRO_BATCHES)
    rows = micro[0].shape[0]
    with Peak(device) as p:
        saved, losses = [], []
        for ids in micro:
            x = None if span.first else torch.randn(rows, t.seq_len, m.hidden_size, device=device, requires_grad=True)
            out = stage_forward(stage, x, ids)
            saved.append((x, out))
            if span.last:
                losses.append(lm_loss(out, ids) / len(micro))
        for i in reversed(range(len(micro))):
            x, out = saved[i]
            if span.last:
                losses[i].backward()
            else:
                out.backward(torch.randn_like(out))
        del saved, losses, x, out
    for q in model.parameters():
        q.grad = None
    emit({"case": "stage", "preset": hp.name, "stage": f"{s}/{n}", "layers": span.label, "rows": rows,
          "micro_batches": len(micro), "seq_len": t.seq_len, "measured_bytes": p.bytes,
          "computed_bytes": stage_activation_bytes(m, rows, t.seq_len, span, STAGE_MICRO_BATCHES, False, device)
          + 4 * stage_param_count(m, span.start, span.stop), "note": "activations and the slice's fp32 gradients"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--presets", default="tiny,150M")
    ap.add_argument("--inner-steps", type=int, default=3, help="inner steps per miner window (the peak is in step 2)")
    ap.add_argument("--shrink", action="store_true", help="CPU dry run: 2 layers, 4 rows of 256 tokens")
    a = ap.parse_args()
    dev = a.device
    emit({"case": "env", "torch": torch.__version__, "cuda": torch.version.cuda,
          "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else None})
    for name in a.presets.split(","):
        hp = load_hparams(name)
        if a.shrink:
            hp = hp.model_copy(update={"model": hp.model.model_copy(update={"num_layers": 2})})
            hp = with_training(hp, batch_size=4, seq_len=256)
        hp = with_training(hp, inner_steps=min(a.inner_steps, hp.training.inner_steps))
        emit({"case": "sdpa", "preset": name, **sdpa_choice(hp, dev)})
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
            _warm_kernels(hp, dev)
            torch.cuda.empty_cache()
            emit({"case": "after-warm-up", "preset": name, "allocated_bytes": torch.cuda.memory_allocated()})
        t = hp.training
        miner_case(hp, dev, "preset")
        miner_case(with_training(hp, batch_size=t.batch_size // 2), dev, "half rows")
        miner_case(with_training(hp, seq_len=t.seq_len // 2), dev, "half sequence")
        model = build_model(hp.model, hp.seed).to(dev)
        validator_case(hp, dev, model)
        if hp.model.num_layers >= 2 and not hp.model.tie_embeddings:
            for s in range(2):
                stage_case(hp, dev, model, s, 2)
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
