"""The payload bound: never below what the encoder writes, close to it on ordinary data, and the
start-up check that compares it with the network's cap."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compression import CodecParams, ErrorFeedbackCompressor, PayloadManifest, encode_payload
from compression.budget import PayloadCapError, check_payload_cap, max_blob_bytes, max_payload_bytes
from compression.encoder import MessageEncoder

ODD = {"a.square": (199, 199), "b.tall": (2048, 199), "c.row": (1, 7), "d.bias": (4099,)}


def _payload(shapes):
    g = torch.Generator().manual_seed(0)
    msg = ErrorFeedbackCompressor(shapes).compress({n: torch.randn(s, generator=g) for n, s in shapes.items()})
    # Identity fields as a real node fills them (run id, ss58 hotkey, data digest, signature).
    manifest = PayloadManifest.for_message(
        msg, run_id="tiny-0123456789ab", window=12345, uid=17, hotkey="5" + "F" * 47, global_step=98765,
        data_digest="d" * 64, base_fingerprint="f" * 64,
    )
    return msg, encode_payload(msg, manifest, sign=lambda digest: bytes(64))


def test_odd_shapes_keep_the_configured_density_and_the_bound_is_close():
    msg, data = _payload(ODD)
    params = CodecParams()
    bound = max_payload_bytes(ODD, params)
    numel = {n: math.prod(s) for n, s in ODD.items()}
    kept = {n: params.layout(s).n_kept for n, s in ODD.items()}
    for name in ("a.square", "b.tall", "d.bias"):  # large enough for 1 % to be a whole value
        assert abs(kept[name] / numel[name] * 64 - 1) <= 0.01, name
    assert kept["c.row"] == 1  # 7 values: the floor of one kept value
    blob_bytes = sum(b.numel() for b in msg.blobs.values())
    assert blob_bytes <= bound.blob_bytes <= 1.10 * blob_bytes
    framing = len(data) - blob_bytes
    assert framing <= bound.framing_bytes <= framing + 1024  # bounded with the longest manifest fields
    assert len(data) <= bound.total


def test_before_padding_these_shapes_sent_every_value():
    # What the divisor rule did to 199 x 199 (1 x 1 tiles) is now 1/64 of it.
    assert CodecParams().layout((199, 199)).n_kept == round(199 * 199 / 64)


_LAYOUT_CASES = [
    (64, 64, (199, 199)), (64, 64, (2048, 199)), (64, 64, (4099,)), (64, 64, (1, 7)), (64, 64, (128, 128)),
    (8, 16, (67, 45)), (8, 64, (19, 13)), (64, 1, (130, 64)), (4, 5, (37,)), (16, 200, (48, 17)),
]


def _adversarial(lay, pattern: str, stride: int, seed: int) -> torch.Tensor:
    """A tensor of ``lay``'s shape whose per-chunk magnitudes follow ``pattern`` in tile order."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(lay.chunk_elems).expand(lay.n_chunks, -1)
    noise = torch.rand(lay.n_chunks, lay.chunk_elems, generator=g)
    score = {
        "gauss": torch.randn(lay.n_chunks, lay.chunk_elems, generator=g).abs(),
        "rising": pos + noise * 0.5,  # the last slots win: one long gap per chunk
        "falling": lay.chunk_elems - pos + noise * 0.5,  # the first slots win: gaps of zero
        "spaced": (pos % stride == stride - 1) * 2.0 + noise,  # evenly spaced: every gap stride - 1
    }[pattern] + 0.01
    _, _, nrows, ncols = lay.chunk_extent()
    real = (pos // lay.tile_cols < nrows.unsqueeze(1)) & (pos % lay.tile_cols < ncols.unsqueeze(1))
    out = torch.zeros(lay.numel)
    out[lay.local_to_flat(pos).view(lay.n_chunks, -1)[real]] = score[real]
    return out * torch.where(torch.rand(lay.numel, generator=g) < 0.5, -1.0, 1.0)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(_LAYOUT_CASES), st.sampled_from(["gauss", "rising", "falling", "spaced"]),
       st.integers(1, 300), st.integers(0, 100))
def test_no_data_makes_a_blob_longer_than_its_bound(case, pattern, stride, seed):
    cs, tk, shape = case
    lay = CodecParams(chunk_size=cs, topk_per_chunk=tk).layout(shape)
    blob = MessageEncoder({"w": lay}).encode(_adversarial(lay, pattern, stride, seed)).blobs["w"]
    assert blob.numel() <= max_blob_bytes(lay)


def test_the_start_up_check_names_the_preset_and_the_numbers():
    params = CodecParams()
    bound = check_payload_cap(ODD, params, 1 << 20, "odd")
    assert bound == max_payload_bytes(ODD, params)
    with pytest.raises(PayloadCapError, match=rf"hparams 'odd': .* can reach {bound.total} bytes, over codec.max_payload_bytes 5000; raise"):
        check_payload_cap(ODD, params, 5000, "odd")
    denser = CodecParams(topk_per_chunk=4096)  # every value kept
    with pytest.raises(PayloadCapError, match="at topk_per_chunk 4096"):
        check_payload_cap(ODD, denser, bound.total, "odd")
