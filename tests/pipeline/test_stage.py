"""pipeline.stage across transformers versions and precisions."""

import torch

import pipeline.stage
from pipeline.codec import DenseCodec
from pipeline.stage import Stage, lm_loss, mask_cache_arg, split_layers
from pipeline.wire import FrameKind, encode_frame, frame_bytes


def test_the_mask_cache_argument_is_read_from_the_signature():
    """transformers 5.17 names it past_key_values, 5.24 cache (pyproject allows both); the stage
    passes whichever the installed create_causal_mask takes."""

    def mask_517(config, inputs_embeds, attention_mask, past_key_values, position_ids=None):
        return None

    def mask_524(config, inputs_embeds, attention_mask, cache, position_ids=None):
        return None

    assert mask_cache_arg(mask_517) == "past_key_values"
    assert mask_cache_arg(mask_524) == "cache"
    assert mask_cache_arg(lambda config, inputs_embeds: None) is None
    assert pipeline.stage._MASK_CACHE_ARG in ("cache", "past_key_values")


def test_a_one_stage_split_is_the_unsplit_model(small_model, batch):
    stage = Stage(small_model, split_layers(2, 1)[0])
    assert torch.equal(stage.forward(None, batch), small_model(input_ids=batch, use_cache=False).logits)


def test_train_forward_on_cpu_is_forward(small_model, batch):
    """No autocast on CPU: the training forward is the plain one, bit for bit."""
    for span in split_layers(2, 2):
        stage = Stage(small_model, span)
        hidden = None if span.first else torch.randn(*batch.shape, 64, generator=torch.Generator().manual_seed(1))
        assert torch.equal(stage.train_forward(hidden, batch), stage.forward(hidden, batch))


def test_under_bf16_autocast_the_boundary_stays_float32(small_model, batch, monkeypatch):
    """Under bf16 autocast (CPU's standing in for CUDA's) the hidden state a stage sends and the
    gradient it sends back are float32 (the residual stream is: the embedding is float32 and the
    bf16 blocks add into it), so frames keep their size; only the last stage's logits are bf16."""
    monkeypatch.setattr(pipeline.stage, "training_autocast", lambda _d: torch.autocast("cpu", dtype=torch.bfloat16))
    first, last = (Stage(small_model, span) for span in split_layers(2, 2))
    out = first.train_forward(None, batch)
    assert out.dtype == torch.float32
    x = out.detach().requires_grad_(True)
    logits = last.train_forward(x, batch)
    assert logits.dtype == torch.bfloat16
    loss = lm_loss(logits, batch)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.float32
    codec = DenseCodec(64)
    for kind, msg in ((FrameKind.ACTIVATION, codec.encode_activation(out, batch)),
                      (FrameKind.GRADIENT, codec.encode_gradient(x.grad))):
        assert len(encode_frame(kind, msg, 256)) == frame_bytes(*batch.shape, 64, 0)
