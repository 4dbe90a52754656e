"""Knowledge distillation: a smaller, faster student learns from a finsent teacher on Ray Train.

    finsent distill                                         # packaged distill-6.yaml: teacher runs/finetune
    finsent distill --config training/configs/distill-4.yaml teacher_model=models/finsent
    finsent distill soft_labels=labels/corpus/               # corpus already labelled by `finsent label`

1. The teacher (a finsent model directory) labels a seeded sample of the unlabelled finance corpus with its
   **final** probabilities (``Predictor.predict_proba``: calibrated and blended with its companion, what it
   serves) through the batch labeller (:mod:`labeling`, ``finsent label`` on Ray Data). The labels go to
   ``label_dir`` (default ``<storage_path>/soft-labels/<teacher version>-<docs>-seed<corpus_seed>``), shared by
   every student of the same teacher and sample; a killed labelling resumes there. ``soft_labels=PATH`` skips
   this and reads a file or directory in the format ``finsent label`` writes (``text`` + ``p_<label>``).
2. The student (:func:`make_student`) is the teacher with fewer encoder layers: same tokenizer, compound tokens,
   embeddings and head; student layer ``i`` of ``n`` starts as teacher layer ``floor(i * L / n)`` (DistilBERT's
   "one layer out of two": 12→6 takes 0, 2, 4, 6, 8, 10; 12→4 takes 0, 3, 6, 9; 4→2 takes 0, 2), or the layers
   listed in ``teacher_layers``.
3. It trains on the gold training files (as fine-tuning) plus the labelled corpus documents. Per example
   (:func:`distillation_loss`)::

       loss_i = (1 - alpha) · CE(student_i, gold_i)                     if the example has a gold label
              + alpha · T² · KL(teacher_i^(T) || student_i^(T))         if it has teacher probabilities

   averaged over the batch, where ``student^(T) = softmax(z / T)`` and ``teacher^(T) ∝ p^(1/T)`` (the teacher's
   probabilities ``p`` at temperature ``T``: the softmax of ``log p / T``). ``T²`` keeps the soft term's
   gradients on the scale of the hard one (Hinton et al., 2015).
4. Dev selection, weight averaging (EMA), export and the calibration / companion fitted on dev are
   fine-tuning's (:class:`DistillRecipe` subclasses :class:`training.finetune.FinetuneRecipe`); the export is
   an ordinary finsent model directory named ``finsent-student-<n>L`` unless ``model_name`` says otherwise,
   its ``config.json`` recording the teacher and the layer map.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from classifier.config import replace
from classifier.errors import ConfigError, DataError, ModelDirError
from classifier.modeldir import ModelMeta, check_model_dir, load_model_dir, model_version, read_meta
from classifier.modeling import FinsentClassifier
from classifier.tokenization import FinsentTokenizer, TruncationConfig
from training.config import ClassifierSettings, ForgettingSettings, check_min, expand_path, field_error
from training.data import IGNORE_INDEX, EncodedDataset, FinetuneData, class_weight_vector
from training.finetune import FinetuneRecipe, FinetuneResult, check_labelled_inputs, export_best
from training.lifecycle import Outcome, run_recipe

log = logging.getLogger(__name__)

_SHARED = "$FINSENT_SHARED"
#: prefix of the probability columns ``finsent label`` writes (``p_利多``)
PROB_PREFIX = "p_"
#: the text column of a soft-label file (``finsent label ... passthrough=[text]`` writes it)
TEXT_COLUMN = "text"
_LAYER_KEY = re.compile(r"\.(?:layer|layers|block|blocks)\.(\d+)\.")


# ================================================================================================ config
class DistillConfig(ForgettingSettings, ClassifierSettings):
    """Distil a finsent teacher into a student with fewer encoder layers: gold labels + the teacher's soft
    labels of the unlabelled finance corpus, on Ray Train."""

    example_overrides = ("teacher_model=runs/finetune",)

    teacher_model: str = Field(
        "runs/finetune",
        description="the teacher: a finsent model directory (e.g. the output of `finsent finetune`); its final "
        "probabilities (calibrated, blended) label the corpus, and its tokenizer, compound tokens, embeddings, "
        "head and every other layer initialise the student",
    )
    student_layers: int = Field(
        6,
        description="encoder layers of the student (at most the teacher's); student layer i starts as teacher "
        "layer floor(i * L / student_layers): 12->6 takes 0,2,4,6,8,10; 12->4 takes 0,3,6,9",
    )
    teacher_layers: list[int] | None = Field(
        None,
        description="the teacher layers to copy instead of that rule, bottom to top (one per student layer, "
        "increasing), e.g. [0,2,4,7,9,11]; null = the rule",
    )

    # ------------------------------------------------------------------ the teacher's labels
    corpus_files: list[str] = Field(
        [f"{_SHARED}/data/corpus/fin_corpus.txt"],
        description="unlabelled text files, one document a line, that the teacher labels for the student",
    )
    max_corpus_docs: int = Field(
        20000,
        description="label and train on this many corpus documents, a random sample drawn with corpus_seed "
        "(0 = all; the shared corpus has 90,831)",
    )
    corpus_seed: int = Field(42, description="seed of the corpus sample")
    soft_labels: str | None = Field(
        None,
        description="an already labelled corpus instead of labelling now: a `finsent label` output directory "
        "or one .parquet/.jsonl file with a `text` column and one p_<label> probability column per label; "
        "null = the teacher labels the corpus sample (finsent label, Ray Data)",
    )
    label_dir: str | None = Field(
        None,
        description="where the teacher's labels of the corpus sample go (corpus.jsonl + labels/); null = "
        "<storage_path>/soft-labels/<teacher version>-<docs>-seed<corpus_seed>, reused by every student of "
        "the same teacher and sample; must be shared storage on a multi-node cluster",
    )
    label_concurrency: int | None = Field(
        None,
        description="teacher Predictor actors while labelling (one CPU each); null = as many as the cluster fits",
    )
    label_backend: Literal["torch", "onnx", "auto"] = Field(
        "torch",
        description="inference backend of the teacher while labelling (see `finsent label`); auto = the fastest "
        "on the host within tolerance of torch",
    )

    # ------------------------------------------------------------------ the loss
    distill_temperature: float = Field(
        2.0,
        description="temperature T: teacher and student distributions are softened by T in the KL term, "
        "which is multiplied by T^2",
    )
    distill_alpha: float = Field(
        0.5,
        description="weight of the soft term: per example (1 - alpha) * CE on a gold label + alpha * T^2 * "
        "KL(teacher || student) on teacher probabilities, averaged over the batch (0 = gold labels only, "
        "1 = teacher only)",
    )

    # ------------------------------------------------------------------ overrides of the shared defaults
    model_name: str | None = Field(
        None,
        description="name in the exported model's model_version (<name>@<weights hash>); null = "
        "finsent-student-<student_layers>L",
    )
    output_dir: str = Field(
        "runs/distill",
        description="where the best student is exported (an ordinary finsent model directory) with its "
        "report, metrics and plots",
    )

    @model_validator(mode="after")
    def _check_distill(self) -> DistillConfig:
        if not self.teacher_model:
            raise field_error("teacher_model", "give the teacher's finsent model directory, e.g. "
                              "teacher_model=runs/finetune")
        check_min(self, ("student_layers",), 1)
        check_min(self, ("max_corpus_docs",), 0)
        check_min(self, ("distill_temperature",), 0, strict=True)
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise field_error("distill_alpha", f"must be in [0, 1], got {self.distill_alpha}")
        if self.teacher_layers is not None:
            tl = self.teacher_layers
            if len(tl) != self.student_layers:
                raise field_error("teacher_layers", f"lists {len(tl)} layers for student_layers="
                                  f"{self.student_layers}: give one teacher layer per student layer")
            if any(i < 0 for i in tl) or any(b <= a for a, b in zip(tl, tl[1:], strict=False)):
                raise field_error("teacher_layers", f"{tl} must be increasing layer numbers >= 0, bottom to top")
        if self.label_concurrency is not None and self.label_concurrency < 1:
            raise field_error("label_concurrency", "must be at least 1 or null")
        if not self.soft_labels and not self.corpus_files and self.distill_alpha > 0:
            raise field_error("corpus_files", "give the corpus the teacher labels (or soft_labels=PATH, or "
                              "distill_alpha=0 for gold labels only)")
        if self.freeze_layers > self.student_layers:
            raise field_error("freeze_layers", f"{self.freeze_layers} is more than the student's "
                              f"{self.student_layers} layers")
        return self

    @property
    def student_name(self) -> str:
        return self.model_name or f"finsent-student-{self.student_layers}L"

    def path_changes(self) -> dict[str, Any]:
        return {
            **super().path_changes(),
            "teacher_model": str(expand_path(self.teacher_model)),
            "corpus_files": [str(expand_path(p)) for p in self.corpus_files],
            "soft_labels": str(expand_path(self.soft_labels)) if self.soft_labels else None,
            "label_dir": str(expand_path(self.label_dir)) if self.label_dir else None,
        }


RESUME_MUST_MATCH: tuple[str, ...] = (
    "train_files", "extra_train_files", "dev_file", "max_train_examples", "teacher_model", "student_layers",
    "teacher_layers", "corpus_files", "max_corpus_docs", "corpus_seed", "soft_labels", "label_dir", "labels",
    "max_len", "head_tokens", "batch_size", "grad_accum", "epochs", "seed", "distill_temperature", "distill_alpha")


# ================================================================================================ the student
def student_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layer each student layer starts from: ``floor(i * L / n)`` for ``i = 0 .. n-1`` (evenly
    spaced from the bottom, DistilBERT's one-in-two for ``n = L/2``; all layers for ``n = L``)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ConfigError(f"student_layers: {student_layers} must be between 1 and the teacher's {teacher_layers} "
                          "layers")
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def num_layers(model: FinsentClassifier) -> int:
    n = getattr(model.encoder.config, "num_hidden_layers", None)
    if n is None:
        raise ModelDirError(f"{type(model.encoder).__name__} has no num_hidden_layers in its config: distillation "
                            "needs a BERT-family encoder (encoder.layer.N)")
    return int(n)


def make_student(teacher: FinsentClassifier, layer_map: list[int], dropout: float | None = None
                 ) -> FinsentClassifier:
    """A copy of ``teacher`` keeping only the encoder layers in ``layer_map`` (student layer ``i`` = teacher
    layer ``layer_map[i]``); embeddings, final norms and the head are copied as they are."""
    from transformers import AutoModel

    total = num_layers(teacher)
    if not layer_map or any(not 0 <= j < total for j in layer_map) or sorted(set(layer_map)) != list(layer_map):
        raise ConfigError(f"teacher_layers: {layer_map} must be increasing layer numbers below the teacher's "
                          f"{total} layers")
    config = copy.deepcopy(teacher.encoder.config)
    config.num_hidden_layers = len(layer_map)
    try:
        encoder = AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # encoders without a pooler option
        encoder = AutoModel.from_config(config)
    student = FinsentClassifier(encoder, teacher.classifier.out_features,
                                teacher.dropout.p if dropout is None else dropout)
    position = {t: s for s, t in enumerate(layer_map)}
    state: dict[str, torch.Tensor] = {}
    for key, value in teacher.state_dict().items():
        m = _LAYER_KEY.search(key)
        if m is None:
            state[key] = value.detach().clone()
        elif int(m.group(1)) in position:
            state[f"{key[:m.start(1)]}{position[int(m.group(1))]}{key[m.end(1):]}"] = value.detach().clone()
    student.load_state_dict(state, strict=True)
    return student


def build_student(cfg: DistillConfig) -> tuple[FinsentClassifier, FinsentTokenizer, ModelMeta]:
    """The student of ``cfg.teacher_model`` with the teacher's tokenizer (at this run's truncation) and a
    model-directory meta that names the teacher and the layer map."""
    teacher, tokenizer, tmeta = load_model_dir(cfg.teacher_model)
    if tuple(tmeta.labels) != tuple(cfg.labels):
        raise ConfigError(f"teacher_model: {cfg.teacher_model} predicts {list(tmeta.labels)} but labels={cfg.labels}; "
                          "set labels to the teacher's labels")
    total = num_layers(teacher)
    layer_map = list(cfg.teacher_layers) if cfg.teacher_layers else student_layer_map(total, cfg.student_layers)
    student = make_student(teacher, layer_map, cfg.dropout)
    student.train()
    trunc = TruncationConfig(max_len=cfg.max_len, head_tokens=cfg.head_tokens, strategy=cfg.truncation,
                             pooling=cfg.pooling)
    tokenizer.truncation = trunc
    meta = ModelMeta(labels=tuple(cfg.labels), base_model=tmeta.base_model, truncation=trunc, dropout=cfg.dropout,
                     name=cfg.student_name,
                     extra={"distilled_from": {"teacher_model": str(cfg.teacher_model),
                                               "teacher_version": model_version(cfg.teacher_model, tmeta),
                                               "teacher_layers": total, "layer_map": layer_map,
                                               "temperature": cfg.distill_temperature, "alpha": cfg.distill_alpha}})
    return student, tokenizer, meta


# ================================================================================================ the loss
def soften(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities at temperature ``T``: ``p^(1/T)`` renormalised (= softmax(log p / T)); zeros stay 0."""
    q = probs.float().clamp_min(0.0)
    if temperature != 1.0:
        q = q.pow(1.0 / temperature)
    return q / q.sum(-1, keepdim=True).clamp_min(1e-12)


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_probs: torch.Tensor | None,
                      has_soft: torch.Tensor | None, temperature: float, alpha: float,
                      class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, mean CE over gold examples, mean T²·KL over soft examples)``.

    Per example: ``(1 - alpha)·CE`` when it has a gold label (``labels != IGNORE_INDEX``) plus
    ``alpha·T²·KL(soften(p, T) || softmax(z / T))`` when it has teacher probabilities (``has_soft``); the loss
    is their mean over the batch. ``class_weights`` multiply each gold example's CE."""
    logits = logits.float()
    zero = logits.new_zeros(logits.shape[0])
    gold = labels != IGNORE_INDEX
    if gold.any():
        ce_i = nn.functional.cross_entropy(logits, labels.masked_fill(~gold, 0), weight=class_weights,
                                           reduction="none", label_smoothing=label_smoothing) * gold
    else:
        ce_i = zero
    soft = has_soft if has_soft is not None and teacher_probs is not None else torch.zeros_like(gold)
    if soft.any():
        target = soften(teacher_probs, temperature)
        log_student = torch.log_softmax(logits / temperature, dim=-1)
        kl_i = nn.functional.kl_div(log_student, target, reduction="none").sum(-1) * temperature ** 2 * soft
    else:
        kl_i = zero
    loss = ((1.0 - alpha) * ce_i + alpha * kl_i).mean()
    ce_mean = ce_i.sum() / gold.sum().clamp_min(1)
    kl_mean = kl_i.sum() / soft.sum().clamp_min(1)
    return loss, ce_mean, kl_mean


class DistillationLoss(nn.Module):
    """:func:`distillation_loss` as a criterion of :mod:`training.engine` (it reads ``soft`` / ``has_soft``
    from the batch; ``parts`` holds the last call's CE and KL terms for the epoch metrics)."""

    uses_batch = True

    def __init__(self, temperature: float, alpha: float, class_weights: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha
        self.class_weights = class_weights
        self.label_smoothing = label_smoothing
        self.parts: dict[str, float] = {}

    def forward(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss, ce, kl = distillation_loss(logits, batch["labels"], batch.get("soft"), batch.get("has_soft"),
                                         self.temperature, self.alpha, self.class_weights, self.label_smoothing)
        self.parts = {"distill_ce": float(ce.detach()), "distill_kl": float(kl.detach())}
        return loss


# ================================================================================================ soft labels
def soft_label_files(path: str | Path) -> list[Path]:
    """The data files of a soft-label source: the file itself, or a ``finsent label`` output directory's
    ``part-*`` shards (Parquet or JSONL) in order."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.startswith("part-")
                       and f.suffix in (".parquet", ".jsonl"))
        if files:
            return files
        raise DataError(f"soft_labels: {p} holds no part-*.parquet / part-*.jsonl shards; point at a `finsent "
                        "label` output directory or a .parquet/.jsonl file")
    raise DataError(f"soft_labels: {p} not found; give a `finsent label` output directory or a .parquet/.jsonl file")


def _rows(path: Path, columns: list[str]) -> list[dict[str, Any]]:
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        names = set(pq.read_schema(path).names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"soft_labels: {path} lacks the column(s) {missing}; it needs {TEXT_COLUMN!r} and one "
                            f"{PROB_PREFIX}<label> column per label (label the corpus with `finsent label ... "
                            f"passthrough=[{TEXT_COLUMN}]`)")
        return pq.read_table(path, columns=columns).to_pylist()
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"soft_labels: {path} line {n} is not JSON ({e}); fix or remove the line") from None
            missing = [c for c in columns if c not in rec]
            if missing:
                raise DataError(f"soft_labels: {path} line {n} lacks {missing}; every row needs {TEXT_COLUMN!r} and "
                                f"one {PROB_PREFIX}<label> value per label")
            rows.append({c: rec[c] for c in columns})
    return rows


def read_soft_labels(path: str | Path, labels: list[str] | tuple[str, ...]) -> tuple[list[str], list[list[float]], int]:
    """``(texts, probabilities in label order, rows skipped)`` of a soft-label source. Rows without text or
    with probabilities that are missing, negative or do not sum to 1 (within 1e-3) are skipped and counted;
    the others are renormalised to sum to exactly 1."""
    columns = [TEXT_COLUMN, *(PROB_PREFIX + lab for lab in labels)]
    texts: list[str] = []
    probs: list[list[float]] = []
    skipped = 0
    for f in soft_label_files(path):
        for rec in _rows(f, columns):
            text = rec[TEXT_COLUMN]
            p = [rec[c] for c in columns[1:]]
            if not isinstance(text, str) or not text.strip() or any(
                    not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 for v in p) \
                    or abs(sum(p) - 1.0) > 1e-3:
                skipped += 1
                continue
            s = float(sum(p))
            texts.append(text)
            probs.append([float(v) / s for v in p])
    if not texts:
        raise DataError(f"soft_labels: {path} has no usable row (text + probabilities summing to 1)")
    if skipped:
        log.warning("soft labels: skipped %d rows of %s without text or with bad probabilities", skipped, path)
    return texts, probs, skipped


def sample_corpus(files: list[str], max_docs: int, seed: int) -> list[dict[str, str]]:
    """``{"id": "<file>:<line>", "text"}`` of a seeded random sample of ``max_docs`` documents (non-blank
    lines; 0 = all), in corpus order."""
    docs: list[tuple[str, str]] = []
    for name in files:
        p = Path(name)
        if not p.is_file():
            raise DataError(f"corpus_files: {p} not found; fix the path or give soft_labels=PATH")
        with p.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh):
                if line.strip():
                    docs.append((f"{p.name}:{n}", line.strip()))
    if not docs:
        raise DataError(f"corpus_files: {files} hold no text")
    keep = sorted(random.Random(seed).sample(range(len(docs)), max_docs)) if 0 < max_docs < len(docs) \
        else range(len(docs))
    return [{"id": docs[i][0], "text": docs[i][1]} for i in keep]


def default_label_dir(cfg: DistillConfig) -> Path:
    """``<storage_path>/soft-labels/<teacher name>@<version>-<docs>-seed<seed>``."""
    version = model_version(cfg.teacher_model).replace("/", "_")
    docs = f"{cfg.max_corpus_docs}docs" if cfg.max_corpus_docs else "alldocs"
    return Path(cfg.storage_path) / "soft-labels" / f"{version}-{docs}-seed{cfg.corpus_seed}"


def label_corpus(cfg: DistillConfig) -> tuple[Path, dict[str, Any]]:
    """Write the corpus sample to ``label_dir/corpus.jsonl`` (unless it is there already with the same
    content) and label it with the teacher through ``finsent label`` into ``label_dir/labels`` (resuming a
    killed labelling). Ray must be up. Returns the labels directory and the labeller's figures."""
    from labeling.batch import run_label
    from labeling.config import LabelConfig

    root = Path(cfg.label_dir) if cfg.label_dir else default_label_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    body = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in
                   sample_corpus(cfg.corpus_files, cfg.max_corpus_docs, cfg.corpus_seed)).encode("utf-8")
    fresh = not corpus.is_file() or hashlib.sha256(corpus.read_bytes()).digest() != hashlib.sha256(body).digest()
    if fresh:
        corpus.write_bytes(body)
    manifest = root / "labels" / "_manifest.json"
    teacher = model_version(cfg.teacher_model)
    stale = manifest.is_file() and (fresh or str(json.loads(manifest.read_text(encoding="utf-8")).get(
        "model_version", "")).split("+")[0] != teacher)
    if stale:
        log.warning("%s holds labels of another corpus sample or teacher: labelling again", root / "labels")
    log.info("the teacher %s labels %d corpus documents into %s (finsent label)", cfg.teacher_model,
             body.count(b"\n"), root / "labels")
    summary = run_label(LabelConfig(
        inputs=[str(corpus)], format="jsonl", model_dir=cfg.teacher_model, output_dir=str(root / "labels"),
        text_fields=[TEXT_COLUMN], id_field="id", passthrough=[TEXT_COLUMN], output_format="parquet",
        concurrency=cfg.label_concurrency, backend=cfg.label_backend, overwrite=stale, progress=cfg.progress),
        shutdown_ray=False)
    return root / "labels", summary.to_json()


# ================================================================================================ the recipe
class DistillRecipe(FinetuneRecipe):
    """Fine-tuning's recipe with the teacher's student as the model, the labelled corpus added to the training
    set and :class:`DistillationLoss` as the criterion; driver side it labels the corpus first."""

    name = "distill"
    config_class = DistillConfig
    resume_must_match = RESUME_MUST_MATCH

    # ------------------------------------------------------------------ driver side
    @classmethod
    def check_inputs(cls, cfg: DistillConfig) -> None:
        check_labelled_inputs(cfg)
        if not Path(cfg.teacher_model).is_dir():
            raise ModelDirError(f"teacher_model: {cfg.teacher_model} not found; train a teacher with `finsent "
                                "finetune` (its output_dir) or give a finsent model directory")
        try:
            check_model_dir(cfg.teacher_model)
        except ModelDirError as e:
            raise ModelDirError(f"teacher_model: {e}") from None
        _, tmeta = read_meta(cfg.teacher_model)
        if tuple(tmeta.labels) != tuple(cfg.labels):
            raise ConfigError(f"teacher_model: {cfg.teacher_model} predicts {list(tmeta.labels)} but labels="
                              f"{cfg.labels}; set labels to the teacher's labels")
        config = json.loads((Path(cfg.teacher_model) / "config.json").read_text(encoding="utf-8"))
        total = int(config.get("num_hidden_layers", 0))
        if total and cfg.student_layers > total:
            raise ConfigError(f"student_layers: {cfg.student_layers} is more than the teacher's {total} layers")
        if cfg.teacher_layers and total and max(cfg.teacher_layers) >= total:
            raise ConfigError(f"teacher_layers: {cfg.teacher_layers} names a layer the teacher's {total} do not have")
        if total and cfg.student_layers == total and not cfg.teacher_layers:
            log.warning("student_layers=%d keeps all the teacher's layers: the student is not faster", total)
        if cfg.soft_labels:
            soft_label_files(cfg.soft_labels)
        elif cfg.distill_alpha > 0:
            for p in cfg.corpus_files:
                if not Path(p).is_file():
                    raise DataError(f"corpus_files: {p} not found; fix the path or give soft_labels=PATH")

    @classmethod
    def prepare(cls, cfg: DistillConfig, resumed: bool) -> tuple[DistillConfig, dict[str, Any]]:
        """The gold data's counts, then the teacher's labels of the corpus (labelled now unless given)."""
        _, summary = super().prepare(cfg, resumed)
        info: dict[str, Any] = {"teacher_model": cfg.teacher_model, "teacher_version": model_version(cfg.teacher_model),
                                "temperature": cfg.distill_temperature, "alpha": cfg.distill_alpha}
        if cfg.distill_alpha > 0:
            if cfg.soft_labels:
                source = Path(cfg.soft_labels)
            else:
                source, info["labelling"] = label_corpus(cfg)
                cfg = replace(cfg, soft_labels=str(source))
            texts, probs, skipped = read_soft_labels(source, cfg.labels)
            top = torch.tensor(probs).argmax(-1).bincount(minlength=len(cfg.labels)).tolist()
            info.update(soft_labels=str(source), soft_examples=len(texts), soft_rows_skipped=skipped,
                        teacher_label_counts=dict(zip(cfg.labels, top, strict=True)))
        return cfg, {"data": summary, "distillation": info}

    @classmethod
    def export(cls, outcome: Outcome, cfg: DistillConfig, prepared: dict[str, Any]) -> FinetuneResult:
        report = export_best(outcome.result, cfg, prepared["data"], outcome.wall_time_s, outcome.resumed,
                             extra={"distillation": prepared["distillation"]})
        return FinetuneResult(model_dir=Path(cfg.output_dir), report=report, run_path=str(outcome.result.path),
                              resumed=outcome.resumed)

    # ------------------------------------------------------------------ worker hooks
    def build_model(self) -> tuple[FinsentClassifier, FinsentTokenizer, ModelMeta]:
        model, tokenizer, meta = build_student(self.cfg)
        if self.ctx.rank == 0:
            d = meta.extra["distilled_from"]
            log.info("student of %d layers from teacher layers %s (of %d)", len(d["layer_map"]), d["layer_map"],
                     d["teacher_layers"])
        return model, tokenizer, meta

    def train_dataset(self, data: FinetuneData) -> EncodedDataset:
        gold = super().train_dataset(data)
        if self.cfg.distill_alpha == 0 or not self.cfg.soft_labels:
            return gold
        texts, probs, _ = read_soft_labels(self.cfg.soft_labels, self.cfg.labels)
        corpus = EncodedDataset(self.tokenizer.model_inputs(texts), [IGNORE_INDEX] * len(texts), probs)
        if self.ctx.rank == 0:
            log.info("training set: %d gold examples + %d teacher-labelled corpus documents", len(gold), len(corpus))
        return EncodedDataset.concat([gold, corpus])

    def criterion(self, ds: EncodedDataset) -> nn.Module:
        cfg = self.cfg
        weights = class_weight_vector([y for y in ds.labels if y != IGNORE_INDEX], len(cfg.labels), cfg.class_weights)
        return DistillationLoss(cfg.distill_temperature, cfg.distill_alpha,
                                None if weights is None else weights.to(self.ctx.device), cfg.label_smoothing)


def train_func(config: dict[str, Any]) -> dict[str, Any] | None:
    """Runs on every Ray Train worker. ``config`` is ``to_dict(DistillConfig)`` with resolved paths."""
    return DistillRecipe.train_func(config)


def run_distill(cfg: DistillConfig) -> FinetuneResult:
    """Label the corpus with the teacher, train the student on Ray Train and export the best checkpoint to
    ``cfg.output_dir`` (:mod:`training.lifecycle`)."""
    return run_recipe(DistillRecipe, cfg)

