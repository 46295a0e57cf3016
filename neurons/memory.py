"""Memory per device for a preset, a role and a world size, checked before a node builds its model.

A node that does not fit dies in the middle of a window (an OOM in the backward, or the kernel's
OOM killer), after it registered and committed. The start-up check computes what one device will
hold and refuses with one line that names the world size or the memory needed.

What is counted (bytes per device; P parameters, computed from the preset's shapes):

- miner, replicated data parallel (what ``torchrun --nproc_per_node N`` runs: every rank holds
  the whole model): fp32 θ 4P, fp32 gradients 4P, AdamW moments 8P, the window's θ_w copy 4P,
  the error-feedback buffer 4P → 24P; plus the activations kept for the backward of one
  micro-batch of ``batch_size / M`` rows (M micro-batches, default N); plus the gradient gather buffer of
  ``neurons.distributed.ordered_sum_`` ((N + 2) × 2^21 values: the gathered parts, this rank's
  slice, the sum; only when N > 1).
- validator (stage 2 is forward only): fp32 θ 4P, the reference aggregate 4P, the saved θ while
  a dense update is applied 4P, the outer step's dense aggregate 4P → 16P; plus one fp32
  evaluation batch's peak (``batch_size`` rows: stage 2 evaluates whole batches): its logits and
  log-probabilities (8 bytes per token and vocabulary entry) or one layer's values, the larger.
- on CUDA, 64 MiB of cuBLAS workspaces that stay allocated (``CUDA_WORKSPACE_BYTES``).
- activations kept for the backward, per token and layer, in bytes (what autograd saves, counted
  with ``torch.autograd.graph.saved_tensors_hooks`` and the profiler's memory timeline on narrow
  copies of the 150M preset; docs/hardware.md, "What the count holds"). Under bf16 autocast (the
  miner's training on CUDA): ``30h + 4kv + 8i + 4·heads + 8`` — each RMSNorm keeps its fp32 input,
  its fp32 normalised value and 1/rms (8h + 4); autocast casts a norm's output to bf16 once per
  projection that reads it (q, k, v; gate, up: 10h); attention keeps q, k, v and its output in bf16
  and a fp32 log-sum-exp per head (4h + 4kv + 4·heads; k and v at kv width: transformers passes
  ``enable_gqa`` to sdpa, no repeated heads); the SwiGLU keeps gate, silu, up and their product
  (8i). In fp32 (no autocast: CPU): ``32h + 8kv + 16i + 4·heads + 8`` (the norms'
  fp32 outputs instead of the bf16 casts). On CUDA in fp32 with fewer kv heads than heads, sdpa
  runs its MATH kernel, which keeps the s×s probabilities per head (4·heads·s), q, the repeated k
  and v and a copy of the output: ``40h + 16i + 4·heads·s + 8``. The residual stream is fp32
  either way (the embedding is), so a checkpointed layer keeps 4h.
- logits: the peak is the log-softmax's backward, 12 bytes per token and vocabulary entry (the
  fp32 log-probabilities, the gradient into them and the gradient out); the final norm and the LM
  head's input add 10h (bf16) or 12h (fp32) per token. Under autocast the LM head and every
  layer's projections also keep bf16 copies of their weights (2 bytes per matrix entry).
- a pipeline stage (GPipe, ``pipeline.worker``; ``Stage.train_forward`` autocasts as the miner
  does: bf16 on CUDA, fp32 on CPU) keeps every micro-batch's activations until the backwards,
  the last stage also each micro-batch's logits and fp32 log-probabilities (6 bytes per token and
  vocabulary entry in bf16, 8 in fp32), under autocast each micro-batch's bf16 copies of the
  slice's matrices, plus once the backward's 8 (or, in fp32 on CUDA through the MATH kernel, a
  layer's attention transients, 12 bytes per head and position).
- ``sharded`` (FSDP2 ``fully_shard``; *not built*, for planning): the 24P of the miner divided by
  N, plus two layers gathered in full, plus the same activations.

These are counts from shapes (docs/hardware.md marks them "computed"); they ignore the allocator's
fragmentation, hence ``HEADROOM`` (measured on CPU and on one H200). The 24P keeps the gradients
although a one-micro-batch step has none yet at its peak (the first op of the backward): with
more micro-batches they exist, and at 150M they are 0.6 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from neurons.config import ConfigError
from protocol.hparams import Hparams, ModelConfig
from protocol.layers import split_layers

GIB = 1024**3
# What the allocator holds beyond the live tensors counted here. CPU: measured, the tiny miner's
# window grows the process's peak RSS by 1.6-2.0x the computed bytes (glibc keeps freed blocks;
# `tessera memory --hparams tiny --device cpu --measure`, 5 runs). CUDA: measured on one H200
# (torch 2.11, scripts/device_memory_probe.py): the caching allocator's reserved peak is 1.03-1.05x
# the allocated peak at 150M and 1.10-1.23x at tiny, and the count is within 1 % of the allocated peak
# (150M window +0.4 %, tiny -0.3 %). 1.2 keeps the margin for what one machine did not show: other
# shapes' fragmentation, and other torch/transformers versions choosing other attention kernels.
HEADROOM = {"cpu": 2.5, "cuda": 1.20}
# What the caching allocator still holds after a warm-up forward/backward was freed and the cache
# emptied, on CUDA: 67,108,864 bytes on an H200 with torch 2.11 (scripts/device_memory_probe.py,
# "after-warm-up"), the size of two 32 MiB cuBLAS workspaces (the forward's thread and autograd's).
CUDA_WORKSPACE_BYTES = 64 << 20
GATHER_BUCKET = 1 << 21  # neurons.distributed.GATHER_BUCKET (kept equal by a test)
MINER_STATE_BYTES = 24  # per parameter, replicated miner
VALIDATOR_STATE_BYTES = 16  # per parameter
LAYOUTS = ("replicated", "sharded")
STAGE_MICRO_BATCHES = 2  # neurons.stage_miner.MICRO_BATCHES (kept equal by a test)


class MemoryBudgetError(ConfigError):
    """The node would not fit its device; the message names the world size or memory it needs
    (a start-up error: ``neurons.cli`` prints it as one line)."""


@dataclass(frozen=True)
class MemoryEstimate:
    preset: str
    role: str
    world_size: int
    layout: str
    device: str
    checkpointing: bool
    params: int
    state_bytes: int  # weights, gradients, optimizer, window buffers
    activation_bytes: int  # kept for the backward (miner) or one evaluation batch (validator)
    buffer_bytes: int  # collectives' scratch, CUDA's cuBLAS workspaces

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes + self.buffer_bytes

    @property
    def headroom(self) -> float:
        return HEADROOM["cuda" if self.device.startswith("cuda") else "cpu"]

    @property
    def needed_bytes(self) -> int:
        """What the check asks the device to have free: the total times ``HEADROOM``."""
        return int(self.total_bytes * self.headroom)


def _kv_width(m: ModelConfig) -> int:
    return m.num_kv_heads * (m.hidden_size // m.num_heads)


def _layer_params(m: ModelConfig) -> int:
    kv, h, i = _kv_width(m), m.hidden_size, m.intermediate_size
    return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h


def param_count(m: ModelConfig) -> int:
    """Parameters of the preset's Llama (no biases), without building it."""
    embeddings = m.vocab_size * m.hidden_size * (1 if m.tie_embeddings else 2)
    return embeddings + m.num_layers * _layer_params(m) + m.hidden_size


def stage_param_count(m: ModelConfig, start: int, stop: int) -> int:
    """Parameters a pipeline stage trains: layers [start, stop), plus the embedding on the first
    stage and the final norm and LM head on the last (``protocol.layers``)."""
    first, last = start == 0, stop == m.num_layers
    table = m.vocab_size * m.hidden_size
    return (stop - start) * _layer_params(m) + (table if first else 0) + (table + m.hidden_size if last else 0)


def math_attention(m: ModelConfig, device: str, autocast: bool) -> bool:
    """Whether sdpa falls back to its composite MATH kernel: CUDA in fp32 with fewer kv heads than
    heads (no fused kernel takes fp32 with ``enable_gqa``; torch 2.11 on an H200 picks MATH, where
    bf16 gets cuDNN and fp32 without GQA the memory-efficient kernel). CPU's flash kernel takes both."""
    return device.startswith("cuda") and not autocast and m.num_kv_heads < m.num_heads


def layer_bytes(m: ModelConfig, autocast: bool, seq_len: int = 0, math: bool = False) -> int:
    """Bytes one decoder layer keeps for the backward, per token (see the module's notes); ``math``:
    attention by the MATH kernel (fp32 only), which keeps the s×s probabilities per head, q, the
    repeated k and v and a copy of its output instead of q, k, v, the output and the log-sum-exp."""
    h, i, kv, heads = m.hidden_size, m.intermediate_size, _kv_width(m), m.num_heads
    norms = 2 * (8 * h + 4)  # two RMSNorms: fp32 input and normalised value, 1/rms
    if autocast:  # bf16 casts of the norms' outputs (q, k, v, gate, up); q, k, v, output, fp32 lse; the SwiGLU
        return norms + 5 * 2 * h + 2 * (2 * h + 2 * kv) + 4 * heads + 4 * 2 * i
    attention = 4 * (4 * h + heads * seq_len) if math else 4 * (2 * h + 2 * kv + heads)
    return norms + 2 * 4 * h + attention + 4 * 4 * i  # the norms' fp32 outputs, attention, the SwiGLU


LOGIT_BYTES = 12  # per token and vocabulary entry at the log-softmax's backward (fp32 log-probs, two gradients)


def _head_bytes(m: ModelConfig, autocast: bool) -> int:
    """Per token: the final norm (8h + 4) and the LM head's input (bf16 cast or fp32 norm output)."""
    return 8 * m.hidden_size + 4 + (2 if autocast else 4) * m.hidden_size


def _matrix_params(m: ModelConfig, layers: int, head: bool) -> int:
    """Matrix entries of ``layers`` layers' projections and, with ``head``, the LM head: what bf16
    autocast keeps a cast copy of for the backward (the embedding lookup is not cast)."""
    kv, h, i = _kv_width(m), m.hidden_size, m.intermediate_size
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i) + (m.vocab_size * h if head else 0)


def activation_bytes(
    m: ModelConfig, rows: int, seq_len: int, device: str, checkpointing: bool, backward: bool,
    layers: int | None = None, with_logits: bool = True, autocast: bool | None = None,
) -> int:
    """Bytes held at the peak of one forward of ``rows`` × ``seq_len`` through ``layers`` layers
    (default all), with the logits unless ``with_logits`` is False: with ``backward``, what is kept
    for the backward plus the log-softmax's backward; without, forward only (stage 2's evaluation):
    one layer's values (counted as a layer's saved bytes, an upper bound) or the fp32 logits and
    their log-probabilities with the final hidden state, whichever is more. ``autocast`` (default:
    training on CUDA, as ``neurons.train`` does) counts bf16 autocast."""
    n_layers = m.num_layers if layers is None else layers
    bf16 = (device.startswith("cuda") and backward) if autocast is None else autocast
    math = math_attention(m, device, bf16)
    tokens = rows * seq_len
    layer = layer_bytes(m, bf16, seq_len, math)
    if not backward:  # forward only: one layer's values at a time (MATH: the scores beside the
        # probabilities), or the logits and their log-probabilities with the last hidden state
        layer += 4 * m.num_heads * seq_len if math else 0
        return tokens * max(layer, 8 * (m.hidden_size + m.vocab_size) if with_logits else 0)
    head = _head_bytes(m, bf16) if with_logits else 0
    logits = LOGIT_BYTES * m.vocab_size if with_logits else 0
    kept = n_layers * 4 * m.hidden_size + layer if checkpointing else n_layers * layer  # fp32 residual inputs
    casts = 2 * _matrix_params(m, n_layers, with_logits) if bf16 else 0
    return tokens * (kept + head + logits) + casts


def stage_activation_bytes(
    m: ModelConfig, rows: int, seq_len: int, span, micro_batches: int, checkpointing: bool, device: str,
    autocast: bool | None = None,
) -> int:
    """A pipeline stage's peak (``pipeline.worker.StageWorker._step``, GPipe; ``autocast``, default
    training on CUDA, as ``Stage.train_forward`` does: bf16 autocast, else fp32). Every micro-batch
    of ``rows`` keeps its layers' activations and its output until the backwards: the last stage's
    logits (2 bytes per token and vocabulary entry in bf16, 4 in fp32) and their fp32
    log-probabilities (4), the others' fp32 hidden state sent on (4h); under autocast also its own
    bf16 copies of the slice's weight matrices (each micro-batch's forward is its own autocast
    region). The backwards add once the log-softmax's two fp32 gradients (8 per vocabulary entry)
    or the received gradient and the input's (8h), or, through the MATH kernel (fp32 on CUDA with
    fewer kv heads than heads), a layer's attention transients (12 bytes per head and position),
    whichever is more."""
    bf16 = device.startswith("cuda") if autocast is None else autocast
    tokens = rows * seq_len
    n = span.stop - span.start
    h = m.hidden_size
    math = math_attention(m, device, bf16)
    layer = layer_bytes(m, bf16, seq_len, math)
    kept = n * 4 * h + layer if checkpointing else n * layer
    if span.last:
        held, once = _head_bytes(m, bf16) + ((2 if bf16 else 4) + 4) * m.vocab_size, 8 * m.vocab_size
    else:
        held, once = 4 * h, 8 * h
    if math:  # a layer's attention through the MATH kernel: the gradients of its probabilities and
        # scores, or in the forward the scores, softmax and mask beside the probabilities; measured
        # 2.4 probability-sized tensors on an H200 (150M stage 0 of 2, fp32), counted as 3
        once = max(once, 3 * 4 * m.num_heads * seq_len)
    casts = micro_batches * 2 * _matrix_params(m, n, span.last) if bf16 else 0
    return tokens * (micro_batches * (kept + held) + once) + casts


def estimate(
    hp: Hparams, role: str, world_size: int = 1, device: str = "cuda", checkpointing: bool = False,
    layout: str = "replicated", micro_batches: int | None = None, stage: tuple[int, int] | None = None,
) -> MemoryEstimate:
    """Bytes one device holds for ``role`` at ``world_size`` ranks, each batch cut into
    ``micro_batches`` (default: one per rank) (see the module's notes). ``stage`` (S, N): a miner
    that is stage S of a pipeline group of N holds θ's weights and trains only its slice; GPipe
    keeps every micro-batch's activations of its layers until the backward."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    m, t = hp.model, hp.training
    p = param_count(m)
    workspace = CUDA_WORKSPACE_BYTES if device.startswith("cuda") else 0
    if stage is not None:  # a pipeline stage: θ's weights, plus a miner's training state for its slice
        span = split_layers(m.num_layers, stage[1])[stage[0]]
        rows = max(1, t.batch_size // STAGE_MICRO_BATCHES)
        act = stage_activation_bytes(m, rows, t.seq_len, span, STAGE_MICRO_BATCHES, checkpointing, device)
        state = 4 * p + (MINER_STATE_BYTES - 4) * stage_param_count(m, span.start, span.stop)
        return MemoryEstimate(hp.name, "stage", world_size, layout, device, checkpointing, p, state, act, workspace)
    if role == "validator":
        state = VALIDATOR_STATE_BYTES * p
        act = activation_bytes(m, t.batch_size, t.seq_len, device, checkpointing, backward=False)
        return MemoryEstimate(hp.name, role, world_size, layout, device, checkpointing, p, state, act, workspace)
    rows = max(1, t.batch_size // (micro_batches or world_size))
    act = activation_bytes(m, rows, t.seq_len, device, checkpointing, backward=True)
    if layout == "sharded":
        layer = 2 * m.hidden_size * m.hidden_size + 3 * m.hidden_size * m.intermediate_size
        state = MINER_STATE_BYTES * p // world_size + 2 * 4 * max(layer, m.vocab_size * m.hidden_size)
    else:
        state = MINER_STATE_BYTES * p
    buffers = workspace + (4 * GATHER_BUCKET * (world_size + 2) if world_size > 1 else 0)
    return MemoryEstimate(hp.name, role, world_size, layout, device, checkpointing, p, state, act, buffers)


def device_memory(device: str, local_world_size: int = 1) -> int:
    """Bytes this rank may use: a GPU's free memory, or on CPU the host's available memory
    shared by the ranks on this host."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return available_ram() // max(1, local_world_size)


def available_ram(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), in bytes."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import psutil  # not Linux, or an unreadable meminfo

    return int(psutil.virtual_memory().available)


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def fitting_micro_batches(
    hp: Hparams, world_size: int, device: str, checkpointing: bool, available: int
) -> int | None:
    """The fewest micro-batches (a multiple of the world size dividing batch_size: the rule in
    ``neurons.distributed``) with which a miner fits, or None."""
    b = hp.training.batch_size
    for m in range(world_size, b + 1, world_size):
        if b % m == 0 and estimate(hp, "miner", world_size, device, checkpointing,
                                   micro_batches=m).needed_bytes <= available:
            return m
    return None


def check_memory(
    hp: Hparams, role: str, world_size: int, device: str, available: int, checkpointing: bool = False,
    micro_batches: int | None = None, stage: tuple[int, int] | None = None,
) -> MemoryEstimate:
    """The estimate if it fits in ``available`` bytes; else ``MemoryBudgetError`` in one line
    naming the micro-batches / world size that would fit, or the memory no setting goes under."""
    m = micro_batches or world_size
    est = estimate(hp, role, world_size, device, checkpointing, micro_batches=m, stage=stage)
    if est.needed_bytes <= available:
        return est
    if stage is not None:
        raise MemoryBudgetError(
            f"{hp.name} stage {stage[0]}/{stage[1]} needs {gib(est.needed_bytes)} (θ's weights and its slice's "
            f"training state {gib(est.state_bytes)}, activations {gib(est.activation_bytes)}, x{est.headroom:g} "
            f"allocator headroom) but {device} has {gib(available)} free: split the model into more stages"
        )
    head = (f"{hp.name} {role} needs {gib(est.needed_bytes)} per device at world size {world_size}"
            f"{f' with {m} micro-batches' if role == 'miner' else ''} (state {gib(est.state_bytes)}, "
            f"activations {gib(est.activation_bytes)}, x{est.headroom:g} allocator headroom) "
            f"but {device} has {gib(available)} free")
    fits = fitting_micro_batches(hp, world_size, device, checkpointing, available) if role == "miner" else None
    if fits is not None and fits > m:
        raise MemoryBudgetError(
            f"{head}: cut each batch into {fits} micro-batches, with torchrun --nproc_per_node {fits} "
            f"(world size {fits}) or --micro-batches {fits} on world size {world_size}"
        )
    floor = estimate(hp, role, world_size, device, checkpointing, micro_batches=hp.training.batch_size)
    raise MemoryBudgetError(
        f"{head}; no world size or micro-batch count brings it under {gib(floor.needed_bytes)} (every rank "
        f"holds the whole model): use devices with at least that much memory (sharded training is not built yet: "
        f"docs/hardware.md)"
    )


def table(
    presets: list[str], roles: list[str], worlds: list[int], device: str, checkpointing: bool,
    micro_batches: int | None = None,
) -> list[dict]:
    from protocol.hparams import load_hparams

    rows = []
    for name in presets:
        hp = load_hparams(name)
        for role in roles:
            for n in worlds:
                layouts = LAYOUTS if role == "miner" else ("replicated",)
                for layout in layouts:
                    est = estimate(hp, role, n, device, checkpointing, layout, micro_batches=micro_batches)
                    row = asdict(est)
                    row.update(needed_bytes=est.needed_bytes, total_gib=round(est.total_bytes / GIB, 2), needed_gib=round(est.needed_bytes / GIB, 2))
                    rows.append(row)
    return rows


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmRSS in /proc/self/status")


def _warm_kernels(hp: Hparams, device: str) -> None:
    """One forward/backward of a one-layer, narrow copy of the preset, then freed."""
    import torch

    from neurons.model import build_model

    small = hp.model.model_copy(update={"num_layers": 1, "hidden_size": 64, "intermediate_size": 128,
                                        "num_heads": 2, "num_kv_heads": 2})
    model = build_model(small, 0).to(device)
    batch = torch.zeros(1, 8, dtype=torch.long, device=device)
    model(input_ids=batch, labels=batch).loss.backward()
    del model


def measure_miner_window(hp: Hparams, device: str) -> dict:
    """Run one miner window (θ_w copy, H inner steps, Δ, error feedback + compression) on
    synthetic tokens and report the memory it took: on CPU the growth of the process's peak
    RSS over its RSS before the model existed (Linux), on CUDA ``max_memory_allocated`` (the live
    tensors), plus ``reserved_bytes`` (``max_memory_reserved``: what the caching allocator took
    from the device, the footprint the headroom is for) and ``outside_allocator_bytes`` (the
    device memory in use at the end beyond what the allocator holds: the CUDA context and
    libraries' own memory, which a start-up check's free-memory reading mostly excludes already)."""
    import resource

    import torch

    from compression import ErrorFeedbackCompressor
    from neurons.model import build_model
    from neurons.train import InnerTrainer

    cuda = device.startswith("cuda")
    _warm_kernels(hp, device)  # kernels' code and caches; cuBLAS's workspaces stay allocated (counted)
    baseline = 0 if cuda else _rss_bytes()
    if cuda:
        torch.cuda.empty_cache()  # the warm-up's cached blocks are not the window's
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(hp.model, hp.seed).to(device)
    trainer = InnerTrainer(model, hp.training, device)
    c = hp.codec
    compressor = ErrorFeedbackCompressor({n: tuple(p.shape) for n, p in model.named_parameters()},
                                         chunk_size=c.chunk_size, topk_per_chunk=c.topk_per_chunk, beta=c.ef_beta,
                                         device=device)
    t = hp.training
    g = torch.Generator().manual_seed(0)
    batches = list(torch.randint(0, hp.model.vocab_size, (t.inner_steps, t.batch_size, t.seq_len), generator=g))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train_window(batches)
    with torch.no_grad():
        delta = {n: base[n] - p for n, p in model.named_parameters()}
    compressor.compress(delta)
    extra = {}
    if cuda:
        torch.cuda.synchronize(device)
        peak = int(torch.cuda.max_memory_allocated(device))
        free, total = torch.cuda.mem_get_info(torch.device(device))
        extra = {"reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
                 "outside_allocator_bytes": int(total - free - torch.cuda.memory_reserved(device))}
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    est = estimate(hp, "miner", 1, device)
    return {"preset": hp.name, "device": device, "measured_bytes": peak, **extra, "computed_bytes": est.total_bytes,
            "how": "cuda max_memory_allocated" if cuda else "peak RSS growth over the RSS before the model"}


def run(args: argparse.Namespace) -> int:
    if args.measure:
        from protocol.hparams import load_hparams

        result = measure_miner_window(load_hparams(args.hparams), args.device)
        print(json.dumps(result) if args.json else
              f"{result['preset']} miner window on {result['device']}: measured {gib(result['measured_bytes'])} "
              f"({result['how']}), computed {gib(result['computed_bytes'])}")
        return 0
    presets = args.hparams.split(",")
    worlds = [int(x) for x in args.world_size.split(",")]
    if args.micro_batches and any(args.micro_batches % n for n in worlds):
        print(f"tessera memory: --micro-batches {args.micro_batches} must be a multiple of every --world-size", file=sys.stderr)
        return 2
    rows = table(presets, args.role.split(","), worlds, args.device, args.activation_checkpointing, args.micro_batches)
    if args.json:
        print(json.dumps({"computed": True, "headroom": HEADROOM, "rows": rows}, indent=1))
        return 0
    print(f"{'preset':>6} {'role':>9} {'N':>3} {'layout':>10} {'params':>14} {'state':>11} {'activations':>11} "
          f"{'needed':>11}")
    for r in rows:
        print(f"{r['preset']:>6} {r['role']:>9} {r['world_size']:>3} {r['layout']:>10} {r['params']:>14,} "
              f"{gib(r['state_bytes']):>11} {gib(r['activation_bytes']):>11} {gib(r['needed_bytes']):>11}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Computed memory per device (neurons.memory): preset x role x world size."
    parser.add_argument("--hparams", default="tiny,150M,1B,8B,70B", help="preset name(s), comma separated")
    parser.add_argument("--role", default="miner,validator", help="miner, validator or both")
    parser.add_argument("--world-size", default="1,2,8", help="world size(s), comma separated")
    parser.add_argument("--device", default="cuda", help="cuda (bf16 autocast) or cpu (fp32)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--micro-batches", type=int, default=None,
                        help="micro-batches per inner batch (default: the world size; a multiple of it)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure", action="store_true",
                        help="run one miner window of the (single) --hparams preset on --device and print what it took")
    parser.set_defaults(func=run)


def local_world_size(env=None) -> int:
    env = os.environ if env is None else env
    try:
        return max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m neurons.memory")
    configure(p)
    a = p.parse_args()
    sys.exit(a.func(a))
