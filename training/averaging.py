"""Weight averaging: an exponential moving average (EMA) of the model's weights, updated every optimizer step.

Averaged weights sit in a flatter region of the loss than the last iterate and often generalise slightly better
(Polyak averaging; SWA and EMA in practice). The run scores both on dev each epoch and keeps the better
(:mod:`training.finetune`); nothing here knows about Ray.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """``shadow ← d·shadow + (1 − d)·weights`` after each optimizer step, with the usual warm-up
    ``d_t = min(decay, (1 + t) / (10 + t))`` so early steps are not dominated by the initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1.0 - d)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block ``model`` holds the averaged weights; the raw ones come back afterwards."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.shadow}
        model.load_state_dict(self.shadow, strict=False)
        try:
            yield model
        finally:
            model.load_state_dict(backup, strict=False)
