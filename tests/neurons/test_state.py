"""A node's own state file: round trip, other runs ignored, unreadable files ignored (the documented
contract: ``None``, model untouched), and a kill mid-write leaves the previous state loadable."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from neurons.state import RestoredState, load_node_state, save_node_state

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


def test_state_for_another_model_shape_is_ignored(tmp_path):
    path = tmp_path / "node_state.safetensors"
    other = torch.nn.Linear(6, 5)  # other parameter names and shapes
    save_node_state(path, other, RUN, 5, {})
    target = TwoLayer(2)
    before = _params(target)
    assert load_node_state(path, target, RUN) is None
    assert _same(target, before)


def test_truncated_or_corrupt_files_are_ignored_and_leave_the_model_alone(tmp_path):
    path = tmp_path / "node_state.safetensors"
    save_node_state(path, TwoLayer(1), RUN, 3, {"ef.x": torch.ones(5)})
    whole = path.read_bytes()
    target = TwoLayer(2)
    before = _params(target)
    corrupt = [
        whole[:0],
        whole[:7],  # shorter than the length prefix
        whole[:40],  # inside the JSON header
        whole[: len(whole) - 1],  # one byte of tensor data missing
        b"\xff" * len(whole),  # header length far beyond the file
        whole[:8] + b"{" * (len(whole) - 8),  # header is not JSON
    ]
    for data in corrupt:
        path.write_bytes(data)
        assert load_node_state(path, target, RUN) is None, f"{len(data)} bytes"
        assert _same(target, before)


def test_bad_window_metadata_is_ignored_and_leaves_the_model_alone(tmp_path):
    path = tmp_path / "node_state.safetensors"
    tensors = {f"model.{n}": p.detach().clone() for n, p in TwoLayer(1).named_parameters()}
    target = TwoLayer(2)
    before = _params(target)
    for meta in ({"run_id": RUN}, {"run_id": RUN, "window": "seven"}, {"run_id": RUN, "window": "-1"}):
        save_file(tensors, str(path), metadata=meta)
        assert load_node_state(path, target, RUN) is None, meta
        assert _same(target, before)


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
