"""R-Drop and weight averaging (EMA): values on constructed cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.averaging import EMA
from training.engine import Penalties, rdrop_task_loss, symmetric_kl, total_loss


def test_symmetric_kl_by_hand():
    a = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    b = torch.log(torch.tensor([[0.5, 0.5], [0.6, 0.4]]))
    kl_ab = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    kl_ba = 0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)
    assert float(symmetric_kl(a, b)) == pytest.approx(0.5 * (0 + 0.5 * (kl_ab + kl_ba)), rel=1e-5)
    assert float(symmetric_kl(a, a)) == pytest.approx(0.0, abs=1e-7)


class _Toy(nn.Module):
    """Linear model with dropout on the input: two passes differ only by their dropout masks."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.drop = nn.Dropout(p)
        self.out = nn.Linear(4, 3)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.emb(input_ids).mean(1)))

    def l1_penalty(self) -> torch.Tensor:  # Penalties needs it only when l1 > 0
        return self.out.weight.abs().sum()


def _batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([[1, 2, 3], [4, 5, 6]]), "attention_mask": torch.ones(2, 3, dtype=torch.long),
            "labels": torch.tensor([0, 2])}


def test_rdrop_loss_is_mean_ce_plus_alpha_kl_and_zero_kl_without_dropout():
    torch.manual_seed(0)
    crit = nn.CrossEntropyLoss()
    model = _Toy(p=0.0)
    loss, ce, kl = rdrop_task_loss(model, _batch(), crit, alpha=4.0)
    plain = crit(model(**{k: v for k, v in _batch().items() if k != "labels"}), _batch()["labels"])
    assert float(kl) == pytest.approx(0.0, abs=1e-7) and float(ce) == pytest.approx(float(plain), rel=1e-6)
    model = _Toy(p=0.5).train()
    torch.manual_seed(1)
    loss, ce, kl = rdrop_task_loss(model, _batch(), crit, alpha=4.0)
    assert float(kl) > 0 and float(loss) == pytest.approx(float(ce) + 4.0 * float(kl), rel=1e-6)
    total, task, parts = total_loss(model, _batch(), crit, Penalties(), rdrop=4.0)
    assert "rdrop_kl" in parts and parts["rdrop_kl"] > 0 and float(total) > float(task)


def test_ema_tracks_the_average_and_restores_the_raw_weights():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    values = [1.0, 2.0, 3.0]
    expected = 0.0
    for t, v in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update(model)
        d = min(0.5, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * v
    assert float(ema.shadow["weight"][0, 0]) == pytest.approx(expected)
    with ema.applied(model):
        assert float(model.weight[0, 0]) == pytest.approx(expected)
    assert float(model.weight[0, 0]) == 3.0
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)
