"""A node's own state file: round trip, other runs ignored, damaged files refused with a typed
NodeStateError naming the file (model untouched) and set aside by restore_node_state, and a kill
mid-write leaves the previous state loadable."""

from __future__ import annotations

import json
import stat
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from neurons.state import (
    NodeStateError,
    RestoredState,
    load_node_state,
    restore_node_state,
    save_node_state,
)

RUN = "tiny-0123456789ab"


class TwoLayer(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.first = torch.nn.Linear(6, 4)
        self.second = torch.nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_round_trip_restores_parameters_window_and_extra(tmp_path):
    path = tmp_path / "node_state.safetensors"
    saved, extra = TwoLayer(1), {"ef.first.weight": torch.arange(24.0).view(4, 6), "adam.step": torch.tensor([7.0])}
    save_node_state(path, saved, RUN, 12, extra)

    target = TwoLayer(2)
    restored = load_node_state(path, target, RUN)

    assert isinstance(restored, RestoredState) and restored.window == 12
    assert _same(target, _params(saved))
    assert set(restored.extra) == set(extra)
    assert all(torch.equal(restored.extra[k], v) for k, v in extra.items())


def test_no_file_means_no_state(tmp_path):
    assert load_node_state(tmp_path / "absent.safetensors", TwoLayer(0), RUN) is None


def test_state_of_another_run_is_ignored(tmp_path):
    path = tmp_path / "node_state.safetensors"
    save_node_state(path, TwoLayer(1), "tiny-ffffffffffff", 5, {})
    target = TwoLayer(2)
    before = _params(target)
    assert load_node_state(path, target, RUN) is None
    assert _same(target, before)


def test_state_for_another_model_shape_is_refused(tmp_path):
    path = tmp_path / "node_state.safetensors"
    other = torch.nn.Linear(6, 5)  # other parameter names and shapes
    save_node_state(path, other, RUN, 5, {})
    target = TwoLayer(2)
    before = _params(target)
    with pytest.raises(NodeStateError, match="parameters differ"):
        load_node_state(path, target, RUN)
    assert _same(target, before)


def _refused(path, data: bytes, match: str | None = None) -> None:
    path.write_bytes(data)
    target = TwoLayer(2)
    before = _params(target)
    with pytest.raises(NodeStateError, match=match) as info:
        load_node_state(path, target, RUN)
    assert str(path) in str(info.value)  # the error names the file
    assert _same(target, before)


def test_truncated_or_corrupt_files_are_refused_and_leave_the_model_alone(tmp_path):
    path = tmp_path / "node_state.safetensors"
    save_node_state(path, TwoLayer(1), RUN, 3, {"ef.x": torch.ones(5)})
    whole = path.read_bytes()
    corrupt = [
        whole[:0],
        whole[:7],  # shorter than the length prefix
        whole[:40],  # inside the JSON header
        whole[: len(whole) - 1],  # one byte of tensor data missing
        b"\xff" * len(whole),  # header length far beyond the file
        whole[:8] + b"{" * (len(whole) - 8),  # header is not JSON
    ]
    for data in corrupt:
        _refused(path, data)


def _state_file(path, tensors, meta) -> bytes:
    save_file(tensors, str(path), metadata=meta)
    return path.read_bytes()


def _tensors(model=None) -> dict[str, torch.Tensor]:
    return {f"model.{n}": p.detach().clone() for n, p in (model or TwoLayer(1)).named_parameters()}


@pytest.mark.parametrize(
    "meta", [{"run_id": RUN}, {"run_id": RUN, "window": "seven"}, {"run_id": RUN, "window": "-1"},
             {"run_id": RUN, "window": "1" * 400}, {"run_id": RUN, "window": "3", "more": "x"}, {"window": "3"}]
)
def test_bad_metadata_is_refused_and_leaves_the_model_alone(tmp_path, meta):
    path = tmp_path / "node_state.safetensors"
    _refused(path, _state_file(path, _tensors(), meta), "metadata")


@pytest.mark.parametrize(("value", "match"), [(float("nan"), "non-finite"), (float("-inf"), "non-finite"),
                                              (1e30, "exceeds")])
def test_non_finite_or_out_of_bound_parameters_are_refused(tmp_path, value, match):
    path = tmp_path / "node_state.safetensors"
    tensors = _tensors()
    tensors["model.first.weight"][1, 2] = value
    _refused(path, _state_file(path, tensors, {"run_id": RUN, "window": "3"}), match)


def test_the_bound_is_the_callers_and_extra_tensors_must_be_finite(tmp_path):
    path = tmp_path / "node_state.safetensors"
    tensors = _tensors()
    tensors["model.first.weight"][0, 0] = 50.0
    _state_file(path, tensors, {"run_id": RUN, "window": "3"})
    assert load_node_state(path, TwoLayer(2), RUN, max_abs_param=100.0).window == 3
    with pytest.raises(NodeStateError, match="exceeds"):
        load_node_state(path, TwoLayer(2), RUN, max_abs_param=10.0)
    tensors["extra.adam.exp_avg"] = torch.tensor([1.0, float("nan")])
    _refused(path, _state_file(path, tensors, {"run_id": RUN, "window": "3"}), "non-finite")


def test_other_dtypes_and_stray_tensors_are_refused(tmp_path):
    path = tmp_path / "node_state.safetensors"
    tensors = _tensors()
    tensors["model.first.bias"] = tensors["model.first.bias"].to(torch.int64)
    _refused(path, _state_file(path, tensors, {"run_id": RUN, "window": "3"}), "I64")
    tensors = {**_tensors(), "stray": torch.zeros(1)}
    _refused(path, _state_file(path, tensors, {"run_id": RUN, "window": "3"}), "differ")


def _rewrite_header(data: bytes, mutate) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    raw = mutate(header) or json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h: b"[" * 50_000,
        lambda h: h["model.first.weight"].update(shape=7),
        lambda h: h.update({"\ud800": h.pop("model.second.weight")}),
        lambda h: h["__metadata__"].update(window=3),
    ],
    ids=["deep nesting", "shape not a list", "unencodable name", "window not a string"],
)
def test_hostile_headers_are_refused(tmp_path, mutate):
    path = tmp_path / "node_state.safetensors"
    save_node_state(path, TwoLayer(1), RUN, 3, {})
    _refused(path, _rewrite_header(path.read_bytes(), mutate))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6))
def test_byte_flips_load_or_raise_node_state_error(tmp_path, edits):
    path = tmp_path / "flips.safetensors"
    save_node_state(path, TwoLayer(1), RUN, 3, {"ef.x": torch.ones(5)})
    buf = bytearray(path.read_bytes())
    for pos, val in edits:
        buf[pos % len(buf)] = val
    path.write_bytes(bytes(buf))
    target = TwoLayer(2)
    try:
        restored = load_node_state(path, target, RUN)
    except NodeStateError:
        return
    if restored is not None:
        assert all(bool(torch.isfinite(p).all()) and float(p.detach().abs().max()) <= 1e3 for p in target.parameters())


def test_restore_sets_a_bad_file_aside_and_starts_without_state(tmp_path, caplog):
    path = tmp_path / "node_state.safetensors"
    save_node_state(path, TwoLayer(1), RUN, 3, {})
    damaged = path.read_bytes()[:-1]
    path.write_bytes(damaged)
    target = TwoLayer(2)
    before = _params(target)

    with caplog.at_level("ERROR"):
        assert restore_node_state(path, target, RUN) is None
    assert str(path) in caplog.text
    assert _same(target, before)
    assert not path.exists()
    assert (tmp_path / "node_state.safetensors.corrupt").read_bytes() == damaged  # nothing is lost

    # a second bad file does not overwrite the first one set aside
    path.write_bytes(b"junk")
    assert restore_node_state(path, target, RUN) is None
    assert (tmp_path / "node_state.safetensors.corrupt.1").read_bytes() == b"junk"

    # a good file restores as usual; none at all is simply no state
    save_node_state(path, TwoLayer(1), RUN, 4, {})
    assert restore_node_state(path, target, RUN).window == 4
    assert restore_node_state(tmp_path / "absent", target, RUN) is None


def test_the_state_file_is_private(tmp_path):
    path = tmp_path / "node_state.safetensors"
    save_node_state(path, TwoLayer(1), RUN, 3, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_kill_mid_write_leaves_the_previous_state_loadable(tmp_path):
    path = tmp_path / "node_state.safetensors"
    first = TwoLayer(1)
    save_node_state(path, first, RUN, 4, {})
    # A writer killed before its rename leaves a half-written temporary file beside the state.
    half = path.read_bytes()[:50]
    leftovers = [path.with_suffix(".tmp"), path.parent / (path.name + ".tmp")]
    for leftover in leftovers:
        leftover.write_bytes(half)

    target = TwoLayer(2)
    restored = load_node_state(path, target, RUN)
    assert restored is not None and restored.window == 4
    assert _same(target, _params(first))

    # The next save goes through despite the leftover and replaces the state whole.
    second = TwoLayer(3)
    save_node_state(path, second, RUN, 5, {})
    restored = load_node_state(path, target, RUN)
    assert restored is not None and restored.window == 5
    assert _same(target, _params(second))
