"""The pieces of a fine-tuning step and of evaluation, as plain functions (no Ray; testable on one process).

One micro-step: forward → cross-entropy (+ ``l1·Σ|W_out|`` + forgetting penalties; with R-Drop two dropout
passes of the batch, their mean cross-entropy + ``rdrop·`` symmetric KL between them) → backward → optional
FGM/PGD pass (its loss is the task loss on perturbed embeddings; its gradients add up with the clean ones).
Every ``grad_accum`` micro-steps: unscale, clip, optimizer step, LR schedule step, zero grads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from classifier.labels import LabelSet
from classifier.metrics import compute_metrics
from classifier.modeling import FinsentClassifier

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
#: loss parts averaged per epoch into ``train_<part>`` metrics
LOGGED_PARTS: tuple[str, ...] = ("l1", "l2sp", "ewc", "rdrop_kl", "distill_ce", "distill_kl")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A context-manager factory: bf16/fp16 autocast on CUDA, else nothing."""
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def unwrap(model: nn.Module) -> FinsentClassifier:
    """The FinsentClassifier inside a DDP/FSDP wrapper (or the model itself)."""
    return getattr(model, "module", model)  # type: ignore[return-value]


def logits_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def criterion_loss(criterion: nn.Module, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``criterion(logits, labels)``; a criterion with ``uses_batch = True`` gets the whole batch instead of
    its labels (distillation reads the teacher's probabilities from it)."""
    if getattr(criterion, "uses_batch", False):
        return criterion(logits, batch)
    return criterion(logits, batch["labels"])


def task_loss(model: nn.Module, batch: Batch, criterion: nn.Module) -> torch.Tensor:
    """The criterion on the model's logits (computed in float32, also under autocast)."""
    return criterion_loss(criterion, logits_of(model, batch).float(), batch)


@dataclass
class Penalties:
    """Regularisers added to the task loss: ``l1·Σ|W_out|`` (the seed's remedy for overfitting) and the
    forgetting controls of :mod:`training.forgetting` (L2-SP towards the base weights, EWC)."""

    l1: float = 0.0
    l2sp: Any = None  # training.forgetting.L2SP: .penalty(model, step) -> Tensor
    ewc: Any = None  # training.forgetting.EWC: .penalty(model) -> Tensor

    @property
    def active(self) -> bool:
        return self.l1 > 0 or self.l2sp is not None or self.ewc is not None

    def __call__(self, model: FinsentClassifier, step: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        total: torch.Tensor | None = None
        parts: dict[str, float] = {}

        def add(name: str, value: torch.Tensor) -> None:
            nonlocal total
            parts[name] = float(value.detach())
            total = value if total is None else total + value

        if self.l1 > 0:
            add("l1", self.l1 * model.l1_penalty())
        if self.l2sp is not None:
            add("l2sp", self.l2sp.penalty(model, step))
        if self.ewc is not None:
            add("ewc", self.ewc.penalty(model))
        return total, parts


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """``(KL(p_a || p_b) + KL(p_b || p_a)) / 2`` per example (summed over classes), averaged over the batch."""
    la, lb = torch.log_softmax(logits_a.float(), -1), torch.log_softmax(logits_b.float(), -1)
    kl_ab = (la.exp() * (la - lb)).sum(-1)
    kl_ba = (lb.exp() * (lb - la)).sum(-1)
    return 0.5 * (kl_ab + kl_ba).mean()


def rdrop_task_loss(model: nn.Module, batch: Batch, criterion: nn.Module, alpha: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """R-Drop (Liang et al. 2021): the batch twice in one forward (two dropout masks; one pass keeps DDP
    happy) → ``(mean CE + alpha·KL, mean CE, KL)``."""
    doubled = {k: torch.cat([batch[k], batch[k]]) for k in ("input_ids", "attention_mask")}
    la, lb = logits_of(model, doubled).float().chunk(2)
    ce = 0.5 * (criterion_loss(criterion, la, batch) + criterion_loss(criterion, lb, batch))
    kl = symmetric_kl(la, lb)
    return ce + alpha * kl, ce, kl


def total_loss(model: nn.Module, batch: Batch, criterion: nn.Module, penalties: Penalties, step: int = 0,
               rdrop: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """``(task + penalties, task, parts)``; with ``rdrop > 0`` the task loss is R-Drop's. ``parts`` holds the
    penalties, R-Drop's KL and what the criterion itself reports in its ``parts`` dict (distillation: its
    cross-entropy and KL terms)."""
    parts: dict[str, float] = {}
    if rdrop > 0:
        loss, ce, kl = rdrop_task_loss(model, batch, criterion, rdrop)
        parts["rdrop_kl"] = float(kl.detach())
        task = ce
    else:
        loss = task = task_loss(model, batch, criterion)
    parts.update(getattr(criterion, "parts", {}))
    pen, pen_parts = penalties(unwrap(model), step)
    parts.update(pen_parts)
    return (loss if pen is None else loss + pen), task, parts


@dataclass
class StepContext:
    """What a micro-step needs besides the batch; built once per run."""

    model: nn.Module  # possibly DDP-wrapped
    criterion: nn.Module
    penalties: Penalties = field(default_factory=Penalties)
    adversary: Any = None  # FGM | PGD | None
    grad_accum: int = 1
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    scaler: Any = None  # torch.amp.GradScaler for fp16
    rdrop: float = 0.0  # R-Drop weight (0 = off)


def micro_step(ctx: StepContext, batch: Batch, step: int, sync: bool = True) -> dict[str, float]:
    """Forward + backward (+ adversarial pass) of one micro-batch; gradients accumulate in ``.grad``.
    ``sync=False`` skips the DDP all-reduce (gradient accumulation)."""
    no_sync = getattr(ctx.model, "no_sync", None)
    sync_ctx = contextlib.nullcontext() if sync or no_sync is None else no_sync()

    def backward(loss: torch.Tensor) -> None:
        loss = loss / ctx.grad_accum
        (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()

    out: dict[str, float] = {}
    with sync_ctx:
        with ctx.autocast():
            loss, task, parts = total_loss(ctx.model, batch, ctx.criterion, ctx.penalties, step, ctx.rdrop)
        backward(loss)
        out["loss"], out["task_loss"] = float(loss.detach()), float(task.detach())
        out.update(parts)
        if ctx.adversary is not None:
            def adv_loss_fn() -> torch.Tensor:
                with ctx.autocast():
                    return task_loss(ctx.model, batch, ctx.criterion)

            adv = ctx.adversary.step(adv_loss_fn, backward)
            if adv is not None:
                out["adv_loss"] = float(adv)
    return out


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float,
                   scaler: Any = None) -> float:
    """Clip (after unscaling), step, schedule, zero grads; returns the pre-clip gradient norm."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in params]))) \
            if params else 0.0
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


@dataclass
class EpochStats:
    steps: int = 0
    examples: int = 0
    loss_sum: float = 0.0
    adv_loss_sum: float = 0.0
    adv_count: int = 0
    penalty_sums: dict[str, float] = field(default_factory=dict)
    micro_steps: int = 0
    seconds: float = 0.0
    nonfinite: int = 0

    def add(self, out: dict[str, float], n: int) -> None:
        self.micro_steps += 1
        self.examples += n
        self.loss_sum += out["loss"]
        if "adv_loss" in out:
            self.adv_loss_sum += out["adv_loss"]
            self.adv_count += 1
        for k in LOGGED_PARTS:
            if k in out:
                self.penalty_sums[k] = self.penalty_sums.get(k, 0.0) + out[k]

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(1, self.micro_steps)

    def summary(self) -> dict[str, float]:
        out = {"train_loss": self.mean_loss, "train_examples": float(self.examples),
               "train_time_s": self.seconds,
               "train_examples_per_s": self.examples / self.seconds if self.seconds > 0 else 0.0,
               "optimizer_steps": float(self.steps)}
        if self.adv_count:
            out["train_adv_loss"] = self.adv_loss_sum / self.adv_count
        for k, v in self.penalty_sums.items():
            out[f"train_{k}"] = v / max(1, self.micro_steps)
        return out


def train_epoch(ctx: StepContext, loader: Iterable[Batch], optimizer: torch.optim.Optimizer, scheduler: Any,
                max_grad_norm: float, global_step: int, num_batches: int,
                on_step: Callable[[int, dict[str, float], EpochStats], None] | None = None,
                world_size: int = 1) -> tuple[EpochStats, int]:
    """One pass over ``loader``; returns the epoch's stats and the new global (optimizer) step.

    ``examples`` counts all workers' examples (``world_size`` × this worker's) so throughput is global."""
    import time

    ctx.model.train()
    stats = EpochStats()
    t0 = time.perf_counter()
    # the last optimizer step of an epoch may average fewer micro-batches; it still happens
    for i, batch in enumerate(loader):
        last_of_group = (i + 1) % ctx.grad_accum == 0 or i + 1 == num_batches
        out = micro_step(ctx, batch, global_step, sync=last_of_group)
        if not math.isfinite(out["loss"]):
            stats.nonfinite += 1
        stats.add(out, int(batch["labels"].shape[0]) * world_size)
        if last_of_group:
            optimizer_step(ctx.model, optimizer, scheduler, max_grad_norm, ctx.scaler)
            global_step += 1
            stats.steps += 1
        stats.seconds = time.perf_counter() - t0
        if on_step is not None:
            on_step(i, out, stats)
    if stats.nonfinite:
        log.warning("%d micro-steps had a non-finite loss: lower lr or use precision=fp32", stats.nonfinite)
    return stats, global_step


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Iterable[Batch], device: torch.device,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [n, k] float32 on CPU, labels [n])`` over a loader, in loader order, in eval mode."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            logits = logits_of(model, batch)
        all_logits.append(logits.float().cpu())
        all_labels.append(batch["labels"].cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def report_from_logits(logits: torch.Tensor, y: torch.Tensor, labels: LabelSet | Sequence[str]) -> dict[str, Any]:
    """The full dev report (:func:`classifier.metrics.compute_metrics`) plus the unweighted mean ``loss``."""
    names = list(LabelSet.of(labels).names)
    report = compute_metrics([names[i] for i in y.tolist()], [names[i] for i in logits.argmax(-1).tolist()], names)
    report["loss"] = float(torch.nn.functional.cross_entropy(logits.float(), y))
    return report


def evaluate(model: nn.Module, loader: Iterable[Batch], labels: LabelSet | Sequence[str], device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, Any]:
    """Dev report of ``model`` over every batch of ``loader`` (one process)."""
    logits, y = predict_logits(unwrap(model), loader, device, autocast)
    return report_from_logits(logits, y, labels)


def flat_dev_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Scalar ``dev_*`` metrics of a dev report (what Ray gets, what the CSV holds)."""
    out = {f"dev_{k}": float(report[k]) for k in ("loss", "accuracy", "macro_f1", "micro_f1", "macro_precision",
                                                  "macro_recall")}
    out["dev_mean_macro_f1"] = float(report.get("mean_macro_f1", report["macro_f1"]))
    for lab, c in report["per_class"].items():
        out[f"dev_f1_{lab}"] = float(c["f1"])
    for name, r in (report.get("by_source") or {}).items():
        out[f"dev_macro_f1@{name}"] = float(r["macro_f1"])
    return out
