"""Measured peaks beside neurons.memory's counts, one JSON line per case (docs/hardware.md, "Measured").

Cases: the miner window (``measure_miner_window``) at the preset's batch and at half its rows and
half its sequence (what scales with tokens against what does not); stage 2's fp32 evaluation of
one batch; a GPipe pipeline stage's forward/backward of two micro-batches (bf16 autocast on
CUDA, as ``pipeline.worker`` trains through ``Stage.train_forward``); two ``StageWorker``s linked
over loopback for one inner step (the real path, end to end); plus which sdpa kernel torch picks
for the preset's attention shapes and the bytes the allocator still holds after a warm-up was
freed (cuBLAS workspaces).

    python scripts/device_memory_probe.py --device cuda --presets tiny,150M --inner-steps 3
    python scripts/device_memory_probe.py --device cuda --presets tiny,150M --cases stage,workers
    python scripts/device_memory_probe.py --device cpu --presets tiny --shrink   # a CPU dry run

On CUDA the peaks are ``torch.cuda.max_memory_allocated``: for the miner cases as
``measure_miner_window`` reports it (from after its warm-up, cuBLAS's workspaces included), for the
evaluation and stage cases above what was allocated before (the model's weights). On CPU they are
not measured (null): the CPU run checks the script.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
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
from pipeline.basis import subspace_basis  # noqa: E402
from pipeline.stage import Stage, lm_loss  # noqa: E402
from pipeline.subspace import EMBED_NAME, SubspaceConstraint  # noqa: E402
from pipeline.transport import Hello, accept_upstream, connect_downstream  # noqa: E402
from pipeline.window_basis import boundary_basis, decode_basis, encode_basis  # noqa: E402
from pipeline.wire import frame_bytes, id_bytes  # noqa: E402
from pipeline.worker import StageWorker  # noqa: E402
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


def stage_case(hp: Hparams, device: str, model: torch.nn.Module, s: int, n: int) -> None:
    """What ``StageWorker._step`` does without links: every micro-batch's forward through
    ``Stage.train_forward`` (bf16 autocast on CUDA, as the worker trains; inputs from upstream are
    random, requiring grad), then the backwards in reverse (downstream gradients random)."""
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
            out = stage.train_forward(x, ids)
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
          + 4 * stage_param_count(m, span.start, span.stop), "autocast": device.startswith("cuda"),
          "note": "activations and the slice's fp32 gradients"})


def stage_workers_case(hp: Hparams, device: str, model: torch.nn.Module, adaptive: bool) -> None:
    """Two ``StageWorker``s of one model on this device, linked over loopback TCP, one inner step
    of the preset's batch: the real path (batches read on CPU, frames decoded on CPU, the mask,
    autocast) end to end. ``adaptive``: subspace boundaries as ``neurons.stage_miner`` runs them
    by default, the window's basis computed from θ_w's prefix on the batch and passed through its
    wire form (k = 64, or the preset's ``pipeline.subspace_dim``). Reports the loss, the bytes each
    stage sent (frames: float32 values whatever the precision), any error, and the peak of both
    stages together above the weights."""
    m, t = hp.model, hp.training
    hello = [Hello(run_id="probe", group="g", stage=s, n_stages=2, window=0) for s in range(2)]
    spans = split_layers(m.num_layers, 2)
    batch = torch.randint(0, m.vocab_size, (t.batch_size, t.seq_len), generator=torch.Generator().manual_seed(3))
    embedding = dict(model.named_parameters())[EMBED_NAME].detach().clone()
    results, errors, workers = {}, [], []
    t0 = time.perf_counter()
    with Peak(device) as p:
        try:
            constraint, bases = None, (None, None)
            if adaptive:
                k = hp.pipeline.subspace_dim if hp.pipeline is not None else 64
                constraint = SubspaceConstraint(subspace_basis(hp.seed, m.hidden_size, k), project_weights=False)
                sent = encode_basis(boundary_basis(model, spans[0].stop, batch, embedding, k))
                bases = (decode_basis(sent, m.hidden_size, k), None)
            workers = [StageWorker(Stage(model, span), t, constraint, STAGE_MICRO_BATCHES, lambda _step: t.lr)
                       for span in spans]
            workers[0].begin_window(embedding, None, bases[0])
            workers[1].begin_window(embedding, bases[0], None)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"setup: {exc!r}")
        if not errors:
            server = socket.create_server(("127.0.0.1", 0))

            def downstream() -> None:
                try:
                    link = accept_upstream(server, hello[1], timeout=60)
                    results[1] = workers[1].train_window([batch], 0, up=link, down=None)
                    link.close()
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(f"stage 1: {exc!r}")

            thread = threading.Thread(target=downstream)
            thread.start()
            try:
                link = connect_downstream("127.0.0.1", server.getsockname()[1], hello[0], timeout=60)
                workers[0].train_window([batch], 0, up=None, down=link)
                link.close()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"stage 0: {exc!r}")
            thread.join(timeout=300)
            server.close()
    for q in model.parameters():
        q.grad = None
    width = (hp.pipeline.subspace_dim if hp.pipeline is not None else 64) if adaptive else m.hidden_size
    emit({"case": "stage-workers", "preset": hp.name, "boundary": "adaptive" if adaptive else "dense",
          "rows": t.batch_size, "seq_len": t.seq_len, "loss": results.get(1, [None])[0],
          "sent_bytes": [w.sent_bytes for w in workers],
          "frame_bytes": frame_bytes(t.batch_size // STAGE_MICRO_BATCHES, t.seq_len, width,
                                     id_bytes(m.vocab_size) if adaptive else 0),
          "measured_bytes": p.bytes, "errors": errors, "seconds": round(time.perf_counter() - t0, 1),
          "note": "peak of both stages and both optimizers' first step together"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--presets", default="tiny,150M")
    ap.add_argument("--inner-steps", type=int, default=3, help="inner steps per miner window (the peak is in step 2)")
    ap.add_argument("--shrink", action="store_true", help="CPU dry run: 2 layers, 4 rows of 256 tokens")
    ap.add_argument("--cases", default="miner,validator,stage,workers",
                    help="which cases, comma separated (sdpa and after-warm-up always run)")
    a = ap.parse_args()
    cases = set(a.cases.split(","))
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
        if "miner" in cases:
            miner_case(hp, dev, "preset")
            miner_case(with_training(hp, batch_size=t.batch_size // 2), dev, "half rows")
            miner_case(with_training(hp, seq_len=t.seq_len // 2), dev, "half sequence")
        model = build_model(hp.model, hp.seed).to(dev)
        if "validator" in cases:
            validator_case(hp, dev, model)
        if hp.model.num_layers >= 2 and not hp.model.tie_embeddings:
            if "stage" in cases:
                for s in range(2):
                    stage_case(hp, dev, model, s, 2)
            if "workers" in cases:
                for adaptive in (False, True):
                    stage_workers_case(hp, dev, model, adaptive)
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
