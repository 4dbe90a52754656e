"""Fine-tune a finsent classifier on Ray Train (``TorchTrainer``), then export the best checkpoint.

Launch (see docs/training.md)::

    python -m training finetune --config training/configs/finetune.yaml epochs=3 adversarial=fgm
    ray job submit --working-dir . -- python -m training finetune --config training/configs/finetune.yaml

The run goes through the shared lifecycle (:mod:`training.lifecycle`: resolve paths → check inputs →
plan/resume → start or join Ray → ``TorchTrainer`` → export). This module is the recipe,
:class:`FinetuneRecipe`: driver side it checks the labelled files, counts the data for the report and exports
the best checkpoint (:func:`export_best`: model directory, report, metrics, plots, then the calibration and
companion fitted on dev); worker side, setup (model, data, optimizer; restore the latest checkpoint) → per
epoch train, every worker scores its dev shard (all see the whole dev report), rank 0 saves a checkpoint,
report → done. :mod:`training.distill` reuses all of it with a student model and a distillation loss.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset

from classifier.config import to_dict
from classifier.errors import ConfigError, DataError, FinsentError, ModelDirError
from classifier.labels import LabelSet
from classifier.metrics import format_report, plot_confusion, save_report
from classifier.modeldir import (
    WEIGHTS_FILE,
    ModelMeta,
    clear_extras,
    load_model_dir,
    load_weights,
    save_model_dir,
    write_report,
)
from classifier.modeling import FinsentClassifier, build_classifier
from classifier.tokenization import FinsentTokenizer, TruncationConfig
from training.adversarial import build_adversary
from training.averaging import EMA
from training.callbacks import (
    CONFUSION_PNG,
    CURVES_PNG,
    Progress,
    build_report,
    plot_curves,
    select_best,
    write_metrics,
)
from training.checkpoint import EMA_SUBDIR, MODEL_SUBDIR, load_checkpoint, read_progress, save_checkpoint
from training.config import (  # noqa: F401 - from_dict, resolve_paths: re-exported
    ClassifierSettings,
    FinetuneConfig,
    ForgettingSettings,
    from_dict,
    resolve_paths,
)
from training.data import (
    Collator,
    EncodedDataset,
    FinetuneData,
    LengthGroupedBatchSampler,
    class_weight_vector,
    load_finetune_data,
)
from training.engine import (
    EpochStats,
    Penalties,
    StepContext,
    autocast_factory,
    flat_dev_metrics,
    predict_logits,
    report_from_logits,
    seed_everything,
    train_epoch,
)
from training.lifecycle import RUN_FILE, Outcome, Recipe, ensure_ray, resolve_use_gpu, run_recipe  # noqa: F401
from training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

#: settings a resumed run must share with the run it continues (data, model, batching, schedule)
RESUME_MUST_MATCH: tuple[str, ...] = (
    "train_files", "extra_train_files", "dev_file", "max_train_examples", "base_model", "init_model",
    "lexicon_files", "extra_words", "labels", "max_len", "head_tokens", "batch_size", "grad_accum", "epochs",
    "seed", "rehearsal_files", "rehearsal_fraction")


# ============================================================================ setup (plain functions)
def build_model(cfg: FinetuneConfig) -> tuple[FinsentClassifier, FinsentTokenizer, ModelMeta]:
    """The classifier on the base encoder (compound tokens from the lexicons added and initialised), or the
    finsent model in ``init_model`` (to continue from an earlier fine-tune)."""
    trunc = TruncationConfig(max_len=cfg.max_len, head_tokens=cfg.head_tokens, strategy=cfg.truncation,
                             pooling=cfg.pooling)
    if cfg.init_model:
        model, tokenizer, old = load_model_dir(cfg.init_model)
        if tuple(old.labels) != tuple(cfg.labels):
            raise ConfigError(f"init_model: {cfg.init_model} predicts {list(old.labels)} but labels={cfg.labels}; "
                              "set labels to the model's labels")
        tokenizer.truncation = trunc
        model.dropout.p = cfg.dropout
        model.train()
        meta = ModelMeta(labels=tuple(cfg.labels), base_model=old.base_model, truncation=trunc, dropout=cfg.dropout,
                         name=cfg.model_name, extra={"init_model": str(cfg.init_model)})
        return model, tokenizer, meta
    model, tokenizer = build_classifier(cfg.base_model, cfg.labels, cfg.lexicon_files or [], cfg.extra_words,
                                        trunc, cfg.dropout)
    meta = ModelMeta(labels=tuple(cfg.labels), base_model=str(cfg.base_model), truncation=trunc,
                     dropout=cfg.dropout, name=cfg.model_name)
    return model, tokenizer, meta


def encode_data(data: FinetuneData, tokenizer: FinsentTokenizer, labels: LabelSet
                ) -> tuple[EncodedDataset, EncodedDataset]:
    return (EncodedDataset.from_examples(data.train, tokenizer, labels),
            EncodedDataset.from_examples(data.dev, tokenizer, labels))


def train_sampler(cfg: ClassifierSettings, ds: EncodedDataset, rank: int, world: int) -> Sampler:
    """This worker's share of the training data: length-grouped batches or a seeded DistributedSampler."""
    if cfg.length_grouped:
        return LengthGroupedBatchSampler(ds.lengths, cfg.per_worker_batch, world, rank, cfg.seed,
                                         cfg.length_group_batches)
    return DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)


def train_loader(cfg: ClassifierSettings, ds: EncodedDataset, sampler: Sampler, tokenizer: FinsentTokenizer
                 ) -> DataLoader:
    collate = Collator(tokenizer, len(cfg.labels))
    if isinstance(sampler, LengthGroupedBatchSampler):
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    return DataLoader(ds, batch_size=cfg.per_worker_batch, sampler=sampler, collate_fn=collate)


def dev_shard(ds: EncodedDataset, rank: int = 0, world: int = 1) -> list[int]:
    """This worker's dev examples (every ``world``-th), sorted by length so batches pad little."""
    return sorted(range(rank, len(ds), world), key=lambda i: len(ds.input_ids[i]))


def dev_loader(cfg: ClassifierSettings, ds: EncodedDataset, tokenizer: FinsentTokenizer, rank: int = 0,
               world: int = 1) -> DataLoader:
    """This worker's shard of dev (:func:`dev_shard`), in that order."""
    shard = dev_shard(ds, rank, world)
    return DataLoader(Subset(ds, shard), batch_size=cfg.eval_batch_size, shuffle=False,
                      collate_fn=Collator(tokenizer))


def make_criterion(cfg: ClassifierSettings, ds: EncodedDataset, device: torch.device) -> nn.Module:
    """Cross-entropy with the configured class weights (counted on the gold labels of ``ds``) and smoothing;
    examples labelled ``IGNORE_INDEX`` (no gold label) do not count."""
    gold = [y for y in ds.labels if y >= 0]
    weights = class_weight_vector(gold, len(cfg.labels), cfg.class_weights)
    if weights is not None:
        log.info("class weights %s", dict(zip(cfg.labels, [round(w, 3) for w in weights.tolist()], strict=True)))
        weights = weights.to(device)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)


def build_penalties(cfg: ClassifierSettings, model: FinsentClassifier) -> Penalties:
    """L1 on the head, plus L2-SP / EWC from training.forgetting when configured (anchored at ``model``'s
    current — i.e. starting — weights)."""
    pen = Penalties(l1=cfg.l1)
    if isinstance(cfg, ForgettingSettings) and cfg.l2sp > 0:
        from training.forgetting import L2SP

        pen.l2sp = L2SP(model, cfg.l2sp, anneal_steps=cfg.l2sp_anneal_steps)
    if isinstance(cfg, FinetuneConfig) and cfg.ewc > 0:
        from training.forgetting import EWC

        pen.ewc = EWC.from_file(cfg.ewc_fisher, model, cfg.ewc)
    return pen


def new_progress() -> dict[str, Any]:
    return {"epoch": -1, "global_step": 0, "history": [], "best_epoch": None}


def epoch_record(epoch: int, global_step: int, lr: float, train_stats: dict[str, float], dev_report: dict[str, Any],
                 eval_time_s: float, ema_report: dict[str, Any] | None = None, select_metric: str = "macro_f1"
                 ) -> dict[str, Any]:
    """One epoch's history entry. ``score_<select_metric>`` is what selects checkpoints: the dev metric of the
    raw weights, or of the averaged ones when they score better (``variant`` says which)."""
    record = {"epoch": epoch, "global_step": global_step, "lr": lr, **train_stats, "eval_time_s": eval_time_s,
              **flat_dev_metrics(dev_report), "dev_report": dev_report, "variant": "raw"}
    key = f"dev_{select_metric}"
    score = record[key]
    if ema_report is not None:
        ema = flat_dev_metrics(ema_report)
        record.update({f"ema_{k}": v for k, v in ema.items()})
        record["ema_dev_report"] = ema_report
        sign = -1.0 if select_metric == "loss" else 1.0
        if sign * ema[key] > sign * score:
            score, record["variant"] = ema[key], "ema"
    record[f"score_{select_metric}"] = score
    return record


def epochs_since_best(history: list[dict[str, Any]], select_metric: str) -> int:
    best = select_best(history, select_metric)
    return 0 if best is None else history[-1]["epoch"] - best["epoch"]


def _gather_logits(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, world: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every worker's dev logits and labels, on every worker (so all take the same early-stopping decision),
    back in dev-file order (``idx``: the dev example index of each of this worker's rows)."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, (logits.cpu(), y.cpu(), idx.cpu()))
        logits, y, idx = (torch.cat([p[i] for p in parts]) for i in range(3))
    order = torch.argsort(idx)
    return logits[order], y[order]


def dev_report(logits: torch.Tensor, y: torch.Tensor, labels: LabelSet, sources: list[str]) -> dict[str, Any]:
    """The dev report over all dev files, plus each file's own report (``by_source``) and the unweighted mean
    of their macro-F1 (``mean_macro_f1``; the plain macro-F1 with one dev file)."""
    report = report_from_logits(logits, y, labels)
    names = list(dict.fromkeys(sources))
    if len(names) > 1:
        src = torch.tensor([names.index(s) for s in sources])
        report["by_source"] = {n: report_from_logits(logits[src == i], y[src == i], labels)
                               for i, n in enumerate(names)}
        report["mean_macro_f1"] = sum(r["macro_f1"] for r in report["by_source"].values()) / len(names)
    else:
        report["mean_macro_f1"] = report["macro_f1"]
    return report


def source_name(path: str) -> str:
    """``<folder>/<file>`` of a data file: the source name in reports (``finfe/dev.txt``)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


# ============================================================================ driver-side checks
def split_hint(path: str | Path) -> str:
    """For a missing file of a split written by ``finsent split``: how to write it."""
    p = Path(path)
    if p.parent.parent.name and (p.name in ("train.txt", "dev.txt", "test.txt") and "split" in p.parent.parent.name):
        return (f". It belongs to the train/dev/test split: write it with `finsent split out_dir={p.parent.parent}` "
                "(seeded, reproducible)")
    return ""


def check_labelled_inputs(cfg: ClassifierSettings) -> None:
    """The labelled train and dev files exist (the default split is written when missing)."""
    from classifier.paths import shared_hint
    from classifier.splits import ensure_default_split

    ensure_default_split([*cfg.train_files, *cfg.extra_train_files, *cfg.dev_files])
    for name in ("train_files", "extra_train_files"):
        for p in getattr(cfg, name):
            if not Path(p).is_file():
                raise DataError(f"{name}: {p} not found; fix the path (relative paths start at the working "
                                f"directory; {shared_hint()}){split_hint(p)}")
    for dev in cfg.dev_files:
        if not Path(dev).is_file():
            raise DataError(f"dev_file: {dev} not found; fix the path ({shared_hint()}){split_hint(dev)}")


def check_inputs(cfg: FinetuneConfig) -> None:
    """Fail before starting Ray when a file the run needs is missing (the message names the field)."""
    from classifier.paths import shared_hint

    check_labelled_inputs(cfg)
    for name in ("rehearsal_files", "lexicon_files"):
        for p in getattr(cfg, name) or []:
            if not Path(p).is_file():
                raise DataError(f"{name}: {p} not found; fix the path (relative paths start at the working "
                                f"directory; {shared_hint()})")
    if cfg.init_model and not (Path(cfg.init_model) / WEIGHTS_FILE).is_file():
        raise ModelDirError(f"init_model: {Path(cfg.init_model) / WEIGHTS_FILE} not found; give a finsent model "
                            "directory exported by `finsent finetune`")
    if cfg.ewc_fisher and not Path(cfg.ewc_fisher).is_file():
        raise DataError(f"ewc_fisher: {cfg.ewc_fisher} not found; write it with a run that sets save_fisher=true")


# ============================================================================ the recipe
@dataclass
class FinetuneResult:
    model_dir: Path
    report: dict[str, Any]
    run_path: str
    resumed: bool = False


class FinetuneRecipe(Recipe):
    """Fine-tuning: driver-side checks / data counts / export (class methods) and one worker's setup, epochs
    (train → evaluate → report with a checkpoint). Subclasses change the model, the training set or the loss
    through :meth:`build_model`, :meth:`train_dataset` and :meth:`criterion`."""

    name = "finetune"
    config_class = FinetuneConfig
    resume_must_match = RESUME_MUST_MATCH

    # ------------------------------------------------------------------ driver side
    @classmethod
    def check_inputs(cls, cfg: FinetuneConfig) -> None:
        check_inputs(cfg)

    @classmethod
    def prepare(cls, cfg: ClassifierSettings, resumed: bool) -> tuple[ClassifierSettings, dict[str, Any]]:
        """The data's counts and hashes for the report (cheap: no tokenization)."""
        return cfg, load_finetune_data(cfg).summary(cfg.labels)

    @classmethod
    def checkpoint_config(cls, cfg: ClassifierSettings) -> dict[str, Any]:
        return {**super().checkpoint_config(cfg), "checkpoint_score_attribute": cfg.score_attribute,
                "checkpoint_score_order": cfg.score_order}

    @classmethod
    def export(cls, outcome: Outcome, cfg: FinetuneConfig, prepared: dict[str, Any]) -> FinetuneResult:
        report = export_best(outcome.result, cfg, prepared, outcome.wall_time_s, outcome.resumed)
        if cfg.save_fisher:
            write_fisher(cfg, Path(cfg.output_dir))
        return FinetuneResult(model_dir=Path(cfg.output_dir), report=report, run_path=str(outcome.result.path),
                              resumed=outcome.resumed)

    # ------------------------------------------------------------------ worker: hooks
    def build_model(self) -> tuple[FinsentClassifier, FinsentTokenizer, ModelMeta]:
        return build_model(self.cfg)

    def train_dataset(self, data: FinetuneData) -> EncodedDataset:
        return EncodedDataset.from_examples(data.train, self.tokenizer, self.labels)

    def criterion(self, ds: EncodedDataset) -> nn.Module:
        return make_criterion(self.cfg, ds, self.ctx.device)

    # ------------------------------------------------------------------ worker: setup
    def setup(self, checkpoint_dir: Path | None = None) -> None:
        """Model, data, regularisers, optimizer; then the state of ``checkpoint_dir`` when resuming."""
        cfg, ctx = self.cfg, self.ctx
        self.labels = LabelSet.of(cfg.labels)
        seed_everything(cfg.seed)
        self.model, self.tokenizer, self.meta = self.build_model()
        data = load_finetune_data(cfg)
        self.train_ds = self.train_dataset(data)
        self.dev_ds = EncodedDataset.from_examples(data.dev, self.tokenizer, self.labels)
        torch.manual_seed(cfg.seed + 1000 * ctx.rank)  # same init everywhere (above), different dropout per worker
        if cfg.freeze_layers:
            from training.forgetting import freeze_lowest_layers

            n = freeze_lowest_layers(self.model, cfg.freeze_layers)
            log.info("froze %d weights (embeddings + %d lowest layers)", n, cfg.freeze_layers)
            if cfg.adversarial != "none":
                log.warning("adversarial=%s perturbs the frozen word embeddings: it has no effect", cfg.adversarial)
        self.sampler = train_sampler(cfg, self.train_ds, ctx.rank, ctx.world)
        self.loader = ctx.prepare_loader(train_loader(cfg, self.train_ds, self.sampler, self.tokenizer))
        self.num_batches = len(self.sampler) if isinstance(self.sampler, LengthGroupedBatchSampler) else math.ceil(
            len(self.sampler) / cfg.per_worker_batch)
        ddp_model = ctx.prepare_model(self.model)
        penalties = build_penalties(cfg, self.model)
        self.steps_per_epoch = math.ceil(self.num_batches / cfg.grad_accum)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, self.steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
        device = ctx.device
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" and device.type == "cuda" else None
        self.autocast = autocast_factory(cfg.precision, device)
        self.step_ctx = StepContext(
            model=ddp_model, criterion=self.criterion(self.train_ds), penalties=penalties,
            adversary=build_adversary(cfg.adversarial, self.model, self.model.word_embeddings, cfg.adv_epsilon,
                                      cfg.pgd_alpha, cfg.pgd_steps),
            grad_accum=cfg.grad_accum, autocast=self.autocast, scaler=self.scaler, rdrop=cfg.rdrop)
        self.progress = new_progress()
        self.ema: EMA | None = None
        if checkpoint_dir is not None:
            if cfg.ema_decay > 0 and (checkpoint_dir / EMA_SUBDIR).is_dir():
                load_weights(self.model, checkpoint_dir / EMA_SUBDIR)  # the averaged weights first, then the raw
                self.ema = EMA(self.model, cfg.ema_decay)
            self.progress = load_checkpoint(checkpoint_dir, self.model, self.optimizer, self.scheduler, self.scaler)
            if self.ema is not None:
                self.ema.updates = self.progress["global_step"]
            log.info("resumed from checkpoint after epoch %d (step %d)", self.progress["epoch"] + 1,
                     self.progress["global_step"])
        if cfg.ema_decay > 0 and self.ema is None:
            self.ema = EMA(self.model, cfg.ema_decay)
        if ctx.rank == 0:
            log.info("%d train / %d dev examples, %d workers x %d per batch, %d steps/epoch, device %s",
                     len(self.train_ds), len(self.dev_ds), ctx.world, cfg.per_worker_batch, self.steps_per_epoch,
                     device)
        self.dev_batches = dev_loader(cfg, self.dev_ds, self.tokenizer, ctx.rank, ctx.world)
        self.dev_idx = torch.tensor(dev_shard(self.dev_ds, ctx.rank, ctx.world))
        self.dev_sources = [source_name(e.source) for e in data.dev]

    # ------------------------------------------------------------------ worker: steps
    def train_epoch(self, epoch: int) -> EpochStats:
        """One pass over this worker's share of the training data (EMA updated after every optimizer step)."""
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        bar = Progress(self.num_batches, f"epoch {epoch + 1}/{cfg.epochs}", self.ctx.rank == 0 and cfg.progress,
                       cfg.log_every)
        done = 0

        def on_step(i: int, out: dict[str, float], stats: EpochStats) -> None:
            nonlocal done
            if self.ema is not None and stats.steps > done:  # an optimizer step happened
                self.ema.update(self.model)
            done = stats.steps
            bar.update(i, out, stats)

        stats, self.progress["global_step"] = train_epoch(
            self.step_ctx, self.loader, self.optimizer, self.scheduler, cfg.max_grad_norm,
            self.progress["global_step"], self.num_batches, on_step=on_step, world_size=self.ctx.world)
        bar.close()
        return stats

    def score_dev(self) -> dict[str, Any]:
        """Every worker scores its dev shard; all get the whole dev report."""
        logits, y = _gather_logits(*predict_logits(self.model, self.dev_batches, self.ctx.device, self.autocast),
                                   self.dev_idx, self.ctx.world)
        return dev_report(logits, y, self.labels, self.dev_sources)

    def evaluate(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The dev report of the raw weights, and of the averaged ones when the run keeps an EMA."""
        report = self.score_dev()
        if self.ema is None:
            return report, None
        with self.ema.applied(self.model):
            return report, self.score_dev()

    def write_checkpoint(self, path: Path) -> None:
        """Model directory, optimizer state and progress (+ the averaged weights as a second model directory)."""
        save_checkpoint(path, self.model, self.tokenizer, self.meta, self.optimizer, self.scheduler, self.scaler,
                        self.progress)
        if self.ema is not None:
            with self.ema.applied(self.model):
                save_model_dir(path / EMA_SUBDIR, self.model, self.tokenizer, self.meta)

    def train(self) -> dict[str, Any] | None:
        """Epochs until ``epochs`` (or ``patience`` runs out): train, evaluate, report with a checkpoint."""
        cfg, progress = self.cfg, self.progress
        for epoch in range(progress["epoch"] + 1, cfg.epochs):
            if epochs_since_best(progress["history"], cfg.select_metric) >= cfg.patience > 0:
                break
            stats = self.train_epoch(epoch)
            t0 = time.perf_counter()
            report, ema_report = self.evaluate()
            record = epoch_record(epoch, progress["global_step"], self.scheduler.get_last_lr()[-1], stats.summary(),
                                  report, time.perf_counter() - t0, ema_report, cfg.select_metric)
            self.log_epoch(record, report, ema_report)
            progress["history"].append(record)
            progress["epoch"] = epoch
            progress["best_epoch"] = select_best(progress["history"], cfg.select_metric)["epoch"]
            self.ctx.report({k: v for k, v in record.items() if not isinstance(v, (dict, list))},
                            self.write_checkpoint)
            if cfg.debug_crash_after_epoch == epoch:
                raise RuntimeError(f"debug_crash_after_epoch={epoch}: simulated worker crash (fault injection)")
        if self.ctx.rank != 0:
            return None
        return {"epochs_run": len(progress["history"]), "best_epoch": progress["best_epoch"]}

    def log_epoch(self, record: dict[str, Any], report: dict[str, Any], ema_report: dict[str, Any] | None) -> None:
        epoch = record["epoch"]
        log.info("epoch %d: train loss %.4f, %.1f examples/s\n%s", epoch + 1, record["train_loss"],
                 record["train_examples_per_s"], format_report(report, title=f"dev after epoch {epoch + 1}"))
        for name, r in (report.get("by_source") or {}).items():
            log.info("  dev %s: accuracy %.4f, macro-F1 %.4f", name, r["accuracy"], r["macro_f1"])
        if ema_report is not None:
            log.info("  averaged weights (EMA %.4g): accuracy %.4f, macro-F1 %.4f, mean macro-F1 %.4f",
                     self.cfg.ema_decay, ema_report["accuracy"], ema_report["macro_f1"], ema_report["mean_macro_f1"])


def train_func(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs on every Ray Train worker. ``config`` is ``to_dict(FinetuneConfig)`` with resolved paths."""
    return FinetuneRecipe.train_func(config)


# ============================================================================ driver
def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train on Ray Train and export the best checkpoint to ``cfg.output_dir`` (:mod:`training.lifecycle`)."""
    return run_recipe(FinetuneRecipe, cfg)


def export_best(result: Any, cfg: ClassifierSettings, data_summary: dict[str, Any], wall_time_s: float,
                resumed: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy the best kept checkpoint's model into ``output_dir`` and write its report (``extra`` merged in),
    metrics and plots; then fit the calibration / companion on dev when configured."""
    if result.checkpoint is None:
        raise FinsentError("the run reported no checkpoint (did it train at least one epoch?); see the log above")
    with result.checkpoint.as_directory() as d:
        progress = read_progress(d)
    history = progress["history"]
    sign = -1.0 if cfg.score_order == "min" else 1.0
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if cfg.score_attribute in m]
    if not kept:
        raise FinsentError("no kept checkpoint has the score metric; cannot pick the best epoch")
    best_ckpt, best_metrics = max(kept, key=lambda cm: (sign * cm[1][cfg.score_attribute], -cm[1]["epoch"]))
    best = next(h for h in history if h["epoch"] == best_metrics["epoch"])
    out = Path(cfg.output_dir)
    variant = best.get("variant", "raw")
    with best_ckpt.as_directory() as d:
        subdirs = {"raw": Path(d) / MODEL_SUBDIR, "ema": Path(d) / EMA_SUBDIR}
        src = subdirs[variant]
        if not (src / WEIGHTS_FILE).is_file():
            raise ModelDirError(f"{src / WEIGHTS_FILE} is missing in the best checkpoint")
        clear_extras(out)
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        if cfg.export_variants and cfg.ema_decay > 0:
            for name, sub in subdirs.items():
                shutil.copytree(sub, out / "variants" / name, dirs_exist_ok=True)
    config = to_dict(cfg)
    report = build_report(config, data_summary, history, best, cfg.select_metric, wall_time_s,
                          extra={"run_name": cfg.run_name, "run_path": str(result.path), "resumed": resumed,
                                 "stopped_early": len(history) < cfg.epochs, **(extra or {})})
    write_report(out, report)
    write_metrics(history, out)
    plot_curves(history, out / CURVES_PNG, cfg.select_metric, best_epoch=best["epoch"])
    plot_confusion(best["dev_report"], out / CONFUSION_PNG,
                   title=f"dev, epoch {best['epoch'] + 1}: acc {best['dev_accuracy']:.3f} "
                         f"macro-F1 {best['dev_macro_f1']:.3f}")
    save_report(best["ema_dev_report"] if variant == "ema" else best["dev_report"], out / "dev_report.json")
    if cfg.calibrate or cfg.companion or cfg.decision_offsets:
        report["postprocessing"] = fit_postprocessing_for(cfg, out)
        if cfg.export_variants and cfg.ema_decay > 0:
            for name in ("raw", "ema"):
                fit_postprocessing_for(cfg, out / "variants" / name)
        write_report(out, report)
    log.info("best epoch %d (dev %s %.4f) exported to %s", best["epoch"] + 1, cfg.select_metric,
             best[cfg.score_attribute], out)
    return report


def fit_postprocessing_for(cfg: ClassifierSettings, model_dir: Path) -> dict[str, Any]:
    """Temperature (and the companion blend when ``cfg.companion``) fitted on this run's dev files."""
    from classifier.postfit import fit_postprocessing

    data = load_finetune_data(cfg)
    return fit_postprocessing(model_dir, data.dev, data.train, calibrate=cfg.calibrate, companion=cfg.companion,
                              decision_offsets=cfg.decision_offsets,
                              lexicon=cfg.polarity_lexicon or None, companion_c=cfg.companion_c,
                              batch_size=cfg.eval_batch_size)


def write_fisher(cfg: FinetuneConfig, model_dir: Path, path: Path | None = None) -> Path:
    """Estimate the diagonal Fisher of the exported model on this run's train data (for a later run's EWC);
    written to ``path`` (default ``model_dir/fisher.safetensors``)."""
    from training.forgetting import estimate_fisher, save_fisher

    model, tokenizer, meta = load_model_dir(model_dir)
    data = load_finetune_data(cfg)
    train_ds = EncodedDataset.from_examples(data.train, tokenizer, LabelSet.of(meta.labels))
    sampler = LengthGroupedBatchSampler(train_ds.lengths, cfg.per_worker_batch, seed=cfg.seed)
    batches = DataLoader(train_ds, batch_sampler=sampler, collate_fn=Collator(tokenizer))
    criterion = nn.CrossEntropyLoss()

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return criterion(m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"])

    fisher = estimate_fisher(model, batches, loss_fn, cfg.fisher_max_batches)
    path = Path(path) if path is not None else model_dir / "fisher.safetensors"
    save_fisher(fisher, path)
    log.info("wrote %s", path)
    return path
