"""The acceptance rules every node applies alone: slot, size, decode, signature, identity, bounds,
and the guard that turns any reader bug into one peer's rejection."""

from __future__ import annotations

import functools
import json
import struct

import pytest
import torch

import protocol.acceptance as acceptance
from compression import ErrorFeedbackCompressor, PayloadManifest, encode_payload
from compression.sparse import SparseTensor
from protocol.acceptance import (
    AcceptanceRule,
    RejectReason,
    Stage1Result,
    ValueBounds,
    Verdict,
    check_bounds,
    check_size,
    check_slot,
    contained,
    judge_payload,
    parameter_norms,
)
from protocol.hparams import load_hparams
from protocol.signing import HotkeySigner

SHAPES = {"weight": (16, 64), "bias": (16,)}
RUN, WINDOW, UID = "tiny-aaaaaaaaaaaa", 4, 3
BOUNDS = ValueBounds(max_abs_value=0.5, max_update_ratio=1.0)


@functools.cache
def signer() -> HotkeySigner:
    return HotkeySigner.from_uri("//AcceptanceTest")


def payload(scale: float = 0.01, **manifest: object) -> bytes:
    """A real signed payload of SHAPES whose values are about ``scale``."""
    compressor = ErrorFeedbackCompressor(SHAPES, chunk_size=8, topk_per_chunk=16)
    gen = torch.Generator().manual_seed(0)
    message = compressor.compress({n: torch.randn(s, generator=gen) * scale for n, s in SHAPES.items()})
    fields = {"run_id": RUN, "window": WINDOW, "uid": UID, "hotkey": signer().hotkey, "global_step": 0}
    fields.update(manifest)
    return encode_payload(message, PayloadManifest.for_message(message, **fields), sign=signer().sign)


def rule(**kw) -> AcceptanceRule:
    norms = {"weight": 8.0, "bias": 1.0}
    base = {"run_id": RUN, "window": WINDOW, "slot_start": 0.0, "slot_seconds": 1.0, "max_bytes": 1 << 20,
            "bounds": BOUNDS, "param_norms": norms}
    base.update(kw)
    return AcceptanceRule(**base)


def judge(data: bytes, **kw):
    return judge_payload(data, UID, signer().hotkey, rule(**kw), SHAPES)


def st(shape, idx, vals) -> SparseTensor:
    return SparseTensor(shape, torch.tensor(idx, dtype=torch.int64), torch.tensor(vals, dtype=torch.float32))


def test_result_requires_reason_exactly_when_rejected():
    assert Stage1Result.accept(3).verdict is Verdict.PASSED
    r = Stage1Result.reject(3, RejectReason.COPY, "x")
    assert r.verdict is Verdict.REJECTED and r.is_fault
    assert not Stage1Result.reject(3, RejectReason.MISSING).is_fault
    assert Stage1Result.reject(3, RejectReason.OUT_OF_BOUNDS).is_fault
    with pytest.raises(ValueError):
        Stage1Result(uid=1, passed=True, reason=RejectReason.LATE)
    with pytest.raises(ValueError):
        Stage1Result(uid=1, passed=False)


@pytest.mark.parametrize(
    ("t", "reason"),
    [
        (98.9, RejectReason.EARLY),  # [98.9, 99.9) lies wholly before the slot
        (99.0, RejectReason.EARLY),  # [99, 100) too: the slot opens at 100.0
        (99.5, None),  # a whole-second stamp of an upload that finished at 100.2 or so
        (100.0, None),
        (106.0, None),  # the end is inclusive
        (106.5, RejectReason.LATE),
        (float("inf"), RejectReason.UNDECODABLE),
        (float("nan"), RejectReason.UNDECODABLE),
    ],
)
def test_slot_gives_one_second_of_doubt_at_the_start_only(t, reason):
    got = check_slot(t, slot_start=100.0, slot_seconds=6.0)
    assert (got.reason if got else None) == reason


def test_size():
    assert check_size(10, 10) is None
    assert check_size(11, 10).reason is RejectReason.OVERSIZED


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"weight": st((16, 64), [0, 5], [0.1, -0.2])}, None),
        ({"weight": st((16, 64), [0, 5], [0.1, float("nan")])}, RejectReason.NON_FINITE),
        ({"bias": st((16,), [1], [float("-inf")])}, RejectReason.NON_FINITE),
        ({"bias": st((16,), [1], [0.51])}, RejectReason.OUT_OF_BOUNDS),
        ({"bias": st((16,), [1], [-3.4e38])}, RejectReason.OUT_OF_BOUNDS),
        # 16 values of 0.45: each inside the value bound, the norm 1.8 > 1.0 x ||θ_bias|| + 0.5
        ({"bias": st((16,), list(range(16)), [0.45] * 16)}, RejectReason.OUT_OF_BOUNDS),
        ({"bias": st((16,), [], [])}, None),
    ],
)
def test_bounds(update, reason):
    got = check_bounds(update, BOUNDS, {"weight": 8.0, "bias": 1.0})
    assert (got.reason if got else None) == reason


def test_bounds_without_norms_check_values_only():
    update = {"bias": st((16,), list(range(16)), [0.45] * 16)}
    assert check_bounds(update, BOUNDS, None) is None


def test_an_honest_payload_is_accepted():
    verdict = judge(payload())
    assert verdict.result.passed and verdict.decoded is not None
    assert verdict.decoded.manifest.uid == UID


def _hand_payload(shape: tuple[int, int], into_padding: bool) -> bytes:
    """A signed payload of one parameter, written from its parts: each chunk keeps its first real
    slots; with ``into_padding`` the last chunk's last kept position is its (padded) last slot."""
    from compression import CodecParams, CompressedMessage
    from compression.bitpack import pack_fixed
    from compression.golomb import golomb_encode

    params = CodecParams(chunk_size=8, topk_per_chunk=5)
    lay = params.layout(shape)
    _, _, nrows, ncols = lay.chunk_extent()
    slot = torch.arange(lay.chunk_elems)
    real = (slot // lay.tile_cols < nrows.unsqueeze(1)) & (slot % lay.tile_cols < ncols.unsqueeze(1))
    chosen = real & (torch.cumsum(real.to(torch.int64), dim=1) <= lay.chunk_ks().unsqueeze(1))
    pos = torch.nonzero(chosen)[:, 1]
    if into_padding:
        pos[-1] = lay.chunk_elems - 1
    first = torch.ones_like(pos, dtype=torch.bool)
    first[1:] = torch.nonzero(chosen)[1:, 0] != torch.nonzero(chosen)[:-1, 0]
    gaps = pos - torch.where(first, -1, torch.cat([pos.new_full((1,), -1), pos[:-1]])) - 1
    streams = golomb_encode(gaps, 3)
    table = torch.tensor([0.01, 0.02, -0.01, -0.02]).numpy().tobytes()
    codes = pack_fixed(torch.zeros(lay.n_kept, dtype=torch.int64), 2)
    blob = (3).to_bytes(2, "little") + table + b"".join(
        t.numpy().tobytes() for t in (streams.high, codes, streams.low, streams.unary))
    message = CompressedMessage(params, {"w": shape}, {"w": torch.frombuffer(bytearray(blob), dtype=torch.uint8)})
    fields = {"run_id": RUN, "window": WINDOW, "uid": UID, "hotkey": signer().hotkey, "global_step": 0}
    return encode_payload(message, PayloadManifest.for_message(message, **fields), sign=signer().sign)


@pytest.mark.parametrize("shape", [(19, 13), (11, 23)])
def test_a_signed_payload_naming_a_padded_position_is_refused(shape):
    # Odd sides are padded to whole tiles (compression.chunking); the padding is no coordinate of
    # the tensor, so a payload that names one is malformed, however well signed.
    shapes = {"w": shape}
    honest = judge_payload(_hand_payload(shape, False), UID, signer().hotkey, rule(param_norms=None), shapes)
    assert honest.result.passed
    verdict = judge_payload(_hand_payload(shape, True), UID, signer().hotkey, rule(param_norms=None), shapes)
    assert verdict.result.reason is RejectReason.UNDECODABLE and verdict.decoded is None
    assert verdict.result.detail == "w: index in the padding of its chunk"


@pytest.mark.parametrize("scale", [1e4, 1e12, 1e30])
def test_signed_payloads_with_huge_finite_values_are_refused(scale):
    verdict = judge(payload(scale=scale))
    assert verdict.result.reason is RejectReason.OUT_OF_BOUNDS and verdict.decoded is None
    # without bounds (as before) the same bytes decode and would be aggregated
    assert judge(payload(scale=scale), bounds=None).result.passed


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [({"window": WINDOW + 1}, RejectReason.WRONG_WINDOW), ({"run_id": "other"}, RejectReason.WRONG_WINDOW),
     ({"uid": UID + 1}, RejectReason.WRONG_WINDOW)],
)
def test_the_manifest_must_name_this_run_window_and_uid(manifest, reason):
    assert judge(payload(**manifest)).result.reason is reason


def test_another_hotkey_is_a_bad_signature():
    other = HotkeySigner.from_uri("//SomeoneElse")
    verdict = judge_payload(payload(), UID, other.hotkey, rule(), SHAPES)
    assert verdict.result.reason is RejectReason.BAD_SIGNATURE


def _with_header(data: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    raw = edit(json.dumps(header)).encode("utf-8", "surrogatepass")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        b"\xff" * 64,
        struct.pack("<Q", 4) + b"[[[[",
        struct.pack("<Q", 20_000) + b"[" * 20_000,
        # a tensor name JSON can carry but UTF-8 cannot: once crashed every node before the signature check
        _with_header(payload(), lambda h: h.replace('"update"', '"\\ud800"')),
        _with_header(payload(), lambda h: h.replace('"update"', '"up\\udfffdate"')),
    ],
)
def test_malformed_bytes_end_in_a_typed_rejection(data):
    verdict = judge(data)
    assert not verdict.result.passed and verdict.decoded is None
    assert verdict.result.reason in {RejectReason.UNDECODABLE, RejectReason.BAD_SIGNATURE}


def test_any_exception_from_a_reader_is_contained(monkeypatch):
    def broken(*_a, **_k):
        raise KeyError("a reader bug")

    monkeypatch.setattr(acceptance, "decode_payload", broken)
    verdict = judge(payload())
    assert verdict.result.reason is RejectReason.UNDECODABLE
    assert "KeyError" in verdict.result.detail


def test_contained_passes_results_through():
    assert contained(1, "x", lambda: 42) == 42
    got = contained(1, "x", lambda: [][1])
    assert isinstance(got, Stage1Result) and "IndexError" in got.detail


def test_parameter_norms():
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    assert parameter_norms(model) == pytest.approx({"weight": 6**0.5, "bias": 0.0})


def test_the_network_value_bound_follows_the_hparams():
    hp = load_hparams("tiny")
    t = hp.training
    expected = hp.bounds.value_bound_factor * t.lr * t.inner_steps / (1 - hp.codec.ef_beta)
    assert ValueBounds.from_hparams(hp).max_abs_value == pytest.approx(expected)
