"""Fine-tune a finsent classifier on Ray Train (``TorchTrainer``), then export the best checkpoint.

Launch (see the README, "Fine-tuning on Ray Train")::

    python -m training finetune --config training/configs/finetune.yaml epochs=3 adversarial=fgm
    ray job submit --working-dir . -- python -m training finetune --config training/configs/finetune.yaml

Lifecycle: the driver (:func:`run_finetune`) resolves the config, starts or joins Ray, runs
:func:`train_func` on ``num_workers`` DDP workers and exports the best checkpoint as a finsent model
directory. Each worker: setup (model, data, optimizer; restore the latest checkpoint if Ray has one) → per
epoch train, every worker scores its dev shard (rank 0 gathers the report and saves a checkpoint),
``ray.train.report`` → done. Only
:func:`train_func` and :func:`run_finetune` touch Ray; every step in between is a plain function.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
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
from classifier.modeling import (
    REPORT_FILE,
    WEIGHTS_FILE,
    FinsentClassifier,
    ModelMeta,
    build_classifier,
    load_model_dir,
)
from classifier.tokenization import FinsentTokenizer, TruncationConfig
from training.adversarial import build_adversary
from training.callbacks import (
    CONFUSION_PNG,
    CURVES_PNG,
    Progress,
    build_report,
    plot_curves,
    select_best,
    write_metrics,
)
from training.checkpoint import MODEL_SUBDIR, load_checkpoint, read_progress, save_checkpoint
from training.config import FinetuneConfig, from_dict, resolve_paths
from training.data import (
    Collator,
    EncodedDataset,
    FinetuneData,
    LengthGroupedBatchSampler,
    class_weight_vector,
    load_finetune_data,
)
from training.engine import (
    Penalties,
    StepContext,
    flat_dev_metrics,
    predict_logits,
    report_from_logits,
    train_epoch,
)
from training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
#: settings a resumed run must share with the run it continues (data, model, batching, schedule)
RESUME_MUST_MATCH: tuple[str, ...] = (
    "train_files", "extra_train_files", "dev_file", "max_train_examples", "base_model", "init_model",
    "lexicon_files", "extra_words", "labels", "max_len", "head_tokens", "batch_size", "grad_accum", "epochs",
    "seed", "rehearsal_files", "rehearsal_fraction")


# ============================================================================ setup (plain functions)
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def build_model(cfg: FinetuneConfig) -> tuple[FinsentClassifier, FinsentTokenizer, ModelMeta]:
    """The classifier on the base encoder (compound tokens from the lexicons added and initialised), or the
    finsent model in ``init_model`` (to continue from an earlier fine-tune)."""
    trunc = TruncationConfig(max_len=cfg.max_len, head_tokens=cfg.head_tokens)
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


def train_sampler(cfg: FinetuneConfig, ds: EncodedDataset, rank: int, world: int) -> Sampler:
    """This worker's share of the training data: length-grouped batches or a seeded DistributedSampler."""
    if cfg.length_grouped:
        return LengthGroupedBatchSampler(ds.lengths, cfg.per_worker_batch, world, rank, cfg.seed,
                                         cfg.length_group_batches)
    return DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)


def train_loader(cfg: FinetuneConfig, ds: EncodedDataset, sampler: Sampler, tokenizer: FinsentTokenizer
                 ) -> DataLoader:
    collate = Collator(tokenizer)
    if isinstance(sampler, LengthGroupedBatchSampler):
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    return DataLoader(ds, batch_size=cfg.per_worker_batch, sampler=sampler, collate_fn=collate)


def dev_loader(cfg: FinetuneConfig, ds: EncodedDataset, tokenizer: FinsentTokenizer, rank: int = 0, world: int = 1
               ) -> DataLoader:
    """This worker's shard of dev (every ``world``-th example), sorted by length so batches pad little."""
    shard = sorted(range(rank, len(ds), world), key=lambda i: len(ds.input_ids[i]))
    return DataLoader(Subset(ds, shard), batch_size=cfg.eval_batch_size, shuffle=False,
                      collate_fn=Collator(tokenizer))


def make_criterion(cfg: FinetuneConfig, ds: EncodedDataset, device: torch.device) -> nn.Module:
    weights = class_weight_vector(ds.labels, len(cfg.labels), cfg.class_weights)
    if weights is not None:
        log.info("class weights %s", dict(zip(cfg.labels, [round(w, 3) for w in weights.tolist()], strict=True)))
        weights = weights.to(device)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)


def build_penalties(cfg: FinetuneConfig, model: FinsentClassifier) -> Penalties:
    """L1 on the head, plus L2-SP / EWC from training.forgetting when configured (anchored at ``model``'s
    current — i.e. base — weights)."""
    pen = Penalties(l1=cfg.l1)
    if cfg.l2sp > 0:
        from training.forgetting import L2SP

        pen.l2sp = L2SP(model, cfg.l2sp, anneal_steps=cfg.l2sp_anneal_steps)
    if cfg.ewc > 0:
        from training.forgetting import EWC

        pen.ewc = EWC.from_file(cfg.ewc_fisher, model, cfg.ewc)
    return pen


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def new_progress() -> dict[str, Any]:
    return {"epoch": -1, "global_step": 0, "history": [], "best_epoch": None}


def epoch_record(epoch: int, global_step: int, lr: float, train_stats: dict[str, float], dev_report: dict[str, Any],
                 eval_time_s: float) -> dict[str, Any]:
    return {"epoch": epoch, "global_step": global_step, "lr": lr, **train_stats, "eval_time_s": eval_time_s,
            **flat_dev_metrics(dev_report), "dev_report": dev_report}


def epochs_since_best(history: list[dict[str, Any]], select_metric: str) -> int:
    best = select_best(history, select_metric)
    return 0 if best is None else history[-1]["epoch"] - best["epoch"]


def _gather_logits(logits: torch.Tensor, y: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every worker's dev logits and labels, on every worker (so all take the same early-stopping decision)."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[Any] = [None] * world
        torch.distributed.all_gather_object(parts, (logits.cpu(), y.cpu()))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return logits, y


def _setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("jieba", "transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


# ============================================================================ the Ray Train worker loop
def train_func(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs on every Ray Train worker. ``config`` is ``to_dict(FinetuneConfig)`` with resolved paths."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _setup_logging(rank)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()
    labels = LabelSet.of(cfg.labels)

    # ---- setup: model, data, regularisers, optimizer
    seed_everything(cfg.seed)
    model, tokenizer, meta = build_model(cfg)
    data = load_finetune_data(cfg)
    train_ds, dev_ds = encode_data(data, tokenizer, labels)
    torch.manual_seed(cfg.seed + 1000 * rank)  # same init everywhere (above), different dropout per worker
    if cfg.freeze_layers:
        from training.forgetting import freeze_lowest_layers

        n = freeze_lowest_layers(model, cfg.freeze_layers)
        log.info("froze %d weights (embeddings + %d lowest layers)", n, cfg.freeze_layers)
        if cfg.adversarial != "none":
            log.warning("adversarial=%s perturbs the frozen word embeddings: it has no effect", cfg.adversarial)
    sampler = train_sampler(cfg, train_ds, rank, world)
    loader = ray.train.torch.prepare_data_loader(train_loader(cfg, train_ds, sampler, tokenizer),
                                                 add_dist_sampler=False)
    num_batches = len(sampler) if isinstance(sampler, LengthGroupedBatchSampler) else math.ceil(
        len(sampler) / cfg.per_worker_batch)
    ddp_model = ray.train.torch.prepare_model(model)  # moves to device; DDP (gloo/nccl) when world > 1
    penalties = build_penalties(cfg, model)
    steps_per_epoch = math.ceil(num_batches / cfg.grad_accum)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, steps_per_epoch * cfg.epochs, cfg.warmup_ratio)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" and device.type == "cuda" else None
    autocast = autocast_factory(cfg.precision, device)
    step_ctx = StepContext(
        model=ddp_model, criterion=make_criterion(cfg, train_ds, device), penalties=penalties,
        adversary=build_adversary(cfg.adversarial, model, model.word_embeddings, cfg.adv_epsilon, cfg.pgd_alpha,
                                  cfg.pgd_steps),
        grad_accum=cfg.grad_accum, autocast=autocast, scaler=scaler)

    progress = new_progress()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            progress = load_checkpoint(d, model, optimizer, scheduler, scaler)
        log.info("resumed from checkpoint after epoch %d (step %d)", progress["epoch"] + 1, progress["global_step"])
    if rank == 0:
        log.info("%d train / %d dev examples, %d workers x %d per batch, %d steps/epoch, device %s",
                 len(train_ds), len(dev_ds), world, cfg.per_worker_batch, steps_per_epoch, device)
    dev_batches = dev_loader(cfg, dev_ds, tokenizer, rank, world)

    # ---- epochs
    for epoch in range(progress["epoch"] + 1, cfg.epochs):
        if epochs_since_best(progress["history"], cfg.select_metric) >= cfg.patience > 0:
            break
        sampler.set_epoch(epoch)
        bar = Progress(num_batches, f"epoch {epoch + 1}/{cfg.epochs}", rank == 0, cfg.log_every)
        stats, progress["global_step"] = train_epoch(
            step_ctx, loader, optimizer, scheduler, cfg.max_grad_norm, progress["global_step"], num_batches,
            on_step=bar.update, world_size=world)
        bar.close()
        t0 = time.perf_counter()  # every worker scores its dev shard; all see the whole dev report
        logits, y = _gather_logits(*predict_logits(model, dev_batches, device, autocast), world)
        dev_report = report_from_logits(logits, y, labels)
        record = epoch_record(epoch, progress["global_step"], scheduler.get_last_lr()[-1], stats.summary(),
                              dev_report, time.perf_counter() - t0)
        log.info("epoch %d: train loss %.4f, %.1f examples/s\n%s", epoch + 1, record["train_loss"],
                 record["train_examples_per_s"], format_report(dev_report, title=f"dev after epoch {epoch + 1}"))
        progress["history"].append(record)
        progress["epoch"] = epoch
        progress["best_epoch"] = select_best(progress["history"], cfg.select_metric)["epoch"]
        metrics = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
        with tempfile.TemporaryDirectory(prefix="finsent-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                save_checkpoint(tmp, model, tokenizer, meta, optimizer, scheduler, scaler, progress)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        if cfg.debug_crash_after_epoch == epoch:
            raise RuntimeError(f"debug_crash_after_epoch={epoch}: simulated worker crash (fault injection)")
    return {"epochs_run": len(progress["history"]), "best_epoch": progress["best_epoch"]} if rank == 0 else None


# ============================================================================ driver
@dataclass
class FinetuneResult:
    model_dir: Path
    report: dict[str, Any]
    run_path: str
    resumed: bool = False


def check_inputs(cfg: FinetuneConfig) -> None:
    """Fail before starting Ray when a file the run needs is missing (the message names the field)."""
    from classifier.paths import shared_hint

    for name in ("train_files", "extra_train_files", "rehearsal_files", "lexicon_files"):
        for p in getattr(cfg, name) or []:
            if not Path(p).is_file():
                raise DataError(f"{name}: {p} not found; fix the path (relative paths start at the working "
                                f"directory; {shared_hint()})")
    if not Path(cfg.dev_file).is_file():
        raise DataError(f"dev_file: {cfg.dev_file} not found; fix the path ({shared_hint()})")
    if cfg.init_model and not (Path(cfg.init_model) / WEIGHTS_FILE).is_file():
        raise ModelDirError(f"init_model: {Path(cfg.init_model) / WEIGHTS_FILE} not found; give a finsent model "
                            "directory exported by `finsent finetune`")
    if cfg.ewc_fisher and not Path(cfg.ewc_fisher).is_file():
        raise DataError(f"ewc_fisher: {cfg.ewc_fisher} not found; write it with a run that sets save_fisher=true")


def plan_run(cfg: FinetuneConfig) -> tuple[FinetuneConfig, bool]:
    """Pick the Ray run name (new, or the one recorded in output_dir/run.json when resuming); refuse to
    overwrite an exported model unless asked to."""
    out = Path(cfg.output_dir)
    record = out / RUN_FILE
    if cfg.resume:
        if cfg.run_name is None:
            if not record.is_file():
                raise ConfigError(f"resume: {record} not found, so there is no run to resume in {out}; start a new "
                                  "run (resume=false) or give run_name=... and storage_path=... of the run")
            saved = json.loads(record.read_text(encoding="utf-8"))
            cfg = dataclasses.replace(cfg, run_name=saved["run_name"], storage_path=saved["storage_path"])
            changed = [k for k in RESUME_MUST_MATCH
                       if k in saved.get("config", {}) and saved["config"][k] != to_dict(cfg)[k]]
            if changed:
                raise ConfigError("resume: " + ", ".join(f"{k}={to_dict(cfg)[k]!r} (the run used {saved['config'][k]!r})"
                                                          for k in changed)
                                  + " differ from the run being resumed; resume with its settings (see "
                                  f"{record}) or start a new run")
        run_dir = Path(cfg.storage_path) / str(cfg.run_name)
        if not run_dir.is_dir():
            raise ConfigError(f"resume: run directory {run_dir} not found; check run_name and storage_path")
        return cfg, True
    if (out / WEIGHTS_FILE).is_file() and not cfg.overwrite:
        raise ConfigError(f"output_dir: {out} already holds a model; pick another output_dir, pass overwrite=true, "
                          "or resume=true to continue its run")
    name = cfg.run_name or f"finetune-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    if (Path(cfg.storage_path) / name).exists():
        raise ConfigError(f"run_name: {Path(cfg.storage_path) / name} already exists and would be resumed; pick a "
                          "new run_name or pass resume=true")
    return dataclasses.replace(cfg, run_name=name), False


def ensure_ray() -> None:
    """Join the cluster at $RAY_ADDRESS (``ray job submit`` sets it) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:  # "local": a new instance, never a stale cluster remembered in $TMPDIR/ray/ray_current_cluster
        ray.init(address="local", include_dashboard=False, log_to_driver=True)


def resolve_use_gpu(cfg: FinetuneConfig) -> bool:
    import ray

    if cfg.use_gpu != "auto":
        return bool(cfg.use_gpu)
    return ray.cluster_resources().get("GPU", 0) >= 1


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train on Ray Train and export the best checkpoint to ``cfg.output_dir``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = resolve_paths(cfg)
    check_inputs(cfg)
    cfg, resumed = plan_run(cfg)
    data = load_finetune_data(cfg)  # driver-side: hashes and counts for the report (cheap: no tokenization)
    ensure_ray()
    use_gpu = resolve_use_gpu(cfg)
    if cfg.precision != "fp32" and not use_gpu:
        raise ConfigError(f"precision: {cfg.precision} needs GPU workers but the cluster has none; use precision=fp32")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps({"run_name": cfg.run_name, "storage_path": cfg.storage_path,
                                            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": to_dict(cfg)},
                                           ensure_ascii=False, indent=1), encoding="utf-8")
    log.info("run %s%s: %d workers (%s), storage %s", cfg.run_name, " (resumed)" if resumed else "",
             cfg.num_workers, "GPU" if use_gpu else f"{cfg.cpus_per_worker} CPU each", cfg.storage_path)
    trainer = TorchTrainer(
        train_func,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(
            name=cfg.run_name, storage_path=cfg.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                               checkpoint_score_attribute=cfg.score_attribute,
                                               checkpoint_score_order=cfg.score_order),
            failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if getattr(result, "error", None) is not None:
        raise result.error
    report = export_best(result, cfg, data.summary(cfg.labels), wall, resumed)
    return FinetuneResult(model_dir=out, report=report, run_path=str(result.path), resumed=resumed)


def export_best(result: Any, cfg: FinetuneConfig, data_summary: dict[str, Any], wall_time_s: float,
                resumed: bool = False) -> dict[str, Any]:
    """Copy the best kept checkpoint's model into ``output_dir`` and write its report, metrics and plots."""
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
    with best_ckpt.as_directory() as d:
        src = Path(d) / MODEL_SUBDIR
        if not (src / WEIGHTS_FILE).is_file():
            raise ModelDirError(f"{src / WEIGHTS_FILE} is missing in the best checkpoint")
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
    config = to_dict(cfg)
    report = build_report(config, data_summary, history, best, cfg.select_metric, wall_time_s,
                          extra={"run_name": cfg.run_name, "run_path": str(result.path), "resumed": resumed,
                                 "stopped_early": len(history) < cfg.epochs})
    (out / REPORT_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    write_metrics(history, out)
    plot_curves(history, out / CURVES_PNG, cfg.select_metric, best_epoch=best["epoch"])
    plot_confusion(best["dev_report"], out / CONFUSION_PNG,
                   title=f"dev, epoch {best['epoch'] + 1}: acc {best['dev_accuracy']:.3f} "
                         f"macro-F1 {best['dev_macro_f1']:.3f}")
    save_report(best["dev_report"], out / "dev_report.json")
    if cfg.save_fisher:
        write_fisher(cfg, out)
    log.info("best epoch %d (dev %s %.4f) exported to %s", best["epoch"] + 1, cfg.select_metric,
             best[cfg.score_attribute], out)
    return report


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
