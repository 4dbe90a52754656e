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

Lifecycle: :func:`run_pretrain` (driver: resolve paths, start the Ray Train run, export) → :func:`train_func`
(each worker; the only code that knows Ray Train) → :class:`PretrainRecipe` (setup / train / evaluate / state,
plain torch) → output: ``output_dir`` is an encoder directory (:func:`training.mlm.save_encoder_dir`) with
``pretrain_report.json`` and ``pretrain_curves.png`` beside the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from classifier.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ENCODER_SUBDIR = "encoder"
STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"
REPORT_FILE = "pretrain_report.json"
CURVES_PNG = "pretrain_curves.png"
RUN_FILE = "run.json"
_SHARED = "$FINSENT_SHARED"

#: settings a resumed run must share with the run it continues (the data and model it was built on)
RESUME_KEYS = ("base_model", "corpus_files", "max_corpus_chars", "max_corpus_docs", "heldout_fraction",
               "heldout_max_docs", "lexicon_files", "extra_words", "compound_tokens", "max_len", "batch_size",
               "grad_accum", "num_workers", "seed")


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class PretrainConfig:
    """Continue MLM pretraining of an encoder on unlabelled text (one document a line)."""

    # ------------------------------------------------------------------ data
    corpus_files: list[str] = _help("unlabelled text files, one document a line; $FINSENT_SHARED → ../shared",
                                    default_factory=lambda: [f"{_SHARED}/data/corpus/fin_corpus.txt"])
    max_corpus_chars: int = _help("read documents until this many characters (0 = the whole corpus)", default=0)
    max_corpus_docs: int = _help("read at most this many documents (0 = all)", default=0)
    heldout_fraction: float = _help("fraction of documents held out to measure MLM loss/accuracy", default=0.01)
    heldout_max_docs: int = _help("at most this many held-out documents (keeps evaluation short)", default=500)

    # ------------------------------------------------------------------ model
    base_model: str | None = _help(
        "encoder to start from: a Hugging Face checkpoint directory, or an earlier pretraining output (its MLM "
        "head and compound tokens are kept); null = $FINSENT_BASE_MODEL or ../shared/models/me5-small-zh-fin",
        default=None)
    lexicon_files: list[str] | None = _help(
        "finance word lists: jieba user dictionary for whole-word masking, and multi-piece words become compound "
        "tokens (as in fine-tuning); null = the shared lexicon, [] = none", default=None)
    extra_words: list[str] = _help("more words for the segmenter / compound tokens", default_factory=list)
    compound_tokens: bool = _help("pretrain the lexicon's compound tokens as single pieces (as fine-tuning uses "
                                  "them); false = lexicon words stay multi-piece, masked as whole words",
                                  default=True)
    max_len: int = _help("window length in pieces including [CLS]/[SEP]", default=128)

    # ------------------------------------------------------------------ masking
    mlm_probability: float = _help("fraction of (jieba) words chosen for prediction in each window", default=0.15)
    mask_prob: float = _help("of the chosen words: fraction replaced by [MASK]", default=0.8)
    random_prob: float = _help("of the chosen words: fraction replaced by random pieces (the rest stay)",
                               default=0.1)

    # ------------------------------------------------------------------ optimisation
    batch_size: int = _help("windows per optimizer micro-step over ALL workers (each gets batch_size/num_workers)",
                            default=32)
    eval_batch_size: int = _help("windows per forward pass on the held-out slice (per worker)", default=64)
    epochs: int = _help("passes over the training windows", default=1)
    max_steps: int = _help("stop after this many optimizer steps in total (0 = run all epochs)", default=0)
    lr: float = _help("peak learning rate (AdamW) of the top layer and the MLM head", default=5e-5)
    warmup_ratio: float = _help("fraction of steps with linear warm-up, then linear decay to 0", default=0.06)
    layerwise_lr_decay: float = _help("layer-wise LR decay (training/optim.py): layer i below the top gets "
                                      "lr * decay^i, the embeddings lr * decay^num_layers; 1.0 = off", default=1.0)
    weight_decay: float = _help("AdamW weight decay (not on biases and LayerNorm weights)", default=0.01)
    grad_accum: int = _help("micro-steps per optimizer step", default=1)
    max_grad_norm: float = _help("clip the global gradient norm to this; 0 = no clipping", default=1.0)
    seed: int = _help("seed of the held-out split, window order, masks and the new MLM head", default=42)

    # ------------------------------------------------------------------ forgetting control
    l2sp: float = _help("L2-SP: coefficient of ||theta - theta_start||^2 over the encoder (0 = off)", default=0.0)
    l2sp_anneal_steps: int = _help("L2-SP: RecAdam-style sigmoid decay of the coefficient to ~0 over this many "
                                   "steps (0 = constant)", default=0)
    freeze_layers: int = _help("freeze the embeddings (and the tied MLM decoder) and this many lowest layers "
                               "(0 = train all)", default=0)
    head_warmup_steps: int = _help(
        "train only the MLM head (transform, LayerNorm, decoder bias) for this many first steps when the base had "
        "none, so a random head does not push random gradients into the encoder; the encoder's own warm-up + "
        "decay schedule starts after them (0 = off; ignored when the checkpoint had a head)", default=0)

    # ------------------------------------------------------------------ run
    output_dir: str = _help("the exported encoder directory (use it as fine-tuning base_model), with the "
                            "report and curves", default="runs/pretrain")
    overwrite: bool = _help("allow exporting into an output_dir that already holds an encoder", default=False)
    run_name: str | None = _help("Ray Train run name (folder under storage_path); null = pretrain-<time>",
                                 default=None)
    storage_path: str = _help("Ray Train storage for checkpoints (shared storage on a multi-node cluster)",
                              default="runs/ray")
    resume: bool = _help("continue the run recorded in output_dir/run.json from its latest checkpoint",
                         default=False)
    num_workers: int = _help("Ray Train workers (DDP processes)", default=2)
    cpus_per_worker: int = _help("CPUs reserved per worker (also its torch thread count)", default=1)
    use_gpu: Literal["auto"] | bool = _help("one GPU per worker: true, false, or auto (when the cluster has GPUs)",
                                            default="auto")
    precision: Literal["fp32", "bf16", "fp16"] = _help("fp32, or bf16/fp16 autocast (GPU only)", default="fp32")
    eval_every: int = _help("also evaluate, report and checkpoint every this many steps (0 = at epoch ends only)",
                            default=0)
    eval_at_start: bool = _help("measure the held-out MLM loss/accuracy before the first step", default=True)
    keep_checkpoints: int = _help("Ray keeps this many latest checkpoints", default=1)
    max_failures: int = _help("restart workers from the latest checkpoint this many times after a crash",
                              default=1)
    log_every: int = _help("progress bar / running-loss update every this many steps", default=20)
    progress: bool = _help("show a progress bar on rank 0", default=True)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}: {why}")

        if not self.corpus_files:
            raise bad("corpus_files", "give at least one text file, e.g. corpus_files=[corpus.txt]")
        for name in ("batch_size", "eval_batch_size", "epochs", "grad_accum", "num_workers", "cpus_per_worker",
                     "keep_checkpoints", "log_every", "heldout_max_docs"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be at least 1, got {getattr(self, name)}")
        for name in ("max_corpus_chars", "max_corpus_docs", "max_steps", "l2sp_anneal_steps", "freeze_layers",
                     "eval_every", "max_failures", "head_warmup_steps"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "l2sp"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.max_len < 16:
            raise bad("max_len", f"must be at least 16, got {self.max_len}")
        if self.batch_size % self.num_workers:
            raise bad("batch_size", f"{self.batch_size} is not divisible by num_workers={self.num_workers}: "
                      "pick a multiple so every worker gets the same share")
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise bad("heldout_fraction", f"must be in [0, 0.5), got {self.heldout_fraction}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise bad("mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")
        if self.mask_prob < 0 or self.random_prob < 0 or self.mask_prob + self.random_prob > 1.0:
            raise bad("mask_prob", f"mask_prob and random_prob must be >= 0 with a sum <= 1, got "
                      f"{self.mask_prob} + {self.random_prob}")
        if self.lr <= 0:
            raise bad("lr", f"must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise bad("layerwise_lr_decay", f"must be in (0, 1], got {self.layerwise_lr_decay} (1.0 = off)")
        if self.precision != "fp32" and self.use_gpu is False:
            raise bad("precision", f"{self.precision} autocast needs a GPU: use precision=fp32 with use_gpu=false")

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers


def resolve_paths(cfg: PretrainConfig) -> PretrainConfig:
    """A copy with every path absolute (workers may run elsewhere) and the defaults filled in."""
    from classifier.paths import default_base_model, default_lexicon
    from training.config import expand_path

    base = default_base_model(expand_path(cfg.base_model) if cfg.base_model else None)
    lexicons = [default_lexicon()] if cfg.lexicon_files is None else cfg.lexicon_files
    return dataclasses.replace(
        cfg,
        corpus_files=[str(expand_path(p)) for p in cfg.corpus_files],
        base_model=str(Path(base).absolute()),
        lexicon_files=[str(expand_path(p)) for p in lexicons],
        output_dir=str(expand_path(cfg.output_dir)),
        storage_path=str(expand_path(cfg.storage_path)),
    )


def from_dict(values: dict[str, Any]) -> PretrainConfig:
    from classifier.config import build

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


class PretrainRecipe:
    """Plain-torch pretraining on one worker of ``world`` (setup / train_step / evaluate / state).
    ``wrap`` turns the objective into its distributed form (Ray's ``prepare_model``; identity in one process)."""

    def __init__(self, cfg: PretrainConfig, rank: int = 0, world: int = 1, device: torch.device | None = None
                 ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world = world
        self.device = device or torch.device("cpu")

    # ------------------------------------------------------------------ setup
    def setup(self, wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
              checkpoint_dir: Path | None = None) -> None:
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
            _check_resume(self.progress.get("config", {}), cfg)
        self.objective = wrap(MaskedLMObjective(self.model))
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
        import contextlib

        if self.device.type != "cuda" or self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16)

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
        progress = {**self.progress, "config": _config_dict(self.cfg), "data": self.data_stats}
        (path / PROGRESS_FILE).write_text(json.dumps(progress, ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    def export_meta(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"base_model": cfg.base_model, "corpus_files": list(cfg.corpus_files),
                "corpus_chars": self.data_stats["corpus_chars"], "steps": self.progress["global_step"],
                "max_len": cfg.max_len, "head_loaded_from_base": self.head_loaded}


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


def _config_dict(cfg: PretrainConfig) -> dict[str, Any]:
    from classifier.config import to_dict

    return to_dict(cfg)


def _check_resume(saved: dict[str, Any], cfg: PretrainConfig) -> None:
    now = _config_dict(cfg)
    diff = [k for k in RESUME_KEYS if k in saved and saved[k] != now.get(k)]
    if diff:
        raise ConfigError("resume: the checkpoint was made with other settings for "
                          + ", ".join(f"{k} ({saved[k]!r} → {now.get(k)!r})" for k in diff)
                          + ": resume with the same settings, or start a new run (resume=false)")


# ================================================================================================ Ray Train
def train_func(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; knows nothing of the cluster size beyond rank/world."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    torch.set_num_threads(cfg.cpus_per_worker)
    recipe = PretrainRecipe(cfg, rank, world, ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            recipe.setup(ray.train.torch.prepare_model, Path(d))
        log.info("resumed at step %d", recipe.progress["global_step"])
    else:
        recipe.setup(ray.train.torch.prepare_model)
    if rank == 0:
        log.info("MLM head %s; %d compound tokens; %d frozen params; %d steps (%d per epoch)",
                 "loaded" if recipe.head_loaded else "added", len(recipe.tokenizer.compound_words),
                 recipe.frozen, recipe.total_steps, recipe.steps_per_epoch)

    def report(metrics: dict[str, Any]) -> None:
        """All workers report; rank 0 attaches the checkpoint."""
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            recipe.save_checkpoint(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    run_training(recipe, report, show_progress=cfg.progress and rank == 0)


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
    """Run pretraining on Ray Train (starting a local Ray unless one is running or RAY_ADDRESS is set) and
    export the encoder into ``cfg.output_dir``; returns that path."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = resolve_paths(cfg)
    out = Path(cfg.output_dir)
    run_name, storage = _run_identity(cfg, out)
    cfg = dataclasses.replace(cfg, run_name=run_name, storage_path=storage)
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    use_gpu = cfg.use_gpu if isinstance(cfg.use_gpu, bool) else ray.cluster_resources().get("GPU", 0) >= 1
    if cfg.precision != "fp32" and not use_gpu:
        raise ConfigError(f"precision: {cfg.precision} needs GPUs, and the cluster has none: use precision=fp32")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps({"run_name": run_name, "storage_path": storage}), encoding="utf-8")
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": _config_dict(cfg)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise DataError("pretraining finished without a checkpoint (no step ran?)")
    with result.checkpoint.as_directory() as d:
        export(Path(d), out, cfg, wall, use_gpu)
    log.info("encoder written to %s", out)
    return out


def _run_identity(cfg: PretrainConfig, out: Path) -> tuple[str, str]:
    run_file = out / RUN_FILE
    if cfg.resume:
        if cfg.run_name:
            return cfg.run_name, cfg.storage_path
        if not run_file.is_file():
            raise ConfigError(f"resume: {run_file} not found: nothing to resume in {out}; start with resume=false")
        rec = json.loads(run_file.read_text(encoding="utf-8"))
        return rec["run_name"], rec["storage_path"]
    if (out / "config.json").is_file() and not cfg.overwrite:
        raise ConfigError(f"output_dir: {out} already holds an encoder: pass overwrite=true, another output_dir, "
                          "or resume=true to continue its run")
    name = cfg.run_name or f"pretrain-{time.strftime('%Y%m%d-%H%M%S')}"
    if (Path(cfg.storage_path) / name).exists():
        raise ConfigError(f"run_name: {Path(cfg.storage_path) / name} exists: pick another run_name or resume=true")
    return name, cfg.storage_path


def export(checkpoint_dir: Path, out: Path, cfg: PretrainConfig, wall_s: float, use_gpu: bool) -> None:
    """Copy the checkpoint's encoder into ``out`` and write the report and curves beside it."""
    from training.callbacks import machine_info

    shutil.copytree(checkpoint_dir / ENCODER_SUBDIR, out, dirs_exist_ok=True)
    progress = json.loads((checkpoint_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    history = progress["history"]
    report = {
        "steps": progress["global_step"], "epochs_completed": progress["epoch"],
        "final": history[-1] if history else None, "history": history, "train_curve": progress["train_curve"],
        "data": progress.get("data", {}), "config": _config_dict(cfg), "wall_time_s_this_run": round(wall_s, 1),
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
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finsent pretrain",
        description="Domain-adaptive MLM pretraining (whole-word masking) on Ray Train. Settings come from "
                    "the dataclass defaults, then --config YAML, then key=value overrides.",
    )
    p.add_argument("--config", default=None, help="YAML file of settings (e.g. training/configs/pretrain.yaml)")
    p.add_argument("--help-config", action="store_true", help="list every setting with its default and help")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override settings, e.g. max_steps=200")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from classifier.config import describe, load_config

    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["pretrain"]:
        args_in = args_in[1:]
    args = build_parser().parse_args(args_in)
    if args.help_config:
        print(describe(PretrainConfig))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    out = run_pretrain(cfg)
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    final = report["final"] or {}
    loss, acc = final.get("heldout_loss"), final.get("heldout_accuracy")
    print(f"encoder: {out}  (steps {report['steps']}"
          + (f", held-out MLM loss {loss:.4f}, masked accuracy {acc:.4f})" if loss is not None else ")"))
    print(f"fine-tune from it: finsent finetune base_model={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
