"""Domain-adaptive MLM pretraining of the base encoder on a finance corpus, on Ray Train.

    python -m training pretrain --config training/configs/pretrain.yaml
    python -m training pretrain --config training/configs/pretrain.yaml max_corpus_chars=2000000 max_steps=300
    finsent pretrain --config training/configs/pretrain.yaml resume=true          # continue a stopped run
    ray job submit --working-dir . -- python -m training pretrain --config training/configs/pretrain.yaml
    finsent finetune base_model=runs/pretrain                                      # fine-tune from the result

Each worker reads the corpus, keeps its share of the documents (every ``num_workers``-th), encodes them with
word boundaries, packs them into ``max_len`` windows and trains a ``*ForMaskedLM`` (MLM head added when the
checkpoint has none) with whole-word masking under DDP (:mod:`training.mlm`). A seeded slice of the documents
is held out; its MLM loss and masked-token accuracy are measured before training, at every ``eval_every``
steps and at the end of each epoch, and each such point is reported to Ray Train with a checkpoint. Forgetting
control: L2-SP towards the starting weights, layer-wise LR decay, freezing of the lowest layers
(:mod:`training.forgetting`, :mod:`training.optim`).

Lifecycle: the shared driver (:mod:`training.lifecycle`: resolve paths → check inputs → plan/resume →
start or join Ray → ``TorchTrainer`` → export) runs :class:`PretrainRecipe`: setup / train_step / evaluate /
checkpoint (plain torch; the worker reaches Ray Train only through its ``WorkerContext``) and the export:
``output_dir`` is an encoder directory (:func:`training.mlm.save_encoder_dir`) with ``pretrain_report.json``
and ``pretrain_curves.png`` beside the weights.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from classifier.config import build, to_dict
from classifier.errors import DataError
from training.config import (
    EncoderSettings,
    ForgettingSettings,
    TrainSettings,
    check_min,
    field_error,
)
from training.lifecycle import RUN_FILE, Outcome, Recipe, WorkerContext, run_recipe  # noqa: F401 - RUN_FILE re-exported

log = logging.getLogger(__name__)

ENCODER_SUBDIR = "encoder"
STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"
REPORT_FILE = "pretrain_report.json"
CURVES_PNG = "pretrain_curves.png"
_SHARED = "$FINSENT_SHARED"

#: settings a resumed run must share with the run it continues (the data and model it was built on)
RESUME_KEYS = ("base_model", "corpus_files", "max_corpus_chars", "max_corpus_docs", "heldout_fraction",
               "heldout_max_docs", "lexicon_files", "extra_words", "compound_tokens", "max_len", "batch_size",
               "grad_accum", "num_workers", "seed")


class PretrainConfig(EncoderSettings, ForgettingSettings, TrainSettings):
    """Continue MLM pretraining of an encoder on unlabelled text (one document a line)."""

    # ------------------------------------------------------------------ data
    corpus_files: list[str] = Field(
        [f"{_SHARED}/data/corpus/fin_corpus.txt"],
        description="unlabelled text files, one document a line; $FINSENT_SHARED → ../shared",
    )
    max_corpus_chars: int = Field(
        0,
        description="read documents until this many characters (0 = the whole corpus)",
    )
    max_corpus_docs: int = Field(0, description="read at most this many documents (0 = all)")
    heldout_fraction: float = Field(
        0.01,
        description="fraction of documents held out to measure MLM loss/accuracy",
    )
    heldout_max_docs: int = Field(
        500,
        description="at most this many held-out documents (keeps evaluation short)",
    )

    # ------------------------------------------------------------------ model
    compound_tokens: bool = Field(
        True,
        description="pretrain the lexicon's compound tokens as single pieces (as fine-tuning uses them); "
        "false = lexicon words stay multi-piece, masked as whole words",
    )
    max_len: int = Field(128, description="window length in pieces including [CLS]/[SEP]")

    # ------------------------------------------------------------------ masking
    mlm_probability: float = Field(
        0.15,
        description="fraction of (jieba) words chosen for prediction in each window",
    )
    mask_prob: float = Field(0.8, description="of the chosen words: fraction replaced by [MASK]")
    random_prob: float = Field(
        0.1,
        description="of the chosen words: fraction replaced by random pieces (the rest stay)",
    )

    # ------------------------------------------------------------------ schedule
    epochs: int = Field(1, description="passes over the training windows")
    max_steps: int = Field(
        0,
        description="stop after this many optimizer steps in total (0 = run all epochs)",
    )
    head_warmup_steps: int = Field(
        0,
        description="train only the MLM head (transform, LayerNorm, decoder bias) for this many first steps "
        "when the base had none, so a random head does not push random gradients into the encoder; the "
        "encoder's own warm-up + decay schedule starts after them (0 = off; ignored when the checkpoint had "
        "a head)",
    )
    eval_every: int = Field(
        0,
        description="also evaluate, report and checkpoint every this many steps (0 = at epoch ends only)",
    )
    eval_at_start: bool = Field(
        True,
        description="measure the held-out MLM loss/accuracy before the first step",
    )

    # ------------------------------------------------------------------ run
    output_dir: str = Field(
        "runs/pretrain",
        description="the exported encoder directory (use it as fine-tuning base_model), with the report and "
        "curves",
    )

    @model_validator(mode="after")
    def _check_pretrain(self) -> PretrainConfig:
        if not self.corpus_files:
            raise field_error("corpus_files", "give at least one text file, e.g. corpus_files=[corpus.txt]")
        check_min(self, ("heldout_max_docs",), 1)
        check_min(self, ("max_corpus_chars", "max_corpus_docs", "max_steps", "eval_every", "head_warmup_steps"), 0)
        if self.max_len < 16:
            raise field_error("max_len", f"must be at least 16, got {self.max_len}")
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise field_error("heldout_fraction", f"must be in [0, 0.5), got {self.heldout_fraction}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise field_error("mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1.0:
            raise field_error("mask_prob", f"mask_prob and random_prob must be >= 0 with a sum <= 1, got "
                       f"{self.mask_prob} + {self.random_prob}")
        return self

    def path_changes(self) -> dict[str, Any]:
        from training.config import expand_path

        return {**super().path_changes(), "corpus_files": [str(expand_path(p)) for p in self.corpus_files]}


def resolve_paths(cfg: PretrainConfig) -> PretrainConfig:
    """A copy with every path absolute (workers may run elsewhere) and the defaults filled in."""
    from training.config import resolve_paths as resolve

    return resolve(cfg)


def from_dict(values: dict[str, Any]) -> PretrainConfig:
    return build(PretrainConfig, values)


# ================================================================================================ recipe
@dataclass
class Stats:
    """Sums over masked pieces: cross-entropy, correct predictions, count."""

    loss: float = 0.0
    correct: float = 0.0
    n: float = 0.0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: torch.Tensor) -> None:
        self.loss += float(loss)
        self.correct += float(correct)
        self.n += float(n)

    def reduced(self, device: torch.device) -> Stats:
        """Summed over all workers."""
        t = _all_reduce(torch.tensor([self.loss, self.correct, self.n], dtype=torch.float64, device=device))
        return Stats(*t.tolist())

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.n, 1.0)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.n, 1.0)


def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    if _dist():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN if op == "min" else
                                     torch.distributed.ReduceOp.SUM)
    return t


class PretrainRecipe(Recipe):
    """Pretraining on one worker of ``ctx.world`` (setup / train_step / evaluate / checkpoint, plain torch),
    and its driver-side export. ``ctx`` (:class:`training.lifecycle.WorkerContext`) wraps the objective for
    DDP and reports; without one it runs in this process."""

    name = "pretrain"
    config_class = PretrainConfig
    resume_must_match = RESUME_KEYS

    def __init__(self, cfg: PretrainConfig, ctx: WorkerContext | None = None) -> None:
        super().__init__(cfg, ctx)
        self.rank, self.world, self.device = self.ctx.rank, self.ctx.world, self.ctx.device

    # ------------------------------------------------------------------ driver side
    @classmethod
    def export(cls, outcome: Outcome, cfg: PretrainConfig, prepared: Any) -> Path:
        result = outcome.result
        if result.checkpoint is None:
            raise DataError("pretraining finished without a checkpoint (no step ran?)")
        out = Path(cfg.output_dir)
        with result.checkpoint.as_directory() as d:
            export(Path(d), out, cfg, outcome.wall_time_s, outcome.use_gpu)
        log.info("encoder written to %s", out)
        return out

    # ------------------------------------------------------------------ setup
    def setup(self, checkpoint_dir: Path | None = None) -> None:
        from training.forgetting import L2SP, freeze_lowest_layers
        from training.mlm import (
            MaskedLMObjective,
            WholeWordMaskCollator,
            build_mlm_model,
            head_prefix,
            load_mlm_state,
            load_tokenizer,
        )
        from training.optim import build_scheduler, param_groups

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(cfg.base_model, cfg.lexicon_files or [], cfg.extra_words, cfg.max_len,
                                        cfg.compound_tokens)
        self.collator = WholeWordMaskCollator(self.tokenizer, cfg.mlm_probability, cfg.mask_prob, cfg.random_prob)
        self._setup_data()
        self.model, self.head_loaded = build_mlm_model(cfg.base_model, self.tokenizer)
        # L2-SP anchors are the *starting* weights (also on resume, before the checkpoint is loaded)
        self.l2sp = L2SP(self.model, cfg.l2sp, cfg.l2sp_anneal_steps,
                         exclude=(head_prefix(self.model),)) if cfg.l2sp > 0 else None
        self.frozen = freeze_lowest_layers(self.model, cfg.freeze_layers)
        self.progress: dict[str, Any] = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "history": [],
                                         "train_curve": []}
        if checkpoint_dir is not None:
            load_mlm_state(self.model, checkpoint_dir / ENCODER_SUBDIR / "model.safetensors")
            self.progress = json.loads((checkpoint_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
            log.info("resumed at step %d", self.progress["global_step"])
        self.objective = self.ctx.prepare_model(MaskedLMObjective(self.model))
        groups = param_groups(self.model, cfg.lr, cfg.weight_decay, cfg.layerwise_lr_decay,
                              head_prefix=head_prefix(self.model))
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        self.head_warmup = 0 if self.head_loaded else min(cfg.head_warmup_steps, self.total_steps)
        if self.head_warmup:
            self.scheduler = head_first_scheduler(self.optimizer, self.total_steps, cfg.warmup_ratio,
                                                  self.head_warmup)
        else:
            self.scheduler = build_scheduler(self.optimizer, self.total_steps, cfg.warmup_ratio)
        use_scaler = cfg.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        if checkpoint_dir is not None:
            state = torch.load(checkpoint_dir / STATE_FILE, map_location=self.device, weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])

    def _setup_data(self) -> None:
        from training.mlm import encode_words, pack_windows, read_corpus, split_heldout

        cfg = self.cfg
        t0 = time.perf_counter()
        docs = read_corpus(cfg.corpus_files, cfg.max_corpus_chars, cfg.max_corpus_docs)
        train_idx, held_idx = split_heldout(len(docs), cfg.heldout_fraction, cfg.heldout_max_docs, cfg.seed)
        mine = train_idx[self.rank :: self.world]
        mine_held = held_idx[self.rank :: self.world]
        tok = self.tokenizer
        self.train_windows = pack_windows(encode_words(tok, [docs[i] for i in mine]), cfg.max_len,
                                          tok.cls_id, tok.sep_id)
        held_windows = pack_windows(encode_words(tok, [docs[i] for i in mine_held]), cfg.max_len,
                                    tok.cls_id, tok.sep_id)
        # fixed masks for the held-out slice, so every evaluation scores the same predictions
        eb = cfg.eval_batch_size
        self.eval_batches = [self.collator(held_windows[i : i + eb], _gen(cfg.seed, 7, self.rank, i))
                             for i in range(0, len(held_windows), eb)]
        per_step = cfg.per_worker_batch * cfg.grad_accum
        local = torch.tensor([len(self.train_windows) // per_step], dtype=torch.long, device=self.device)
        self.steps_per_epoch = int(_all_reduce(local, "min").item())  # every worker takes the same steps
        if self.steps_per_epoch == 0:
            raise DataError(f"the corpus gives worker {self.rank} only {len(self.train_windows)} windows of "
                            f"{cfg.max_len} pieces, fewer than one step of {per_step}: use more text or a "
                            "smaller batch_size / num_workers")
        n_tokens = sum(len(w.ids) for w in self.train_windows)
        self.data_stats = {
            "corpus_docs": len(docs), "corpus_chars": sum(map(len, docs)), "train_docs": len(train_idx),
            "heldout_docs": len(held_idx), "train_windows_rank0": len(self.train_windows),
            "train_pieces_rank0": n_tokens, "heldout_windows_rank0": len(held_windows),
            "steps_per_epoch": self.steps_per_epoch, "prep_time_s_rank0": round(time.perf_counter() - t0, 1),
        }
        log.info("data: %s", self.data_stats)

    @property
    def total_steps(self) -> int:
        total = self.cfg.epochs * self.steps_per_epoch
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    # ------------------------------------------------------------------ steps
    def _autocast(self) -> Any:
        from training.engine import autocast_factory

        return autocast_factory(self.cfg.precision, self.device)()

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, epoch, self.rank]).permutation(len(self.train_windows))

    def train_step(self, epoch: int, step_in_epoch: int, order: np.ndarray, stats: Stats) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-steps) on this worker's windows."""
        import contextlib

        cfg = self.cfg
        self.objective.train()
        bs = cfg.per_worker_batch
        step = self.progress["global_step"]
        penalty_value = 0.0
        for micro in range(cfg.grad_accum):
            start = (step_in_epoch * cfg.grad_accum + micro) * bs
            windows = [self.train_windows[i] for i in order[start : start + bs]]
            batch = self.collator(windows, _gen(cfg.seed, epoch, self.rank, step_in_epoch, micro))
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.objective, "no_sync") \
                else self.objective.no_sync()
            with sync:
                with self._autocast():
                    loss_sum, correct, n = self.objective(**batch)
                loss = loss_sum / n.clamp(min=1) / cfg.grad_accum
                if last and self.l2sp is not None:
                    pen = self.l2sp.penalty(self.model, step)
                    penalty_value = float(pen.detach())
                    loss = loss + pen
                self.scaler.scale(loss).backward()
            stats.add(loss_sum.detach(), correct.detach(), n.detach())
        self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress["global_step"] = step + 1
        return {"l2sp": penalty_value, "lr": self.scheduler.get_last_lr()[-1]}

    @torch.no_grad()
    def evaluate(self) -> Stats:
        """MLM loss and masked-piece accuracy on the held-out slice, summed over all workers."""
        from training.forgetting import unwrap

        objective = unwrap(self.objective)
        objective.eval()
        stats = Stats()
        for batch in self.eval_batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                stats.add(*objective(**batch))
        objective.train()
        return stats.reduced(self.device)

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self, path: Path) -> Path:
        from training.mlm import save_encoder_dir

        save_encoder_dir(path / ENCODER_SUBDIR, self.model, self.tokenizer, self.export_meta())
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}, path / STATE_FILE)
        progress = {**self.progress, "config": to_dict(self.cfg), "data": self.data_stats}
        (path / PROGRESS_FILE).write_text(json.dumps(progress, ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    def export_meta(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"base_model": cfg.base_model, "corpus_files": list(cfg.corpus_files),
                "corpus_chars": self.data_stats["corpus_chars"], "steps": self.progress["global_step"],
                "max_len": cfg.max_len, "head_loaded_from_base": self.head_loaded}

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        """The worker's loop (:func:`run_training`), each evaluation point reported with a checkpoint."""
        if self.rank == 0:
            log.info("MLM head %s; %d compound tokens; %d frozen params; %d steps (%d per epoch)",
                     "loaded" if self.head_loaded else "added", len(self.tokenizer.compound_words), self.frozen,
                     self.total_steps, self.steps_per_epoch)
        run_training(self, lambda metrics: self.ctx.report(metrics, self.save_checkpoint),
                     show_progress=self.cfg.progress and self.rank == 0)


def head_first_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float, head_steps: int
                         ) -> torch.optim.lr_scheduler.LambdaLR:
    """Head groups (``name`` starting with "head", see :func:`training.optim.param_groups`) follow the usual
    warm-up + linear decay over all steps; the other groups stay at LR 0 for ``head_steps`` steps and then run
    their own warm-up + decay over the remaining steps."""
    from training.optim import warmup_linear

    head = warmup_linear(total, int(round(total * warmup_ratio)))
    rest_total = max(1, total - head_steps)
    rest = warmup_linear(rest_total, int(round(rest_total * warmup_ratio)))

    def encoder(step: int) -> float:
        return 0.0 if step < head_steps else rest(step - head_steps)

    lambdas = [head if str(g.get("name", "")).startswith("head") else encoder for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def _gen(seed: int, *parts: int) -> torch.Generator:
    from training.mlm import batch_generator

    return batch_generator(seed, *parts)


def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (``config``: ``to_dict(PretrainConfig)`` with resolved paths)."""
    return PretrainRecipe.train_func(config)


def run_training(recipe: PretrainRecipe, report: Callable[[dict[str, Any]], None], show_progress: bool) -> None:
    """The training loop over epochs and steps, with evaluation points (plain torch + the ``report`` hook)."""
    cfg, prog = recipe.cfg, recipe.progress
    total = recipe.total_steps
    t_start = time.perf_counter() - float(prog.get("elapsed_s", 0.0))
    if cfg.eval_at_start and prog["global_step"] == 0 and not prog["history"]:
        ev = recipe.evaluate()
        prog["history"].append(_point(0, 0.0, None, ev, {}, 0.0))
        log.info("held-out before training: loss %.4f, masked accuracy %.4f", ev.mean_loss, ev.accuracy)
    bar = None
    if show_progress:
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(total=total, initial=prog["global_step"], desc="pretrain", file=sys.stderr, ascii=not tty,
                   mininterval=0.5 if tty else 30.0)
    interval = Stats()  # training sums since the last report
    running = Stats()  # for the progress bar / train curve
    last: dict[str, float] = {}
    while prog["epoch"] < cfg.epochs and prog["global_step"] < total:
        epoch = prog["epoch"]
        order = recipe.epoch_order(epoch)
        while True:
            last = recipe.train_step(epoch, prog["step_in_epoch"], order, interval)
            prog["step_in_epoch"] += 1
            step = prog["global_step"]
            if step % cfg.log_every == 0 or step == total:
                delta = Stats(interval.loss - running.loss, interval.correct - running.correct,
                              interval.n - running.n)
                running = Stats(interval.loss, interval.correct, interval.n)
                prog["train_curve"].append([step, round(delta.mean_loss, 5)])
                if bar is not None:
                    bar.set_postfix(loss=f"{delta.mean_loss:.3f}", acc=f"{delta.accuracy:.3f}", refresh=False)
            if bar is not None:
                bar.update(1)
            epoch_end = prog["step_in_epoch"] >= recipe.steps_per_epoch
            if epoch_end:
                prog["epoch"], prog["step_in_epoch"] = epoch + 1, 0
            if epoch_end or step == total or (cfg.eval_every and step % cfg.eval_every == 0):
                ev = recipe.evaluate()
                tr = interval.reduced(recipe.device)
                prog["elapsed_s"] = time.perf_counter() - t_start
                point = _point(step, step / recipe.steps_per_epoch, tr, ev, last, prog["elapsed_s"])
                prog["history"].append(point)
                log.info("step %d (epoch %.2f): train loss %.4f acc %.4f | held-out loss %.4f acc %.4f (%d pieces)",
                         step, point["epoch"], tr.mean_loss, tr.accuracy, ev.mean_loss, ev.accuracy, ev.n)
                report({k: v for k, v in point.items() if v is not None})
                interval, running = Stats(), Stats()
            if epoch_end or step >= total:
                break
    if bar is not None:
        bar.close()


def _point(step: int, epoch: float, tr: Stats | None, ev: Stats, last: dict[str, float], elapsed: float
           ) -> dict[str, Any]:
    return {
        "step": step, "epoch": round(epoch, 4),
        "train_loss": tr.mean_loss if tr else None, "train_accuracy": tr.accuracy if tr else None,
        "heldout_loss": ev.mean_loss if ev.n else None, "heldout_accuracy": ev.accuracy if ev.n else None,
        "heldout_perplexity": math.exp(min(ev.mean_loss, 50.0)) if ev.n else None, "heldout_masked": int(ev.n),
        "l2sp_penalty": last.get("l2sp"), "lr": last.get("lr"), "elapsed_s": round(elapsed, 1),
    }


# ================================================================================================ driver
def run_pretrain(cfg: PretrainConfig) -> Path:
    """Run pretraining on Ray Train (:mod:`training.lifecycle`: joins $RAY_ADDRESS or starts a local Ray) and
    export the encoder into ``cfg.output_dir``; returns that path."""
    return run_recipe(PretrainRecipe, cfg)


def export(checkpoint_dir: Path, out: Path, cfg: PretrainConfig, wall_s: float, use_gpu: bool) -> None:
    """Copy the checkpoint's encoder into ``out`` and write the report and curves beside it."""
    from training.callbacks import machine_info

    shutil.copytree(checkpoint_dir / ENCODER_SUBDIR, out, dirs_exist_ok=True)
    progress = json.loads((checkpoint_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    history = progress["history"]
    report = {
        "steps": progress["global_step"], "epochs_completed": progress["epoch"],
        "final": history[-1] if history else None, "history": history, "train_curve": progress["train_curve"],
        "data": progress.get("data", {}), "config": to_dict(cfg), "wall_time_s_this_run": round(wall_s, 1),
        "train_time_s": progress.get("elapsed_s"), "machine": {**machine_info(), "use_gpu": use_gpu,
                                                                 "num_workers": cfg.num_workers},
    }
    (out / REPORT_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    plot_curves(history, progress["train_curve"], out / CURVES_PNG)


def plot_curves(history: Sequence[dict[str, Any]], train_curve: Sequence[Sequence[float]], path: Path) -> Path:
    """Left: training loss (rank 0, every log_every steps) and held-out loss; right: masked-token accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.4), dpi=120)
    if train_curve:
        ax1.plot([s for s, _ in train_curve], [v for _, v in train_curve], ".-", lw=1, ms=3, alpha=0.7,
                 label="train (rank 0)")
    held = [h for h in history if h.get("heldout_loss") is not None]
    ax1.plot([h["step"] for h in held], [h["heldout_loss"] for h in held], "s-", label="held-out")
    ax1.set_title("MLM loss", fontsize=9)
    tr = [(h["step"], h["train_accuracy"]) for h in history if h.get("train_accuracy") is not None]
    if tr:
        ax2.plot([s for s, _ in tr], [a for _, a in tr], "o-", label="train")
    ax2.plot([h["step"] for h in held], [h["heldout_accuracy"] for h in held], "s-", label="held-out")
    ax2.set_title("masked-token accuracy", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    from classifier.metrics import save_figure

    return save_figure(fig, path)


# ================================================================================================ CLI
def main(argv: Sequence[str] | None = None) -> int:
    from classifier.config import parse_command

    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["pretrain"]:
        args_in = args_in[1:]
    cfg = parse_command(
        PretrainConfig, args_in, prog="finsent pretrain",
        description="Domain-adaptive MLM pretraining (whole-word masking) on Ray Train. Settings come from the "
                    "defaults, then --config YAML (e.g. training/configs/pretrain.yaml), then key=value overrides.",
    )
    from training.cli import run_quietly

    out = run_quietly(cfg, lambda: run_pretrain(cfg))
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    final = report["final"] or {}
    loss, acc = final.get("heldout_loss"), final.get("heldout_accuracy")
    print(f"encoder: {out}  (steps {report['steps']}"
          + (f", held-out MLM loss {loss:.4f}, masked accuracy {acc:.4f})" if loss is not None else ")"))
    print(f"fine-tune from it: finsent finetune base_model={out}")
    return 0


if __name__ == "__main__":
    from classifier.config import run_command

    sys.exit(run_command("finsent pretrain", main, sys.argv[1:]))
