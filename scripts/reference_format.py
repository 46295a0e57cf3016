"""The reference SparseLoCo wire format, reimplemented from its description for comparison.

Same chunking and top-k as tessera; values quantized to 4 bins spread over 6 sigma of the kept
values after removing their mean (bin width 1.5 sigma, codes = round to the nearest bin centre,
so the centres sit at mean + {-3, -1.5, 0, +1.5} sigma and the code-2 bin straddles zero), one
byte per code, a per-tensor table of the bins' centroids (mean of their members), and in-chunk
positions as 12-bit fields packed two per three bytes. Each parameter's blob is
[table 4 x f32][codes, 1 byte each][indices, 12 bits each]; the container is the same
safetensors + manifest file as tessera's, so header overhead is counted alike.

The implementation is the straightforward one (tile copy, abs, top-k, gather), as a reader of
the description would write it.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import save

from compression.chunking import ChunkLayout
from compression.sparse import SparseTensor

N_BINS = 4
RANGE_SIGMAS = 6.0


def quantize_reference(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes uint8, centroid table float32[4]) with the reference's 4 bins over 6 sigma."""
    mean = values.mean()
    centred = values - mean
    std = centred.norm() / max(values.numel() - 1, 1) ** 0.5
    step = (RANGE_SIGMAS * std / N_BINS).clamp(min=1e-30)
    codes = (torch.round(centred / step) + N_BINS // 2).clamp(0, N_BINS - 1).to(torch.int64)
    sums = torch.zeros(N_BINS, dtype=torch.float32).index_add_(0, codes, values)
    counts = torch.bincount(codes, minlength=N_BINS).to(torch.float32)
    centres = mean + (torch.arange(N_BINS, dtype=torch.float32) - N_BINS // 2) * step
    table = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return codes.to(torch.uint8), table


def pack12(pos: torch.Tensor) -> torch.Tensor:
    """Pack values < 4096 two per three bytes (zero-padded to an even count)."""
    pos = pos.reshape(-1).to(torch.int32)
    if pos.numel() % 2:
        pos = torch.cat([pos, pos.new_zeros(1)])
    a, b = pos[0::2], pos[1::2]
    out = torch.stack([a >> 4, ((a & 15) << 4) | (b >> 8), b & 255], dim=1)
    return out.to(torch.uint8).reshape(-1)


def unpack12(data: torch.Tensor, count: int) -> torch.Tensor:
    t = data.view(-1, 3).to(torch.int64)
    a = (t[:, 0] << 4) | (t[:, 1] >> 4)
    b = ((t[:, 1] & 15) << 8) | t[:, 2]
    return torch.stack([a, b], dim=1).reshape(-1)[:count]


def encode_reference_tensor(t: torch.Tensor, layout: ChunkLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blob, flat indices, decoded values) for one parameter."""
    chunks = layout.to_chunks(t)
    local = chunks.abs().topk(layout.k, dim=1, sorted=False).indices
    values = torch.gather(chunks, 1, local).reshape(-1)
    codes, table = quantize_reference(values)
    blob = torch.cat([table.view(torch.uint8), codes, pack12(local)])
    return blob, layout.local_to_flat(local), table[codes.to(torch.int64)]


def encode_reference_payload(blobs: dict[str, torch.Tensor], manifest_json: str) -> bytes:
    return save(blobs, metadata={"manifest": manifest_json, "sig": ""})


def decode_reference_payload(data: bytes, layouts: dict[str, ChunkLayout]) -> dict[str, SparseTensor]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__")
    body = memoryview(data)[8 + n :]
    out = {}
    for name, layout in layouts.items():
        begin, end = header[name]["data_offsets"]
        blob = torch.frombuffer(bytearray(body[begin:end]), dtype=torch.uint8)
        kept = layout.n_chunks * layout.k  # the reference keeps k in every chunk (no k + 1 chunks)
        table = blob[:16].clone().view(torch.float32)
        values = table[blob[16 : 16 + kept].to(torch.int64)]
        local = unpack12(blob[16 + kept :], kept).view(layout.n_chunks, layout.k)
        flat, order = torch.sort(layout.local_to_flat(local))
        out[name] = SparseTensor(shape=layout.shape, indices=flat, values=values[order])
    return out
