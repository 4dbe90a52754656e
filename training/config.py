"""Settings of the training recipes, typed, documented and checked at construction.

Every recipe's config is a pydantic model (:class:`classifier.config.Config`) built from shared parts, so a
setting every recipe has is defined once:

* :class:`RunSettings` — where a run writes, how it runs on Ray Train and how it is resumed (every recipe);
* :class:`OptimSettings` — batch, schedule and AdamW (every recipe); :class:`TrainSettings` = both;
* :class:`ForgettingSettings` — L2-SP and layer freezing (fine-tuning, pretraining, distillation);
* :class:`EncoderSettings` — the base encoder and the compound-token words (fine-tuning, pretraining);
* :class:`ClassifierSettings` — labelled data, the classifier head, its regularisers, dev selection, weight
  averaging and the post-processing fitted at export (fine-tuning and distillation);
* :class:`FinetuneConfig` (here), :class:`training.pretrain.PretrainConfig` and
  :class:`training.distill.DistillConfig` add what only their recipe has.

Loaded with :func:`classifier.config.load_config` or ``finsent <recipe>`` (defaults ← YAML ← ``key=value``
overrides). The same object (as a dict) is handed to every Ray Train worker; nothing is read from globals. Add
a setting as ``name: T = Field(default, description=...)`` to the part it belongs to and its checks to that
part's validator (raise ``ConfigError`` naming the field and the fix).

Paths may contain ``$FINSENT_SHARED`` (default: ``../shared`` beside the checkout, see
:func:`classifier.paths.shared_dir`) and ``~``; :func:`resolve_paths` turns them into absolute paths in the
driver, so workers started elsewhere (``ray job submit --working-dir .``) read the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from classifier.config import Config, build, replace
from classifier.errors import ConfigError
from classifier.labels import DEFAULT_LABELS

#: the dev-report numbers a run can select its best checkpoint on (``loss`` is minimised, the rest maximised)
#: ``mean_macro_f1`` is the unweighted mean of the dev files' macro-F1 (each source counts the same)
SELECT_METRICS: tuple[str, ...] = ("macro_f1", "mean_macro_f1", "accuracy", "micro_f1", "macro_precision",
                                   "macro_recall", "loss")
CLASS_WEIGHT_MODES: tuple[str, ...] = ("none", "balanced", "sqrt")

_SHARED = "$FINSENT_SHARED"


def field_error(name: str, why: str) -> ConfigError:
    return ConfigError(f"{name}: {why}")


def check_min(cfg: Config, names: tuple[str, ...], low: float, strict: bool = False) -> None:
    """Every field in ``names`` is ``>= low`` (``> low`` when ``strict``), else a ConfigError naming it."""
    for name in names:
        v = getattr(cfg, name)
        if v < low or (strict and v == low):
            need = "positive" if strict else f"at least {low}" if low else ">= 0"
            raise field_error(name, f"must be {need}, got {v}")


# ================================================================================================ shared parts
class Settings(Config):
    """Base of the parts: each part adds its path fields, made absolute, to :meth:`path_changes`."""

    def path_changes(self) -> dict[str, Any]:
        """The path fields of this config made absolute (:func:`resolve_paths`)."""
        return {}


class RunSettings(Settings):
    """Where a run writes, how it runs on Ray Train, and how it is resumed (every recipe has these)."""

    output_dir: str = Field(
        "runs/finetune",
        description="where the result is exported (a finsent model directory, or pretraining's encoder "
        "directory) with its report, metrics and plots",
    )
    overwrite: bool = Field(False, description="allow exporting into an output_dir that already holds a model")
    run_name: str | None = Field(
        None,
        description="Ray Train run name (folder under storage_path); null = <recipe>-<time>-<random>",
    )
    storage_path: str = Field(
        "runs/ray",
        description="Ray Train storage for checkpoints (must be shared storage on a multi-node cluster)",
    )
    resume: bool = Field(
        False,
        description="continue the run recorded in output_dir/run.json from its latest checkpoint",
    )
    num_workers: int = Field(2, description="Ray Train workers (DDP processes)")
    cpus_per_worker: int = Field(1, description="CPUs reserved per worker (also its torch thread count)")
    use_gpu: Literal["auto"] | bool = Field(
        "auto",
        description="one GPU per worker: true, false, or auto (when the cluster has GPUs)",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="training precision: fp32, or bf16/fp16 autocast (GPU only)",
    )
    keep_checkpoints: int = Field(
        1,
        description="Ray keeps this many checkpoints (the best by the dev score for recipes that select on dev, "
        "else the latest; the latest is always kept)",
    )
    max_failures: int = Field(
        1,
        description="restart workers from the latest checkpoint this many times after a crash",
    )
    log_every: int = Field(20, description="update the progress bar / log the running loss every this many steps")
    progress: bool = Field(True, description="show a progress bar on rank 0")
    log_file: str | None = Field(
        None,
        description="file that receives everything Ray, Ray Train and the libraries print (the terminal shows "
        "finsent's own progress and results only); null = <output_dir>.log beside the output directory",
    )

    @property
    def log_path(self) -> Path:
        """Where the run's full log goes (``log_file``, else ``<output_dir>.log``)."""
        return Path(self.log_file) if self.log_file else Path(str(self.output_dir).rstrip("/") + ".log")

    @model_validator(mode="after")
    def _check_run(self) -> RunSettings:
        check_min(self, ("num_workers", "cpus_per_worker", "keep_checkpoints", "log_every"), 1)
        check_min(self, ("max_failures",), 0)
        if self.precision != "fp32" and self.use_gpu is False:
            raise field_error("precision", f"{self.precision} autocast needs a GPU: use precision=fp32 with use_gpu=false")
        return self

    def path_changes(self) -> dict[str, Any]:
        return {**super().path_changes(), "output_dir": str(expand_path(self.output_dir)),
                "storage_path": str(expand_path(self.storage_path))}


class OptimSettings(Settings):
    """Batching, the LR schedule and AdamW (every recipe has these)."""

    batch_size: int = Field(
        32,
        description="training examples (pretraining: windows) per optimizer micro-step over ALL workers (each "
        "gets batch_size/num_workers)",
    )
    eval_batch_size: int = Field(64, description="examples per forward pass when evaluating (per worker)")
    epochs: int = Field(3, description="passes over the training data")
    lr: float = Field(5e-5, description="peak learning rate (AdamW) of the top encoder layer and the head")
    warmup_ratio: float = Field(
        0.06,
        description="fraction of optimizer steps with linear warm-up from 0; then linear decay to 0",
    )
    layerwise_lr_decay: float = Field(
        1.0,
        description="layer-wise LR decay: the top layer gets lr, each layer below decay times the one "
        "above, the embeddings lr * decay^num_layers; 1.0 = off",
    )
    weight_decay: float = Field(
        0.01,
        description="AdamW weight decay (not applied to biases and LayerNorm weights)",
    )
    grad_accum: int = Field(1, description="micro-steps whose gradients add up to one optimizer step")
    max_grad_norm: float = Field(1.0, description="clip the global gradient norm to this; 0 = no clipping")
    seed: int = Field(42, description="seed of initialisation, shuffling, dropout, masks and sampling")

    @model_validator(mode="after")
    def _check_optim(self) -> OptimSettings:
        check_min(self, ("batch_size", "eval_batch_size", "epochs", "grad_accum"), 1)
        check_min(self, ("lr",), 0, strict=True)
        check_min(self, ("weight_decay", "max_grad_norm"), 0)
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise field_error("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise field_error("layerwise_lr_decay", f"must be in (0, 1], got {self.layerwise_lr_decay} (1.0 = off)")
        return self


class TrainSettings(OptimSettings, RunSettings):
    """Run + optimiser settings: the base of every recipe's config."""

    @model_validator(mode="after")
    def _check_batch(self) -> TrainSettings:
        if self.batch_size % self.num_workers:
            raise field_error("batch_size", f"{self.batch_size} is not divisible by num_workers={self.num_workers}: "
                       "pick a multiple so every worker gets the same share")
        return self

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers


class ForgettingSettings(Settings):
    """Forgetting control towards the starting weights (the base encoder, the earlier model, the teacher)."""

    l2sp: float = Field(
        0.0,
        description="L2-SP: coefficient of ||theta - theta_start||^2 over the encoder (0 = off)",
    )
    l2sp_anneal_steps: int = Field(
        0,
        description="L2-SP: RecAdam-style sigmoid decay of the coefficient to ~0 over this many steps (0 = "
        "constant)",
    )
    freeze_layers: int = Field(
        0,
        description="freeze the embeddings (with a tied MLM decoder) and this many lowest encoder layers (0 = "
        "train all)",
    )

    @model_validator(mode="after")
    def _check_forgetting(self) -> ForgettingSettings:
        check_min(self, ("l2sp",), 0)
        check_min(self, ("l2sp_anneal_steps", "freeze_layers"), 0)
        return self


class EncoderSettings(Settings):
    """The base encoder and the words that become compound tokens (fine-tuning and pretraining)."""

    base_model: str | None = Field(
        None,
        description="base encoder: a local Hugging Face checkpoint directory, or a `finsent pretrain` output (its "
        "compound tokens, and for pretraining its MLM head, are kept); null = $FINSENT_BASE_MODEL or "
        "../shared/models/me5-small-zh-fin",
    )
    lexicon_files: list[str] | None = Field(
        None,
        description="finance word lists whose multi-piece words become compound tokens (pretraining also "
        "segments with them for whole-word masking); null = the shared lexicon, [] = none",
    )
    extra_words: list[str] = Field([], description="more words for the segmenter and the compound tokens")

    def path_changes(self) -> dict[str, Any]:
        return {**super().path_changes(), "base_model": resolve_base_model(self.base_model),
                "lexicon_files": resolve_lexicons(self.lexicon_files)}


class ClassifierSettings(TrainSettings):
    """Training a finsent classifier on labelled ``label|||text`` files, selected on dev, exported with its
    post-processing (fine-tuning and distillation)."""

    # ------------------------------------------------------------------ data
    train_files: list[str] = Field(
        [f"{_SHARED}/data/finfe/train.txt"],
        description="labelled training files (label|||text .txt, .jsonl or .csv); $FINSENT_SHARED expands "
        "to ../shared",
    )
    dev_file: str | list[str] = Field(
        f"{_SHARED}/data/finfe/dev.txt",
        description="labelled dev file(s): evaluated every epoch, select the best checkpoint and fit the "
        "calibration; with several files (one per source) each is also scored on its own",
    )
    extra_train_files: list[str] = Field(
        [],
        description="more labelled files mixed into training (e.g. $FINSENT_SHARED/data/cfsc/train.txt news "
        "sentences)",
    )
    max_train_examples: int | None = Field(
        None,
        description="use only this many training examples (random sample with `seed`), for quick runs; null "
        "= all",
    )
    on_bad_line: Literal["skip", "raise"] = Field(
        "skip",
        description="a bad data line: skip and count it, or stop with its file and line number",
    )

    # ------------------------------------------------------------------ model
    labels: list[str] = Field(list(DEFAULT_LABELS), description="label names in id order")
    max_len: int = Field(
        128,
        description="model input length in pieces including [CLS]/[SEP]; longer texts are cut head+tail",
    )
    head_tokens: int | None = Field(
        None,
        description="pieces kept from the start of a long text (the rest from its end); null = a quarter of "
        "the body",
    )
    truncation: Literal["head_tail", "sliding_window", "sentences"] = Field(
        "head_tail",
        description="how the exported model reads a text longer than max_len at inference: head_tail (one "
        "input: its start and end), sliding_window (overlapping windows) or sentences (whole sentences packed "
        "into inputs); training always uses head_tail",
    )
    pooling: Literal["mean", "max_polar"] = Field(
        "mean",
        description="how the inputs of a long text combine (sliding_window / sentences): mean of the "
        "probabilities, or max_polar (the input with the most bullish + bearish probability decides)",
    )
    dropout: float = Field(0.1, description="dropout before the linear head")
    model_name: str = Field(
        "finsent",
        description="name in the exported model's model_version (<name>@<weights hash>)",
    )

    # ------------------------------------------------------------------ loss and regularisers
    head_lr_scale: float = Field(1.0, description="learning-rate multiplier of the linear head")
    class_weights: str | list[float] = Field(
        "none",
        description="cross-entropy class weights: none, balanced (n / (k * count)), sqrt (square root of "
        "balanced, milder), or one number per label",
    )
    label_smoothing: float = Field(0.0, description="cross-entropy label smoothing in [0, 1)")
    l1: float = Field(
        0.0,
        description="coefficient of the L1 penalty on the output layer weights (loss += l1 * sum|W|)",
    )
    adversarial: Literal["none", "fgm", "pgd"] = Field(
        "none",
        description="adversarial training on the word embeddings: none, fgm (one step) or pgd (pgd_steps "
        "steps)",
    )
    adv_epsilon: float = Field(
        1.0,
        description="FGM step size / PGD radius: L2 norm of the embedding perturbation",
    )
    pgd_steps: int = Field(3, description="PGD: ascent steps per batch")
    pgd_alpha: float = Field(0.3, description="PGD: size of each ascent step")
    rdrop: float = Field(
        0.0,
        description="R-Drop: weight of the symmetric KL between two dropout passes of each batch (0 = off; "
        "e.g. 1.0); costs one more forward/backward per step",
    )

    # ------------------------------------------------------------------ batching and selection
    length_grouped: bool = Field(
        True,
        description="group examples of similar length into batches (less padding, faster); batches are "
        "still shuffled",
    )
    length_group_batches: int = Field(
        50,
        description="length grouping: sort by length within blocks of this many batches",
    )
    patience: int = Field(
        0,
        description="stop after this many epochs without a better select_metric; 0 = never stop early",
    )
    select_metric: str = Field(
        "macro_f1",
        description=f"dev metric that picks the best checkpoint: one of {list(SELECT_METRICS)}",
    )
    ema_decay: float = Field(
        0.0,
        description="exponential moving average of the weights, updated every optimizer step (0 = off; e.g. "
        "0.995); each epoch scores both the raw and the averaged weights on dev and the better one is kept",
    )
    export_variants: bool = Field(
        False,
        description="with ema_decay > 0: also write the raw and the averaged weights of the best epoch to "
        "output_dir/variants/{raw,ema} (to compare them on test)",
    )

    # ------------------------------------------------------------------ after training (fitted on dev)
    calibrate: bool = Field(
        True,
        description="fit temperature scaling on dev and store it in the model directory (calibration.json): "
        "served and streamed probabilities are then the calibrated ones",
    )
    companion: bool = Field(
        False,
        description="also train the linear companion (char n-gram TF-IDF + lexicon counts, logistic "
        "regression) on the training data and blend it with the encoder, fitted on dev (stacking)",
    )
    decision_offsets: bool = Field(
        True,
        description="fit per-label offsets on dev so the label maximises macro-F1 (label = argmax(log p + "
        "offsets)); the probabilities stay calibrated",
    )
    companion_c: float | None = Field(
        None,
        description="companion: inverse regularisation strength of the logistic regression; null = chosen on dev "
        "(the value of 0.5, 1, 2, 4, 8 with the lowest dev log-loss)",
    )
    polarity_lexicon: str | None = Field(
        None,
        description="companion: word<TAB>pos|neg list for the lexicon-count features; null = the shared "
        "finance lexicon, '' = no lexicon features",
    )

    debug_crash_after_epoch: int | None = Field(
        None,
        description="fault injection for tests: raise once after reporting this epoch's checkpoint",
    )

    @model_validator(mode="after")
    def _check_classifier(self) -> ClassifierSettings:
        if not self.train_files:
            raise field_error("train_files", "give at least one labelled training file, e.g. train_files=[train.txt]")
        if not self.dev_file:
            raise field_error("dev_file", "give a labelled dev file: it selects the best checkpoint")
        check_min(self, ("max_len", "pgd_steps", "length_group_batches"), 1)
        if self.max_len < 8:
            raise field_error("max_len", f"must be at least 8, got {self.max_len}")
        if self.head_tokens is not None and not 0 <= self.head_tokens <= self.max_len - 2:
            raise field_error("head_tokens", f"must be between 0 and max_len-2 ({self.max_len - 2}), got {self.head_tokens}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise field_error("max_train_examples", "must be at least 1 or null (all)")
        check_min(self, ("head_lr_scale",), 0, strict=True)
        if self.companion_c is not None and self.companion_c <= 0:
            raise field_error("companion_c", f"must be positive or null (chosen on dev), got {self.companion_c}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise field_error("ema_decay", f"must be in [0, 1), got {self.ema_decay} (0 = off, e.g. 0.995)")
        check_min(self, ("l1", "adv_epsilon", "pgd_alpha", "rdrop", "patience"), 0)
        if not 0.0 <= self.dropout < 1.0:
            raise field_error("dropout", f"must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise field_error("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise field_error("labels", f"need at least two distinct label names, got {self.labels}")
        if isinstance(self.class_weights, str):
            if self.class_weights not in CLASS_WEIGHT_MODES:
                raise field_error("class_weights", f"{self.class_weights!r} is not allowed; choose one of "
                           f"{list(CLASS_WEIGHT_MODES)} or give one number per label, e.g. [1.5,1,1.5]")
        else:
            if len(self.class_weights) != len(self.labels):
                raise field_error("class_weights", f"got {len(self.class_weights)} weights for {len(self.labels)} labels "
                           f"{self.labels}: give one number per label")
            if any(w <= 0 for w in self.class_weights):
                raise field_error("class_weights", f"weights must be positive, got {self.class_weights}")
        if self.select_metric not in SELECT_METRICS:
            raise field_error("select_metric", f"{self.select_metric!r} is not allowed; choose one of {list(SELECT_METRICS)}")
        if self.debug_crash_after_epoch is not None and self.debug_crash_after_epoch < 0:
            raise field_error("debug_crash_after_epoch", "must be >= 0 or null")
        return self

    # ------------------------------------------------------------------ derived values
    @property
    def dev_files(self) -> list[str]:
        """``dev_file`` as a list."""
        return [self.dev_file] if isinstance(self.dev_file, str) else list(self.dev_file)

    @property
    def score_attribute(self) -> str:
        """The key of the reported metrics that Ray's CheckpointConfig ranks checkpoints by (with ema_decay the
        better of the raw and the averaged weights)."""
        return f"score_{self.select_metric}"

    @property
    def score_order(self) -> Literal["max", "min"]:
        return "min" if self.select_metric == "loss" else "max"

    def path_changes(self) -> dict[str, Any]:
        from classifier.paths import default_lexicon

        return {
            **super().path_changes(),
            "train_files": [str(expand_path(p)) for p in self.train_files],
            "dev_file": (str(expand_path(self.dev_file)) if isinstance(self.dev_file, str)
                         else [str(expand_path(p)) for p in self.dev_file]),
            "extra_train_files": [str(expand_path(p)) for p in self.extra_train_files],
            "polarity_lexicon": (str(expand_path(self.polarity_lexicon)) if self.polarity_lexicon
                                 else "" if self.polarity_lexicon == "" else str(default_lexicon())),
        }


# ================================================================================================ fine-tuning
class FinetuneConfig(EncoderSettings, ForgettingSettings, ClassifierSettings):
    """Fine-tune a finsent classifier (encoder + [CLS] linear head) on labelled ``label|||text`` files."""

    init_model: str | None = Field(
        None,
        description="start from a finsent model directory (its encoder, compound tokens and head) instead "
        "of base_model, e.g. to fine-tune sequentially with ewc/rehearsal; its labels must equal `labels`, "
        "lexicon_files and extra_words are then ignored",
    )

    # ------------------------------------------------------------------ sequential tasks
    ewc: float = Field(
        0.0,
        description="EWC: coefficient of the Fisher-weighted penalty (needs ewc_fisher; 0 = off)",
    )
    ewc_fisher: str | None = Field(
        None,
        description="EWC: Fisher file (safetensors) written by a run with save_fisher=true",
    )
    rehearsal_files: list[str] = Field(
        [],
        description="labelled examples of an earlier task replayed during training",
    )
    rehearsal_fraction: float = Field(
        0.0,
        description="fraction of the training examples drawn from rehearsal_files",
    )
    save_fisher: bool = Field(
        False,
        description="after training, estimate the diagonal Fisher on the train data and write "
        "fisher.safetensors into output_dir (for a later run's EWC)",
    )
    fisher_max_batches: int = Field(200, description="batches used to estimate the Fisher")

    @model_validator(mode="after")
    def _check_finetune(self) -> FinetuneConfig:
        check_min(self, ("fisher_max_batches",), 1)
        check_min(self, ("ewc",), 0)
        if self.ewc > 0 and not self.ewc_fisher:
            raise field_error("ewc_fisher", "ewc > 0 needs the Fisher file of the earlier task: set ewc_fisher=PATH "
                       "(written by a run with save_fisher=true)")
        if not 0.0 <= self.rehearsal_fraction < 1.0:
            raise field_error("rehearsal_fraction", f"must be in [0, 1), got {self.rehearsal_fraction}")
        if self.rehearsal_fraction > 0 and not self.rehearsal_files:
            raise field_error("rehearsal_files", "rehearsal_fraction > 0 needs rehearsal_files=[old_task.txt]")
        return self

    def path_changes(self) -> dict[str, Any]:
        changes = super().path_changes()
        if self.init_model and not self.base_model:
            changes["base_model"] = None  # with init_model the base encoder is not needed
        return {
            **changes,
            "rehearsal_files": [str(expand_path(p)) for p in self.rehearsal_files],
            "ewc_fisher": str(expand_path(self.ewc_fisher)) if self.ewc_fisher else None,
            "init_model": str(expand_path(self.init_model)) if self.init_model else None,
        }


# ================================================================================================ paths
def expand_path(p: str | os.PathLike[str]) -> Path:
    """``$FINSENT_SHARED`` (defaulting to :func:`classifier.paths.shared_dir`), other env vars and ``~``
    expanded; relative paths made absolute against the working directory."""
    from classifier.paths import shared_dir

    s = str(p)
    if _SHARED in s or "${FINSENT_SHARED}" in s:
        shared = os.environ.get("FINSENT_SHARED") or str(shared_dir())
        s = s.replace("${FINSENT_SHARED}", shared).replace(_SHARED, shared)
    return Path(os.path.expandvars(s)).expanduser().absolute()


def resolve_base_model(base_model: str | None) -> str:
    """The base encoder directory as an absolute path (null → $FINSENT_BASE_MODEL or the shared default)."""
    from classifier.paths import default_base_model

    return str(Path(default_base_model(expand_path(base_model) if base_model else None)).absolute())


def resolve_lexicons(lexicon_files: list[str] | None) -> list[str]:
    """Lexicon files as absolute paths (null → the shared finance lexicon, [] → none)."""
    from classifier.paths import default_lexicon

    lexicons = [default_lexicon()] if lexicon_files is None else lexicon_files
    return [str(expand_path(p)) for p in lexicons]


def resolve_paths(cfg: RunSettings) -> Any:
    """A copy of ``cfg`` (any recipe's config) with every path absolute and the defaults (base model,
    lexicon) filled in: what the driver hands to workers that may run elsewhere."""
    return replace(cfg, **cfg.path_changes())


def from_dict(values: dict[str, Any]) -> FinetuneConfig:
    """Rebuild a config from :func:`classifier.config.to_dict` output (what workers receive)."""
    return build(FinetuneConfig, values)
