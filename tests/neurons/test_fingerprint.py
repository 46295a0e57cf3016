from __future__ import annotations

import torch

from neurons.fingerprint import model_fingerprint
from neurons.model import build_model


def test_equal_models_equal_fingerprints(hparams) -> None:
    fp = model_fingerprint(build_model(hparams.model, 3))
    assert fp == model_fingerprint(build_model(hparams.model, 3))
    assert len(fp) == 32 and int(fp, 16) >= 0


def test_one_changed_element_changes_it(hparams) -> None:
    model = build_model(hparams.model, 3)
    before = model_fingerprint(model)
    with torch.no_grad():
        weight = model.model.layers[1].mlp.down_proj.weight
        weight.view(-1)[17] = torch.nextafter(weight.view(-1)[17], torch.tensor(1.0))  # one ulp
    assert model_fingerprint(model) != before


def test_mapping_matches_module_and_ignores_order(hparams) -> None:
    model = build_model(hparams.model, 3)
    params = dict(model.named_parameters())
    reversed_params = dict(reversed(list(params.items())))
    assert model_fingerprint(model) == model_fingerprint(params) == model_fingerprint(reversed_params)


def test_name_dtype_and_shape_are_covered() -> None:
    base = {"a": torch.zeros(4)}
    assert model_fingerprint(base) != model_fingerprint({"b": torch.zeros(4)})
    assert model_fingerprint(base) != model_fingerprint({"a": torch.zeros(2, 2)})
    assert model_fingerprint(base) != model_fingerprint({"a": torch.zeros(4, dtype=torch.float64)[:4].float().int()})
    assert model_fingerprint({"a": torch.zeros(2, 2)}) == model_fingerprint({"a": torch.zeros(4, 1).reshape(2, 2)})
