"""Payloads of shapes whose sides already divide into whole tiles are what they were before the
padding rule (compression.chunking): same layouts, same bytes.

The digest below was computed from the code at a1a4743, before padding existed."""

import hashlib

import torch

from compression import CodecParams, ErrorFeedbackCompressor, PayloadManifest, encode_payload

# neurons.model.param_shapes of the tiny preset (hparams/tiny.json), in its order.
TINY = {"model.embed_tokens.weight": (2048, 128), "lm_head.weight": (2048, 128), "model.norm.weight": (128,)}
for _layer in range(2):
    _p = f"model.layers.{_layer}."
    TINY |= {_p + f"self_attn.{x}_proj.weight": (128, 128) for x in "qkvo"}
    TINY |= {_p + "mlp.gate_proj.weight": (384, 128), _p + "mlp.up_proj.weight": (384, 128)}
    TINY |= {_p + "mlp.down_proj.weight": (128, 384)}
    TINY |= {_p + "input_layernorm.weight": (128,), _p + "post_attention_layernorm.weight": (128,)}

TINY_DIGEST = "6924f3dfdd60712e87eb2ead51bc74283062117e07d4807be7bbbe39477f16f7"

# The distinct shapes of the 150M preset and their layouts at a1a4743:
# (tile_rows, tile_cols, n_chunks, n_kept).
PRESET_150M = {
    (256, 768): (64, 64, 48, 3072),
    (768,): (1, 768, 1, 12),
    (768, 768): (64, 64, 144, 9216),
    (768, 3072): (64, 64, 576, 36864),
    (3072, 768): (64, 64, 576, 36864),
    (32768, 768): (64, 64, 6144, 393216),
}


def test_tiny_preset_payloads_are_byte_identical_to_before_padding():
    assert len(TINY) == 21
    ef = ErrorFeedbackCompressor(TINY)
    g = torch.Generator().manual_seed(7)
    h = hashlib.sha256()
    for w in range(2):  # two windows, so the error-feedback residual is part of what is compared
        msg = ef.compress({n: torch.randn(s, generator=g) * 1e-3 for n, s in sorted(TINY.items())})
        man = PayloadManifest.for_message(msg, run_id="r", window=w, uid=1, hotkey="hk", global_step=w)
        h.update(encode_payload(msg, man))
    assert h.hexdigest() == TINY_DIGEST


def test_150m_preset_layouts_are_unchanged():
    for shape, want in PRESET_150M.items():
        lay = CodecParams().layout(shape)
        assert (lay.tile_rows, lay.tile_cols, lay.n_chunks, lay.n_kept) == want, shape
