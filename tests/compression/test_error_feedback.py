import pytest
import torch
from safetensors.torch import load, save

from compression.codec import decode_message
from compression.error_feedback import ErrorFeedbackCompressor

SHAPES = {"w": (64, 192), "b": (96,)}


def _deltas(seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}


# Prime and odd sides: chunked with padded tiles (compression.chunking); the residual stays one
# value per real coordinate.
ODD = {"w": (199, 199), "t": (2048, 199), "r": (1, 7), "b": (4099,)}


@pytest.mark.parametrize("shapes", [SHAPES, ODD])
def test_error_feedback_update_rule(shapes):
    comp = ErrorFeedbackCompressor(shapes, beta=0.9)
    g = torch.Generator().manual_seed(1)
    d1, d2 = ({n: torch.randn(s, generator=g) for n, s in shapes.items()} for _ in range(2))
    comp.compress(d1)
    e1 = {n: e.clone() for n, e in comp.error.items()}
    msg = comp.compress(d2)
    update = decode_message(msg)
    for name, shape in shapes.items():
        assert comp.error[name].shape == shape
        expected = (0.9 * e1[name] + d2[name]).reshape(-1)
        got = comp.error[name].reshape(-1)
        idx = update[name].indices
        assert torch.allclose(got[idx], expected[idx] - update[name].values, atol=1e-6)
        untouched = torch.ones_like(got, dtype=torch.bool)
        untouched[idx] = False
        assert torch.allclose(got[untouched], expected[untouched], atol=1e-6)


def test_what_is_not_sent_is_sent_later():
    comp = ErrorFeedbackCompressor(SHAPES, beta=1.0)
    d = _deltas(3)
    sent = {n: torch.zeros(s) for n, s in SHAPES.items()}
    zero = {n: torch.zeros(s) for n, s in SHAPES.items()}
    for i in range(80):
        msg = comp.compress(d if i == 0 else zero)
        for n, st in decode_message(msg).items():
            sent[n] += st.to_dense()
    for n in SHAPES:  # with beta = 1 nothing is forgotten: sent + residual == input
        assert torch.allclose(sent[n] + comp.error[n], d[n], atol=1e-5)
        assert comp.error[n].norm() < 0.1 * d[n].norm()


def test_state_dict_round_trips_through_safetensors():
    comp = ErrorFeedbackCompressor(SHAPES)
    comp.compress(_deltas(4))
    other = ErrorFeedbackCompressor(SHAPES)
    other.load_state_dict(load(save(comp.state_dict())))
    a, b = comp.compress(_deltas(5)), other.compress(_deltas(5))
    assert all(torch.equal(a.blobs[n], b.blobs[n]) for n in SHAPES)


def test_rejects_mismatched_inputs():
    comp = ErrorFeedbackCompressor(SHAPES)
    with pytest.raises(KeyError):
        comp.compress({"w": torch.zeros(64, 192)})
    with pytest.raises(ValueError):
        comp.compress({"w": torch.zeros(64, 191), "b": torch.zeros(96)})
    with pytest.raises(KeyError):
        comp.load_state_dict({"error/w": torch.zeros(64, 192)})
    with pytest.raises(ValueError):
        ErrorFeedbackCompressor(SHAPES, beta=0.0)
