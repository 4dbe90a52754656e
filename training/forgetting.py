"""Catastrophic-forgetting controls, shared by domain pretraining (``training/pretrain.py``) and sequential
fine-tuning (``training/finetune.py``). Plain torch; nothing here knows about Ray.

- :class:`L2SP` — L2-SP (Li et al. 2018, "Explicit inductive bias for transfer learning"): pull the weights
  towards their starting point, ``coef_t · Σ‖θ − θ₀‖²``. With ``anneal_steps > 0`` the coefficient *decays*
  RecAdam-style (Chen et al. 2020): ``coef_t = coef · (1 − sigmoid(k · (t − t₀)))`` with ``t₀ = anneal_steps/2``
  and ``k = 10 / anneal_steps``, i.e. ≈ coef at step 0, coef/2 half-way, < 1 % of coef after
  ``anneal_steps`` — a strong pull while the new task's gradients are large and noisy, fading later.
- :class:`EWC` — elastic weight consolidation (Kirkpatrick et al. 2017): ``coef/2 · Σ F · (θ − θ*)²`` with a
  diagonal Fisher ``F`` estimated on the previous task (:func:`estimate_fisher`) and ``θ*`` the weights after it.
- :func:`mix_rehearsal` — replay a fraction of the previous task's examples among the new ones.
- :func:`freeze_lowest_layers` — freeze the embeddings and the lowest k encoder layers.

Layer-wise LR decay lives with the optimizer (:mod:`training.optim`).

Parameter names are those of the unwrapped module: a ``DistributedDataParallel`` wrapper (``module.``) is looked
through, so a penalty built before ``prepare_model`` works on the wrapped model too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from classifier.errors import ConfigError, ModelDirError

T = TypeVar("T")

#: parameters that L2-SP leaves alone by default: the freshly initialised heads (the finsent classifier's
#: linear layer, BERT's and RoBERTa's MLM heads) — pulling a new head towards its random init only hurts.
DEFAULT_L2SP_EXCLUDE: tuple[str, ...] = ("classifier.", "cls.", "lm_head.")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or the model itself)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _named_params(model: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    return unwrap(model).named_parameters()


# ----------------------------------------------------------------------------------------------- L2-SP
class L2SP:
    """``penalty(model, step) = coef_t · Σ_i ‖θ_i − θ_i⁰‖²`` over the parameters that were trainable when this
    object was built (minus ``exclude`` prefixes); θ⁰ is a detached copy taken here.

    ``coef_t = coef`` when ``anneal_steps == 0``; otherwise it decays RecAdam-style (module docstring)."""

    def __init__(self, model: nn.Module, coef: float, anneal_steps: int = 0, *,
                 exclude: Sequence[str] = DEFAULT_L2SP_EXCLUDE) -> None:
        if coef < 0:
            raise ConfigError(f"l2sp: must be >= 0, got {coef}")
        if anneal_steps < 0:
            raise ConfigError(f"l2sp_anneal_steps: must be >= 0, got {anneal_steps}")
        self.coef = float(coef)
        self.anneal_steps = int(anneal_steps)
        self.anchor: dict[str, torch.Tensor] = {
            name: p.detach().clone()
            for name, p in _named_params(model)
            if p.requires_grad and not any(name.startswith(x) for x in exclude)
        }
        if not self.anchor:
            raise ConfigError("l2sp: the model has no trainable parameters outside the excluded heads")

    def coef_at(self, step: int) -> float:
        """The coefficient at optimizer step ``step`` (0-based)."""
        if self.anneal_steps == 0:
            return self.coef
        k = 10.0 / self.anneal_steps
        return self.coef * (1.0 - 1.0 / (1.0 + math.exp(-k * (step - self.anneal_steps / 2))))

    def distance(self, model: nn.Module) -> torch.Tensor:
        """``Σ‖θ − θ⁰‖²`` (no coefficient), float32, on the parameters' device."""
        total: torch.Tensor | None = None
        for name, p in _named_params(model):
            ref = self.anchor.get(name)
            if ref is None:
                continue
            if ref.device != p.device:  # moved to the GPU after construction: follow once
                ref = self.anchor[name] = ref.to(p.device)
            d = (p.float() - ref.float()).pow(2).sum()
            total = d if total is None else total + d
        if total is None:
            raise ModelDirError("l2sp: none of the anchored parameters are in this model (different model?)")
        return total

    def penalty(self, model: nn.Module, step: int) -> torch.Tensor:
        c = self.coef_at(step)
        if c == 0.0:
            return torch.zeros((), device=next(iter(self.anchor.values())).device)
        return c * self.distance(model)


# ----------------------------------------------------------------------------------------------- EWC
class EWC:
    """``penalty(model) = coef/2 · Σ_i F_i · (θ_i − θ*_i)²`` over the parameters named in ``fisher``."""

    def __init__(self, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], coef: float) -> None:
        if coef < 0:
            raise ConfigError(f"ewc: must be >= 0, got {coef}")
        missing = sorted(set(fisher) - set(anchor))
        if missing:
            raise ConfigError(f"ewc: no anchor weights for {len(missing)} Fisher entries, e.g. {missing[:3]}")
        for name, f in fisher.items():
            if f.shape != anchor[name].shape:
                raise ModelDirError(f"ewc: Fisher of {name} has shape {tuple(f.shape)} but the weight has "
                                    f"{tuple(anchor[name].shape)}: the Fisher file belongs to another model")
        self.fisher = {k: v.detach().float() for k, v in fisher.items()}
        self.anchor = {k: anchor[k].detach().clone().float() for k in fisher}
        self.coef = float(coef)

    @classmethod
    def from_file(cls, path: str | Path, model: nn.Module, coef: float) -> EWC:
        """Fisher from a safetensors file (:func:`save_fisher`); θ* = the model's current weights, which must
        be the weights the Fisher was estimated at (the previous task's exported model)."""
        fisher = load_fisher(path)
        params = dict(_named_params(model))
        unknown = sorted(set(fisher) - set(params))
        if unknown:
            raise ModelDirError(f"{path}: {len(unknown)} Fisher entries name parameters this model lacks, e.g. "
                                f"{unknown[:3]}: estimate the Fisher on the model you continue from")
        anchor = {name: params[name].detach() for name in fisher}
        return cls(fisher, anchor, coef)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total: torch.Tensor | None = None
        for name, p in _named_params(model):
            f = self.fisher.get(name)
            if f is None:
                continue
            if f.device != p.device:
                f = self.fisher[name] = f.to(p.device)
                self.anchor[name] = self.anchor[name].to(p.device)
            d = (f * (p.float() - self.anchor[name]).pow(2)).sum()
            total = d if total is None else total + d
        if total is None:
            raise ModelDirError("ewc: none of the Fisher's parameters are in this model (different model?)")
        return 0.5 * self.coef * total


def estimate_fisher(model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                    max_batches: int) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over up to ``max_batches`` batches of the squared gradient of
    ``loss_fn(model, batch)`` for every trainable parameter (float32, CPU).

    The model runs in eval mode (no dropout) and its training mode and gradients are restored afterwards.
    The gradient is that of each batch's loss, so with the usual batch-mean loss the values are smaller than
    the per-example Fisher by about the batch size; pass batches of one example for the textbook estimator.
    """
    if max_batches < 1:
        raise ConfigError(f"fisher_max_batches: must be at least 1, got {max_batches}")
    inner = unwrap(model)
    params = {n: p for n, p in inner.named_parameters() if p.requires_grad}
    saved_grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in params.items()}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32, device="cpu") for n, p in params.items()}
    was_training = inner.training
    inner.eval()
    seen = 0
    try:
        for batch in batches:
            if seen >= max_batches:
                break
            for p in params.values():
                p.grad = None
            loss = loss_fn(inner, batch)
            loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach().float().pow(2).cpu()
            seen += 1
    finally:
        inner.train(was_training)
        for n, p in params.items():
            p.grad = saved_grads[n]
    if seen == 0:
        raise ConfigError("estimate_fisher: got no batches: give the previous task's training data")
    return {n: f / seen for n, f in fisher.items()}


def save_fisher(fisher: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write a Fisher dict as safetensors (float32)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in fisher.items()}, str(p),
              metadata={"format": "pt", "kind": "finsent-diagonal-fisher"})
    return p


def load_fisher(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a Fisher file written by :func:`save_fisher` (safetensors only; nothing is unpickled)."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ModelDirError(f"Fisher file {p} not found: write it with a fine-tuning run on the previous task "
                            "with save_fisher=true (it lands in that run's output_dir as fisher.safetensors)")
    if p.suffix != ".safetensors":
        raise ModelDirError(f"{p}: the Fisher must be a .safetensors file (pickled files are never loaded)")
    return load_file(str(p))


# ----------------------------------------------------------------------------------------------- rehearsal
def mix_rehearsal(new: Sequence[T], old: Sequence[T], fraction: float, seed: int) -> list[T]:
    """All of ``new`` plus ``round(len(new) · fraction / (1 − fraction))`` examples of ``old``, shuffled, so
    that ``fraction`` of the result are old examples. Old examples are sampled without replacement (with
    replacement, in repeated shuffled passes, when more are needed than ``old`` holds). Deterministic in
    ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"rehearsal_fraction: must be in [0, 1), got {fraction}")
    rng = random.Random(seed)
    n_old = round(len(new) * fraction / (1.0 - fraction)) if fraction > 0 else 0
    if n_old and not old:
        raise ConfigError("rehearsal_fraction > 0 but the rehearsal data is empty: check rehearsal_files")
    picked: list[T] = []
    while len(picked) < n_old:
        idx = list(range(len(old)))
        rng.shuffle(idx)
        picked.extend(old[i] for i in idx[: n_old - len(picked)])
    mixed = [*new, *picked]
    rng.shuffle(mixed)
    return mixed


# ----------------------------------------------------------------------------------------------- freezing
def _encoder_parts(model: nn.Module) -> tuple[nn.Module, Sequence[nn.Module]]:
    """(embeddings module, list of encoder layers) of a finsent classifier, an HF encoder or an HF MLM model."""
    from transformers import PreTrainedModel

    inner = unwrap(model)
    hf = inner if isinstance(inner, PreTrainedModel) else next(
        (m for m in inner.modules() if isinstance(m, PreTrainedModel)), None)
    if hf is None:
        raise ConfigError("freeze_layers: the model holds no Hugging Face encoder")
    base = hf.base_model
    emb = getattr(base, "embeddings", None)
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj: Any = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, (nn.ModuleList, list)) and emb is not None:
            return emb, list(obj)
    raise ConfigError(f"freeze_layers: cannot find the embeddings and layers of {type(base).__name__}")


def freeze_lowest_layers(model: nn.Module, k: int) -> int:
    """Freeze (``requires_grad=False``) the embeddings and the lowest ``k`` encoder layers; ``k == 0`` freezes
    nothing. Returns the number of frozen parameter *elements*. With tied MLM decoder weights, freezing the
    word embeddings freezes the decoder matrix too (its bias still trains). Build the optimizer afterwards."""
    if k < 0:
        raise ConfigError(f"freeze_layers: must be >= 0, got {k}")
    if k == 0:
        return 0
    emb, layers = _encoder_parts(model)
    if k > len(layers):
        raise ConfigError(f"freeze_layers: {k} is more than the encoder's {len(layers)} layers")
    frozen = 0
    seen: set[int] = set()
    for module in (emb, *layers[:k]):
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            p.requires_grad_(False)
            frozen += p.numel()
    return frozen
