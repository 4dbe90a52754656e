"""Calibrated probabilities: temperature scaling, the companion blend, ECE, and the model directory contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from classifier.calibration import (
    Blend,
    Calibration,
    expected_calibration_error,
    fit_blend,
    fit_temperature,
    nll,
    plot_reliability,
    reliability,
)
from classifier.errors import ModelDirError


def _calibrated_logits(n: int = 4000, k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is calibrated by construction: labels are drawn from softmax(logits)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 1.5
    y = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)
    return logits, y


def test_ece_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = torch.tensor([0, 1, 0, 0])
    # bin (0.867, 0.933]: conf 0.9, acc 0.5 -> gap 0.4; bin (0.6-ish]: conf 0.6, acc 1.0 -> gap 0.4
    assert expected_calibration_error(probs, y, n_bins=15) == pytest.approx(0.4)
    bins = reliability(probs, y, n_bins=15)
    assert sum(b["count"] for b in bins) == 4
    assert nll(probs, y) == pytest.approx(-(np.log(0.9) + np.log(0.1) + 2 * np.log(0.6)) / 4)


def test_temperature_scaling_lowers_ece_on_overconfident_logits(tmp_path):
    logits, y = _calibrated_logits()
    over = logits * 3.0  # three times too confident
    before = expected_calibration_error(torch.softmax(over, -1), y)
    t = fit_temperature(over, y)
    after = expected_calibration_error(torch.softmax(over / t, -1), y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert before > 0.1 and after < 0.03 and after < before / 4
    assert nll(torch.softmax(over / t, -1), y) < nll(torch.softmax(over, -1), y)
    png = plot_reliability(torch.softmax(over / t, -1), y, tmp_path / "rel.png", title="test")
    assert png.stat().st_size > 3000


def test_blend_beats_each_part_on_a_constructed_case():
    """Two models that each see the truth through independent noise: the stacked blend beats both."""
    g = torch.Generator().manual_seed(1)
    truth, y = _calibrated_logits(6000, seed=2)
    view_a = truth + torch.randn(truth.shape, generator=g) * 1.2
    view_b = truth + torch.randn(truth.shape, generator=g) * 1.2
    p_a, p_b = torch.softmax(view_a, -1), torch.softmax(view_b, -1)
    fit, held = slice(0, 3000), slice(3000, 6000)
    blend = fit_blend(p_a[fit], p_b[fit], y[fit])
    cal = Calibration(1.0, blend)
    p = cal.combine(p_a[held], p_b[held])
    acc = lambda q: float((q.argmax(-1) == y[held]).float().mean())  # noqa: E731
    assert nll(p, y[held]) < min(nll(p_a[held], y[held]), nll(p_b[held], y[held])) - 0.02
    assert acc(p) > max(acc(p_a[held]), acc(p_b[held])) + 0.01
    assert 0.3 < blend.encoder_weight < 1.2 and 0.3 < blend.companion_weight < 1.2
    assert sum(blend.bias) == pytest.approx(0.0, abs=1e-9)


def test_calibration_json_round_trip_and_checks():
    cal = Calibration(1.7, Blend(0.8, 0.4, [0.1, -0.05, -0.05]), fitted_on={"dev_examples": 10})
    again = Calibration.from_json(json.loads(json.dumps(cal.to_json())), num_labels=3)
    assert again == cal
    with pytest.raises(ModelDirError, match="3 blend biases for 2 labels"):
        Calibration.from_json(cal.to_json(), num_labels=2)
    with pytest.raises(ModelDirError, match="malformed"):
        Calibration.from_json({"blend": {"encoder_weight": 1}}, num_labels=3)
    with pytest.raises(ModelDirError, match="encoder_temperature must be > 0"):
        Calibration(0.0)
    with pytest.raises(ModelDirError, match="companion"):
        cal.combine(torch.full((1, 3), 1 / 3))


def test_decision_offsets_raise_macro_f1_of_an_underpredicted_class_and_keep_probabilities():
    from classifier.calibration import decide, fit_decision_offsets, macro_f1_of

    # calibrated probabilities of a 70/15/15 problem: the rare classes rarely win the argmax
    g = torch.Generator().manual_seed(4)
    n = 3000
    y = torch.multinomial(torch.tensor([0.15, 0.70, 0.15]), n, replacement=True, generator=g)
    evidence = torch.nn.functional.one_hot(y, 3).double() * 1.2 + torch.randn(n, 3, generator=g, dtype=torch.float64)
    probs = torch.softmax(evidence + torch.log(torch.tensor([0.15, 0.70, 0.15], dtype=torch.float64)), -1)
    fit, held = slice(0, 1500), slice(1500, n)
    offsets = fit_decision_offsets(probs[fit], y[fit])
    plain = macro_f1_of(probs[held].argmax(-1), y[held], 3)
    shifted = macro_f1_of(decide(probs[held], offsets), y[held], 3)
    assert offsets[0] == 0.0 and offsets[1] < offsets[2] + 1e-9 and offsets[1] < 0  # 利多-like majority pushed down
    assert shifted > plain + 0.02
    # two groups averaged: the same machinery
    groups = [i % 2 for i in range(1500)]
    assert len(fit_decision_offsets(probs[fit], y[fit], groups)) == 3
    # no gain possible (perfect argmax): the offsets stay zero
    assert fit_decision_offsets(torch.nn.functional.one_hot(y[:300], 3).double() * 0.9 + 0.05, y[:300]) == [0.0] * 3


def test_predictor_names_labels_with_the_offsets_but_serves_the_same_probabilities(tmp_path):
    from classifier.modeldir import CALIBRATION_FILE, write_json
    from classifier.predict import Predictor
    from classifier.testing import make_tiny_model_dir

    d = make_tiny_model_dir(tmp_path / "m")
    texts = ["公司业绩大涨", "股价暴跌", "召开会议", "利好消息"]
    plain = Predictor.from_dir(d, device="cpu")
    probs = plain.predict_proba(texts)
    write_json(d, CALIBRATION_FILE, Calibration(1.0, decision_offsets=[0.0, -50.0, 50.0]).to_json())
    shifted = Predictor.from_dir(d, device="cpu")
    assert torch.allclose(shifted.predict_proba(texts), probs)
    assert shifted.predict_labels(texts) == ["利空"] * 4  # the offsets decide the label, not the probabilities
    assert [r["label"] for r in shifted.predict(texts)] == ["利空"] * 4
    assert [r["probabilities"] for r in shifted.predict(texts)] == [r["probabilities"] for r in plain.predict(texts)]
