"""Forgetting controls: L2-SP, EWC (+ Fisher estimation and files), rehearsal mixing, layer freezing.
All values are checked against hand computations on small models."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from classifier.errors import ConfigError, ModelDirError
from training.forgetting import (
    EWC,
    L2SP,
    estimate_fisher,
    freeze_lowest_layers,
    load_fisher,
    mix_rehearsal,
    save_fisher,
)


def _v(t: torch.Tensor) -> float:
    return float(t.detach())


class Tiny(nn.Module):
    """y = w · x + b with a 'classifier' head that L2-SP leaves out by default."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 2)
        self.classifier = nn.Linear(2, 1)
        with torch.no_grad():
            self.body.weight.copy_(torch.tensor([[0.1, 0.2, 0.3], [-0.1, 0.0, 0.5]]))
            self.body.bias.copy_(torch.tensor([0.0, 0.1]))
            self.classifier.weight.copy_(torch.tensor([[1.0, -1.0]]))
            self.classifier.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: parameters named ``module.…``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


# ------------------------------------------------------------------------------------------------ L2-SP
def test_l2sp_zero_at_start_then_hand_value() -> None:
    model = Tiny()
    reg = L2SP(model, coef=0.5)
    assert _v(reg.penalty(model, step=0)) == 0.0
    with torch.no_grad():
        model.body.weight += 0.1  # 6 elements moved by 0.1
        model.body.bias -= 0.2  # 2 elements moved by 0.2
        model.classifier.weight += 5.0  # the head is excluded by default
    expected = 0.5 * (6 * 0.1**2 + 2 * 0.2**2)  # = 0.07
    assert _v(reg.penalty(model, step=0)) == pytest.approx(expected, rel=1e-5)
    # gradient of coef·Σ(θ-θ0)² is 2·coef·(θ-θ0)
    reg.penalty(model, step=0).backward()
    assert torch.allclose(model.body.weight.grad, torch.full((2, 3), 2 * 0.5 * 0.1), atol=1e-6)
    assert model.classifier.weight.grad is None
    # the same object works through a DDP-like wrapper
    assert _v(reg.penalty(Wrapper(model), step=0)) == pytest.approx(expected, rel=1e-5)


def test_l2sp_recadam_annealing_decays_the_coefficient() -> None:
    model = Tiny()
    reg = L2SP(model, coef=2.0, anneal_steps=100)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert reg.coef_at(0) == pytest.approx(2.0 * (1 - sig(-5)))  # 1.9866
    assert reg.coef_at(50) == pytest.approx(1.0)
    assert reg.coef_at(100) == pytest.approx(2.0 * (1 - sig(5)))  # 0.0134
    assert reg.coef_at(1000) < 1e-10
    with torch.no_grad():
        model.body.weight += 0.1
    assert _v(reg.penalty(model, step=50)) == pytest.approx(1.0 * 6 * 0.01, rel=1e-5)
    assert L2SP(model, coef=2.0).coef_at(10_000) == 2.0  # anneal_steps=0: constant


def test_l2sp_only_trainable_params_and_bad_settings() -> None:
    model = Tiny()
    model.body.bias.requires_grad_(False)
    reg = L2SP(model, coef=1.0, exclude=())
    assert set(reg.anchor) == {"body.weight", "classifier.weight", "classifier.bias"}
    with pytest.raises(ConfigError, match="l2sp"):
        L2SP(model, coef=-1.0)


# ------------------------------------------------------------------------------------------------ EWC
def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x).squeeze(-1) - y) ** 2).mean()


def test_fisher_is_mean_squared_gradient_and_ewc_uses_it(tmp_path: Path) -> None:
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    batches = [(torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])),  # pred 1 → grad 2·1·x = (2, 0)
               (torch.tensor([[0.0, 1.0]]), torch.tensor([1.0])),  # pred 2 → grad 2·1·x = (0, 2)
               (torch.tensor([[1.0, 1.0]]), torch.tensor([9.0]))]  # ignored: max_batches=2
    fisher = estimate_fisher(lin, batches, _mse, max_batches=2)
    assert torch.allclose(fisher["weight"], torch.tensor([[2.0, 2.0]]))  # ((4, 0) + (0, 4)) / 2
    assert lin.weight.grad is None and lin.training  # state restored

    path = save_fisher(fisher, tmp_path / "fisher.safetensors")
    assert torch.equal(load_fisher(path)["weight"], fisher["weight"])
    ewc = EWC.from_file(path, lin, coef=3.0)
    assert _v(ewc.penalty(lin)) == 0.0
    with torch.no_grad():
        lin.weight += torch.tensor([[0.5, -1.0]])
    # coef/2 · Σ F (θ-θ*)² = 1.5 · (2·0.25 + 2·1) = 3.75
    assert _v(ewc.penalty(lin)) == pytest.approx(3.75)

    # the penalty follows the Fisher: a zero Fisher entry leaves that weight free
    ewc2 = EWC({"weight": torch.tensor([[0.0, 2.0]])}, {"weight": torch.tensor([[1.0, 2.0]])}, coef=3.0)
    assert _v(ewc2.penalty(lin)) == pytest.approx(1.5 * 2.0 * 1.0)


def test_ewc_rejects_a_fisher_of_another_model(tmp_path: Path) -> None:
    path = save_fisher({"other.weight": torch.ones(2)}, tmp_path / "f.safetensors")
    with pytest.raises(ModelDirError, match="lacks"):
        EWC.from_file(path, Tiny(), coef=1.0)
    with pytest.raises(ModelDirError, match="not found"):
        load_fisher(tmp_path / "missing.safetensors")
    with pytest.raises(ModelDirError, match="shape"):
        EWC({"w": torch.ones(3)}, {"w": torch.ones(2)}, coef=1.0)


# ------------------------------------------------------------------------------------------------ rehearsal
def test_mix_rehearsal_has_the_requested_fraction() -> None:
    new = [f"new{i}" for i in range(80)]
    old = [f"old{i}" for i in range(50)]
    mixed = mix_rehearsal(new, old, fraction=0.2, seed=7)
    assert len(mixed) == 100
    assert sum(x.startswith("old") for x in mixed) == 20
    assert sorted(x for x in mixed if x.startswith("new")) == sorted(new)  # every new example, once
    assert len({x for x in mixed if x.startswith("old")}) == 20  # without replacement
    assert mix_rehearsal(new, old, 0.2, seed=7) == mixed  # deterministic
    assert mix_rehearsal(new, old, 0.2, seed=8) != mixed
    # batches of 10 drawn in order hold 20 % old examples on average, every batch mixes both kinds
    per_batch = [sum(x.startswith("old") for x in mixed[i : i + 10]) for i in range(0, 100, 10)]
    assert sum(per_batch) / len(per_batch) == 2.0
    # more old examples than exist: sampled again
    many = mix_rehearsal(new[:30], old[:5], fraction=0.5, seed=1)
    assert len(many) == 60 and Counter(x.startswith("old") for x in many)[True] == 30
    assert sorted(mix_rehearsal(new, old, 0.0, seed=1)) == sorted(new)
    with pytest.raises(ConfigError, match="rehearsal_fraction"):
        mix_rehearsal(new, old, 1.0, seed=1)


def test_finetune_data_mixes_rehearsal_examples(tmp_path: Path) -> None:
    """The fine-tuning data loader draws rehearsal_fraction of its training examples from the old task."""
    data = pytest.importorskip("training.data")
    from training.config import FinetuneConfig, resolve_paths

    new, old, dev = tmp_path / "new.txt", tmp_path / "old.txt", tmp_path / "dev.txt"
    new.write_text("".join(f"利多|||新闻{i}\n" for i in range(60)), encoding="utf-8")
    old.write_text("".join(f"利空|||帖子{i}\n" for i in range(100)), encoding="utf-8")
    dev.write_text("其他|||开发\n", encoding="utf-8")
    cfg = resolve_paths(FinetuneConfig(train_files=[str(new)], dev_file=str(dev), rehearsal_files=[str(old)],
                                       rehearsal_fraction=0.25, lexicon_files=[]))
    train = data.load_finetune_data(cfg).train
    assert len(train) == 80 and sum(e.text.startswith("帖子") for e in train) == 20


# ------------------------------------------------------------------------------------------------ freezing
def test_freeze_lowest_layers(tiny_model_dir: Path) -> None:
    from classifier.modeldir import load_model_dir

    model, _, _ = load_model_dir(tiny_model_dir)
    enc = model.encoder
    expected = sum(p.numel() for p in enc.embeddings.parameters()) + \
        sum(p.numel() for p in enc.encoder.layer[0].parameters())
    assert freeze_lowest_layers(Wrapper(model), 1) == expected
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.encoder.layer[1].parameters())
    assert model.classifier.weight.requires_grad
    assert freeze_lowest_layers(model, 0) == 0
    with pytest.raises(ConfigError, match="freeze_layers"):
        freeze_lowest_layers(model, 3)
