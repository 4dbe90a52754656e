"""``FinetuneConfig``: every setting of a fine-tuning run, typed, documented and checked at construction.

Loaded with :func:`classifier.config.load_config` (defaults ← YAML ← ``key=value`` overrides). The same object
(as a dict) is handed to every Ray Train worker; nothing is read from globals.

Paths may contain ``$FINSENT_SHARED`` (default: ``../shared`` beside the checkout, see
:func:`classifier.paths.shared_dir`) and ``~``; :func:`resolve_paths` turns them into absolute paths in the
driver, so workers started elsewhere (``ray job submit --working-dir .``) read the same files.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from classifier.errors import ConfigError
from classifier.labels import DEFAULT_LABELS

#: the dev-report numbers a run can select its best checkpoint on (``loss`` is minimised, the rest maximised)
SELECT_METRICS: tuple[str, ...] = ("macro_f1", "accuracy", "micro_f1", "macro_precision", "macro_recall", "loss")
CLASS_WEIGHT_MODES: tuple[str, ...] = ("none", "balanced", "sqrt")

_SHARED = "$FINSENT_SHARED"


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class FinetuneConfig:
    """Fine-tune a finsent classifier (encoder + [CLS] linear head) on labelled ``label|||text`` files."""

    # ------------------------------------------------------------------ data
    train_files: list[str] = _help(
        "labelled training files (label|||text .txt, .jsonl or .csv); $FINSENT_SHARED expands to ../shared",
        default_factory=lambda: [f"{_SHARED}/data/finfe/train.txt"],
    )
    dev_file: str = _help("labelled dev file: evaluated every epoch, selects the best checkpoint",
                          default=f"{_SHARED}/data/finfe/dev.txt")
    extra_train_files: list[str] = _help(
        "more labelled files mixed into training (e.g. $FINSENT_SHARED/data/cfsc/train.txt news sentences)",
        default_factory=list,
    )
    max_train_examples: int | None = _help(
        "use only this many training examples (random sample with `seed`), for quick runs; null = all", default=None)
    on_bad_line: Literal["skip", "raise"] = _help(
        "a bad data line: skip and count it, or stop with its file and line number", default="skip")

    # ------------------------------------------------------------------ model
    base_model: str | None = _help(
        "base encoder: a local Hugging Face checkpoint directory; null = $FINSENT_BASE_MODEL or "
        "../shared/models/me5-small-zh-fin", default=None)
    init_model: str | None = _help(
        "start from a finsent model directory (its encoder, compound tokens and head) instead of base_model, e.g. "
        "to fine-tune sequentially with ewc/rehearsal; its labels must equal `labels`, lexicon_files and "
        "extra_words are then ignored", default=None)
    lexicon_files: list[str] | None = _help(
        "finance word lists whose multi-piece words become compound tokens; null = the shared lexicon, [] = none",
        default=None)
    extra_words: list[str] = _help("more words to add as compound tokens", default_factory=list)
    labels: list[str] = _help("label names in id order", default_factory=lambda: list(DEFAULT_LABELS))
    max_len: int = _help("model input length in pieces including [CLS]/[SEP]; longer texts are cut head+tail",
                         default=128)
    head_tokens: int | None = _help(
        "pieces kept from the start of a long text (the rest from its end); null = a quarter of the body",
        default=None)
    dropout: float = _help("dropout before the linear head", default=0.1)
    model_name: str = _help("name in the exported model's model_version (<name>@<weights hash>)",
                            default="finsent")

    # ------------------------------------------------------------------ optimisation
    batch_size: int = _help("examples per optimizer micro-step over ALL workers (each gets batch_size/num_workers)",
                            default=32)
    eval_batch_size: int = _help("examples per forward pass when evaluating dev", default=64)
    epochs: int = _help("passes over the training data", default=3)
    lr: float = _help("peak learning rate (AdamW) of the top encoder layer and the head", default=5e-5)
    warmup_ratio: float = _help("fraction of optimizer steps with linear warm-up from 0; then linear decay to 0",
                                default=0.06)
    layerwise_lr_decay: float = _help(
        "layer-wise LR decay: the top layer gets lr, each layer below decay times the one above, the "
        "embeddings lr * decay^num_layers; 1.0 = off", default=1.0)
    head_lr_scale: float = _help("learning-rate multiplier of the linear head", default=1.0)
    weight_decay: float = _help("AdamW weight decay (not applied to biases and LayerNorm weights)", default=0.01)
    grad_accum: int = _help("micro-steps whose gradients add up to one optimizer step", default=1)
    max_grad_norm: float = _help("clip the global gradient norm to this; 0 = no clipping", default=1.0)
    seed: int = _help("seed of initialisation, shuffling, dropout and sampling", default=42)
    class_weights: str | list[float] = _help(
        "cross-entropy class weights: none, balanced (n / (k * count)), sqrt (square root of balanced, "
        "milder), or one number per label", default="none")
    label_smoothing: float = _help("cross-entropy label smoothing in [0, 1)", default=0.0)
    l1: float = _help("coefficient of the L1 penalty on the output layer weights (loss += l1 * sum|W|)",
                      default=0.0)
    adversarial: Literal["none", "fgm", "pgd"] = _help(
        "adversarial training on the word embeddings: none, fgm (one step) or pgd (pgd_steps steps)",
        default="none")
    adv_epsilon: float = _help("FGM step size / PGD radius: L2 norm of the embedding perturbation", default=1.0)
    pgd_steps: int = _help("PGD: ascent steps per batch", default=3)
    pgd_alpha: float = _help("PGD: size of each ascent step", default=0.3)
    length_grouped: bool = _help(
        "group examples of similar length into batches (less padding, faster); batches are still shuffled",
        default=True)
    length_group_batches: int = _help("length grouping: sort by length within blocks of this many batches",
                                      default=50)
    patience: int = _help("stop after this many epochs without a better select_metric; 0 = never stop early",
                          default=0)
    select_metric: str = _help(
        f"dev metric that picks the best checkpoint: one of {list(SELECT_METRICS)}", default="macro_f1")

    # ------------------------------------------------------------------ forgetting control
    l2sp: float = _help("L2-SP: coefficient of ||theta - theta_base||^2 on the encoder (0 = off)", default=0.0)
    l2sp_anneal_steps: int = _help("L2-SP: anneal the coefficient to 0 over this many steps (0 = constant)",
                                   default=0)
    ewc: float = _help("EWC: coefficient of the Fisher-weighted penalty (needs ewc_fisher; 0 = off)", default=0.0)
    ewc_fisher: str | None = _help("EWC: Fisher file (safetensors) written by a run with save_fisher=true",
                                   default=None)
    rehearsal_files: list[str] = _help("labelled examples of an earlier task replayed during training",
                                       default_factory=list)
    rehearsal_fraction: float = _help("fraction of the training examples drawn from rehearsal_files", default=0.0)
    freeze_layers: int = _help("freeze the embeddings and this many lowest encoder layers (0 = train all)",
                               default=0)
    save_fisher: bool = _help("after training, estimate the diagonal Fisher on the train data and write "
                              "fisher.safetensors into output_dir (for a later run's EWC)", default=False)
    fisher_max_batches: int = _help("batches used to estimate the Fisher", default=200)

    # ------------------------------------------------------------------ run
    output_dir: str = _help("where the best model is exported (a finsent model directory) with its metrics and "
                            "plots", default="runs/finetune")
    overwrite: bool = _help("allow exporting into an output_dir that already holds a model", default=False)
    run_name: str | None = _help("Ray Train run name (folder under storage_path); null = finetune-<time>",
                                 default=None)
    storage_path: str = _help("Ray Train storage for checkpoints (must be shared storage on a multi-node "
                              "cluster)", default="runs/ray")
    resume: bool = _help("continue the run recorded in output_dir/run.json from its latest checkpoint",
                         default=False)
    num_workers: int = _help("Ray Train workers (DDP processes)", default=2)
    cpus_per_worker: int = _help("CPUs reserved per worker (also its torch thread count)", default=1)
    use_gpu: Literal["auto"] | bool = _help("one GPU per worker: true, false, or auto (when the cluster has GPUs)",
                                            default="auto")
    precision: Literal["fp32", "bf16", "fp16"] = _help(
        "training precision: fp32, or bf16/fp16 autocast (GPU only)", default="fp32")
    keep_checkpoints: int = _help("Ray keeps this many best checkpoints (plus always the latest)", default=1)
    max_failures: int = _help("restart workers from the latest checkpoint this many times after a crash",
                              default=1)
    log_every: int = _help("update the progress bar / log the running loss every this many steps", default=20)
    debug_crash_after_epoch: int | None = _help(
        "fault injection for tests: raise once after reporting this epoch's checkpoint", default=None)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}: {why}")

        if not self.train_files:
            raise bad("train_files", "give at least one labelled training file, e.g. train_files=[train.txt]")
        if not self.dev_file:
            raise bad("dev_file", "give a labelled dev file: it selects the best checkpoint")
        for name in ("max_len", "batch_size", "eval_batch_size", "epochs", "grad_accum", "num_workers",
                     "cpus_per_worker", "keep_checkpoints", "log_every", "pgd_steps", "length_group_batches",
                     "fisher_max_batches"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be at least 1, got {getattr(self, name)}")
        if self.max_len < 8:
            raise bad("max_len", f"must be at least 8, got {self.max_len}")
        if self.head_tokens is not None and not 0 <= self.head_tokens <= self.max_len - 2:
            raise bad("head_tokens", f"must be between 0 and max_len-2 ({self.max_len - 2}), got {self.head_tokens}")
        if self.batch_size % self.num_workers:
            raise bad("batch_size", f"{self.batch_size} is not divisible by num_workers={self.num_workers}: "
                      "pick a multiple so every worker gets the same share")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise bad("max_train_examples", "must be at least 1 or null (all)")
        if self.lr <= 0:
            raise bad("lr", f"must be positive, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise bad("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise bad("layerwise_lr_decay", f"must be in (0, 1], got {self.layerwise_lr_decay} (1.0 = off)")
        if self.head_lr_scale <= 0:
            raise bad("head_lr_scale", f"must be positive, got {self.head_lr_scale}")
        for name in ("weight_decay", "max_grad_norm", "l1", "adv_epsilon", "pgd_alpha", "l2sp", "ewc"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("patience", "l2sp_anneal_steps", "freeze_layers", "max_failures"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", f"must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise bad("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise bad("labels", f"need at least two distinct label names, got {self.labels}")
        if isinstance(self.class_weights, str):
            if self.class_weights not in CLASS_WEIGHT_MODES:
                raise bad("class_weights", f"{self.class_weights!r} is not allowed; choose one of "
                          f"{list(CLASS_WEIGHT_MODES)} or give one number per label, e.g. [1.5,1,1.5]")
        else:
            if len(self.class_weights) != len(self.labels):
                raise bad("class_weights", f"got {len(self.class_weights)} weights for {len(self.labels)} labels "
                          f"{self.labels}: give one number per label")
            if any(w <= 0 for w in self.class_weights):
                raise bad("class_weights", f"weights must be positive, got {self.class_weights}")
        if self.select_metric not in SELECT_METRICS:
            raise bad("select_metric", f"{self.select_metric!r} is not allowed; choose one of {list(SELECT_METRICS)}")
        if self.ewc > 0 and not self.ewc_fisher:
            raise bad("ewc_fisher", "ewc > 0 needs the Fisher file of the earlier task: set ewc_fisher=PATH "
                      "(written by a run with save_fisher=true)")
        if not 0.0 <= self.rehearsal_fraction < 1.0:
            raise bad("rehearsal_fraction", f"must be in [0, 1), got {self.rehearsal_fraction}")
        if self.rehearsal_fraction > 0 and not self.rehearsal_files:
            raise bad("rehearsal_files", "rehearsal_fraction > 0 needs rehearsal_files=[old_task.txt]")
        if self.precision != "fp32" and self.use_gpu is False:
            raise bad("precision", f"{self.precision} autocast needs a GPU: use precision=fp32 with use_gpu=false")
        if self.debug_crash_after_epoch is not None and self.debug_crash_after_epoch < 0:
            raise bad("debug_crash_after_epoch", "must be >= 0 or null")

    # ------------------------------------------------------------------ derived values
    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers

    @property
    def score_attribute(self) -> str:
        """The key of the reported metrics that Ray's CheckpointConfig ranks checkpoints by."""
        return f"dev_{self.select_metric}"

    @property
    def score_order(self) -> Literal["max", "min"]:
        return "min" if self.select_metric == "loss" else "max"


def expand_path(p: str | os.PathLike[str]) -> Path:
    """``$FINSENT_SHARED`` (defaulting to :func:`classifier.paths.shared_dir`), other env vars and ``~``
    expanded; relative paths made absolute against the working directory."""
    from classifier.paths import shared_dir

    s = str(p)
    if _SHARED in s or "${FINSENT_SHARED}" in s:
        shared = os.environ.get("FINSENT_SHARED") or str(shared_dir())
        s = s.replace("${FINSENT_SHARED}", shared).replace(_SHARED, shared)
    return Path(os.path.expandvars(s)).expanduser().absolute()


def resolve_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """A copy of ``cfg`` with every path absolute and the defaults (base model, lexicon) filled in."""
    from classifier.paths import default_base_model, default_lexicon

    base = None  # with init_model the base encoder is not needed
    if cfg.base_model or not cfg.init_model:
        base = Path(default_base_model(expand_path(cfg.base_model) if cfg.base_model else None)).absolute()
    lexicons = [default_lexicon()] if cfg.lexicon_files is None else cfg.lexicon_files
    return dataclasses.replace(
        cfg,
        train_files=[str(expand_path(p)) for p in cfg.train_files],
        dev_file=str(expand_path(cfg.dev_file)),
        extra_train_files=[str(expand_path(p)) for p in cfg.extra_train_files],
        rehearsal_files=[str(expand_path(p)) for p in cfg.rehearsal_files],
        base_model=str(base) if base else None,
        lexicon_files=[str(expand_path(p)) for p in lexicons],
        ewc_fisher=str(expand_path(cfg.ewc_fisher)) if cfg.ewc_fisher else None,
        init_model=str(expand_path(cfg.init_model)) if cfg.init_model else None,
        output_dir=str(expand_path(cfg.output_dir)),
        storage_path=str(expand_path(cfg.storage_path)),
    )


def from_dict(values: dict[str, Any]) -> FinetuneConfig:
    """Rebuild a config from :func:`classifier.config.to_dict` output (what workers receive)."""
    from classifier.config import build

    return build(FinetuneConfig, values)
