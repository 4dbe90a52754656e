"""Calibrated probabilities: temperature scaling, the blend with the linear companion, ECE and reliability plots.

Traders threshold on the probabilities, so they must mean what they say: of the texts labelled with
probability 0.8, about 80 % should be right. The post-processing of a model directory (``calibration.json``,
see :mod:`classifier.modeldir`) is, per text::

    p_enc = mean over the text's windows of softmax(encoder logits / encoder_temperature)
    without a companion:  p = p_enc
    with a companion:     p = softmax(encoder_weight * log p_enc + companion_weight * log p_companion + bias)
    label = argmax(log p + decision_offsets)

The probabilities are fitted for likelihood (calibrated: traders threshold on them); the label that names the
most likely class is then shifted toward the rarer classes by ``decision_offsets``, fitted on dev for
macro-F1 (NLL-optimal probabilities follow the class priors, which favours the majority class 利多).

Everything is fitted on dev by minimising the negative log-likelihood (temperature scaling, Guo et al. 2017;
the blend is a small multinomial logistic regression on the two models' log-probabilities — stacking). The
same function (:meth:`Calibration.combine`) runs in evaluation, serving and the stream, so all three give
identical probabilities.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from classifier.errors import ModelDirError

log = logging.getLogger(__name__)

#: bins of the expected calibration error and of the reliability diagram
ECE_BINS = 15
_EPS = 1e-7


@dataclass
class Blend:
    """Stacking weights of ``softmax(encoder_weight * log p_enc + companion_weight * log p_comp + bias)``."""

    encoder_weight: float
    companion_weight: float
    bias: list[float]

    def to_json(self) -> dict[str, Any]:
        return {"encoder_weight": self.encoder_weight, "companion_weight": self.companion_weight, "bias": self.bias}


@dataclass
class Calibration:
    """The post-processing stored in a model directory's ``calibration.json``."""

    encoder_temperature: float = 1.0
    blend: Blend | None = None
    #: the label decision: ``argmax(log p + decision_offsets)`` — offsets fitted on dev for macro-F1 (the
    #: probabilities stay calibrated; only which label is named changes). None: the plain argmax.
    decision_offsets: list[float] | None = None
    #: what it was fitted on and how calibration changed there (informational)
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.encoder_temperature > 0:
            raise ModelDirError(f"calibration: encoder_temperature must be > 0, got {self.encoder_temperature}")

    @property
    def needs_companion(self) -> bool:
        return self.blend is not None

    def combine(self, p_enc: torch.Tensor, p_companion: torch.Tensor | None = None) -> torch.Tensor:
        """Final probabilities from the encoder's (temperature-scaled, window-pooled) probabilities and, when a
        blend is set, the companion's probabilities."""
        if self.blend is None:
            return p_enc
        if p_companion is None:
            raise ModelDirError("calibration.json blends with a companion model, but none was loaded: the model "
                                "directory's companion/ folder is missing; re-export the model")
        b = self.blend
        z = (b.encoder_weight * torch.log(p_enc.clamp_min(_EPS)) + b.companion_weight
             * torch.log(p_companion.clamp_min(_EPS)) + torch.tensor(b.bias, dtype=p_enc.dtype))
        return torch.softmax(z, dim=-1)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Label ids of final probabilities (``[n, k]`` → ``[n]``)."""
        return decide(probs, self.decision_offsets)

    def to_json(self) -> dict[str, Any]:
        return {"encoder_temperature": self.encoder_temperature,
                "blend": self.blend.to_json() if self.blend else None,
                "decision_offsets": self.decision_offsets, "fitted_on": self.fitted_on}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], num_labels: int | None = None) -> Calibration:
        try:
            blend = data.get("blend")
            offsets = data.get("decision_offsets")
            cal = cls(encoder_temperature=float(data.get("encoder_temperature", 1.0)),
                      blend=Blend(float(blend["encoder_weight"]), float(blend["companion_weight"]),
                                  [float(x) for x in blend["bias"]]) if blend else None,
                      decision_offsets=[float(x) for x in offsets] if offsets else None,
                      fitted_on=dict(data.get("fitted_on") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelDirError(f"calibration.json is malformed ({e!r}): delete it or re-export the model") from None
        if cal.blend is not None and num_labels is not None and len(cal.blend.bias) != num_labels:
            raise ModelDirError(f"calibration.json has {len(cal.blend.bias)} blend biases for {num_labels} labels: "
                                "re-export the model")
        if cal.decision_offsets is not None and num_labels is not None and len(cal.decision_offsets) != num_labels:
            raise ModelDirError(f"calibration.json has {len(cal.decision_offsets)} decision offsets for {num_labels} "
                                "labels: re-export the model")
        return cal


def decide(probs: torch.Tensor, offsets: Sequence[float] | None = None) -> torch.Tensor:
    """``argmax(log p + offsets)`` per row (the plain argmax without offsets)."""
    p = torch.as_tensor(probs)
    if offsets is None:
        return p.argmax(-1)
    return (torch.log(p.clamp_min(_EPS)) + torch.tensor(offsets, dtype=p.dtype)).argmax(-1)


# ============================================================================================ fitting
def _labels_tensor(labels: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long)


def fit_temperature(logits: torch.Tensor, labels: Sequence[int] | torch.Tensor, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (fitted on log T with L-BFGS)."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    y = _labels_tensor(labels)
    if len(y) == 0:
        raise ValueError("fit_temperature needs at least one example")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def fit_blend(p_enc: torch.Tensor, p_companion: torch.Tensor, labels: Sequence[int] | torch.Tensor,
              l2: float = 1e-3, max_iter: int = 300) -> Blend:
    """Stacking weights (two scalars and a bias per label) minimising the NLL on held-out (dev) data."""
    a = torch.log(torch.as_tensor(p_enc, dtype=torch.float64).clamp_min(_EPS))
    c = torch.log(torch.as_tensor(p_companion, dtype=torch.float64).clamp_min(_EPS))
    y = _labels_tensor(labels)
    w = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = w[0] * a + w[1] * c + bias
        loss = torch.nn.functional.cross_entropy(z, y) + l2 * (bias.pow(2).sum() + (w - 0.5).pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    b = bias.detach()
    b = b - b.mean()
    w = w.detach()
    return Blend(float(w[0]), float(w[1]), [float(x) for x in b])


def macro_f1_of(pred: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Macro-F1 of label ids (every one of the ``k`` labels counts, also when absent)."""
    cm = torch.zeros((k, k), dtype=torch.float64)
    cm.index_put_((y, pred), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    tp = cm.diag()
    f1 = 2 * tp / (cm.sum(0) + cm.sum(1)).clamp_min(1e-12)
    return float(f1.mean())


def fit_decision_offsets(probs: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                         groups: Sequence[int] | None = None, span: float = 1.5, step: float = 0.05
                         ) -> list[float]:
    """Offsets (first label's fixed at 0) maximising dev macro-F1 of ``argmax(log p + offsets)`` — the mean of
    the groups' macro-F1 when ``groups`` (one id per example, e.g. its source) are given. A coordinate search
    on a grid of ``step`` in [-span, span], repeated until it stops improving; ties keep the smaller offsets,
    so without a gain the plain argmax (all zeros) stays."""
    p = torch.log(torch.as_tensor(probs, dtype=torch.float64).clamp_min(_EPS))
    y = _labels_tensor(labels)
    k = p.shape[1]
    g = torch.as_tensor(groups if groups is not None else [0] * len(y))
    ids = sorted(set(g.tolist()))

    def objective(off: list[float]) -> float:
        pred = (p + torch.tensor(off, dtype=torch.float64)).argmax(-1)
        return sum(macro_f1_of(pred[g == i], y[g == i], k) for i in ids) / len(ids)

    grid = [round(-span + i * step, 6) for i in range(int(round(2 * span / step)) + 1)]
    best = [0.0] * k
    best_val = objective(best)
    for _ in range(5):
        improved = False
        for j in range(1, k):
            for v in sorted(grid, key=abs):
                cand = best[:j] + [v] + best[j + 1:]
                val = objective(cand)
                if val > best_val + 1e-12:
                    best, best_val, improved = cand, val, True
        if not improved:
            break
    return best


# ============================================================================================ measuring
def nll(probs: torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = _labels_tensor(labels)
    return float(-torch.log(p[torch.arange(len(y)), y].clamp_min(_EPS)).mean()) if len(y) else float("nan")


def reliability(probs: torch.Tensor, labels: Sequence[int] | torch.Tensor, n_bins: int = ECE_BINS
                ) -> list[dict[str, float]]:
    """Per confidence bin (equal width on [0, 1]): count, mean confidence, accuracy."""
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = _labels_tensor(labels)
    conf, pred = p.max(dim=-1)
    correct = (pred == y).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    bins = []
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        m = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        n = int(m.sum())
        bins.append({"lo": float(lo), "hi": float(hi), "count": n,
                     "confidence": float(conf[m].mean()) if n else 0.0,
                     "accuracy": float(correct[m].mean()) if n else 0.0})
    return bins


def expected_calibration_error(probs: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                               n_bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy − confidence| over equal-width confidence bins (top label)."""
    bins = reliability(probs, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return float("nan")
    return sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total


def plot_reliability(probs: torch.Tensor, labels: Sequence[int] | torch.Tensor, path: str | Path,
                     title: str = "", n_bins: int = ECE_BINS) -> Path:
    """A reliability diagram PNG: accuracy per confidence bin against the diagonal, with the ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classifier.metrics import save_figure

    bins = reliability(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=120)
    width = 1.0 / n_bins
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    ax.bar(centers, [b["accuracy"] if b["count"] else 0 for b in bins], width=width * 0.9, color="#4c72b0",
           label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.plot([b["confidence"] for b in bins if b["count"]], [b["accuracy"] for b in bins if b["count"]], "o",
            color="#dd8452", markersize=3, label="(confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"{title}  ECE {ece:.3f}".strip(), fontsize=9)
    return save_figure(fig, path)
