"""AdamW with layer-wise learning-rate decay, and the warm-up + linear-decay schedule.

Layer-wise LR decay (Clark et al., ELECTRA; Sun et al., "How to fine-tune BERT"): with L encoder layers the
head and layer L-1 train at ``lr``, layer i at ``lr * decay^(L-1-i)`` and the embeddings at
``lr * decay^L``, so the general features near the input move less than the task-specific top.
Biases and LayerNorm weights get no weight decay.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

_LAYER = re.compile(r"\.(?:layer|layers|block|blocks)\.(\d+)\.")


def num_encoder_layers(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None)
    if n is None:
        found = {int(m.group(1)) for name, _ in model.named_parameters() if (m := _LAYER.search(name))}
        n = max(found) + 1 if found else 0
    return int(n)


def param_depth(name: str, num_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder layer i, num_layers + 1 for everything above (head, final norm)."""
    if m := _LAYER.search(name):
        return int(m.group(1)) + 1
    if "embed" in name:
        return 0
    return num_layers + 1


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or name.endswith(".bias")


def param_groups(model: nn.Module, lr: float, weight_decay: float, layerwise_decay: float = 1.0,
                 head_lr_scale: float = 1.0, head_prefix: str = "classifier.") -> list[dict[str, Any]]:
    """AdamW parameter groups, one per (depth, decay/no-decay), each with its ``lr`` (and ``name`` for logs).
    Frozen parameters (``requires_grad=False``) are left out."""
    layers = num_encoder_layers(model)
    groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith(head_prefix)
        depth = layers + 1 if head else param_depth(name, layers)
        scale = layerwise_decay ** max(0, layers - depth) * (head_lr_scale if head else 1.0)
        nd = _no_decay(name, p)
        key = (depth, nd, head)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * scale, "weight_decay": 0.0 if nd else weight_decay,
                           "name": f"{'head' if head else f'depth{depth}'}{'-nodecay' if nd else ''}"}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.layerwise_lr_decay, cfg.head_lr_scale)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def warmup_linear(total_steps: int, warmup_steps: int):
    """LR multiplier: 0 → 1 over ``warmup_steps``, then 1 → 0 at ``total_steps`` (the seed's piecewise-linear
    schedule)."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(total_steps * warmup_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(total_steps, warmup))


def group_lrs(optimizer: torch.optim.Optimizer) -> Iterable[tuple[str, float]]:
    return ((g.get("name", str(i)), g["lr"]) for i, g in enumerate(optimizer.param_groups))
