"""``finsent learn``: the feedback loop — continue the LIVE model on people's corrections, gate it, hot-swap it.

    finsent learn serve_app=finsent                  # the model that app serves; swap when the gate passes
    finsent learn model_dir=runs/finetune            # no Serve: train and gate only (swap it in yourself)

One run, each step writing into ``<work_dir>/<run>/`` (see docs/feedback-loop.md):

1. **live model** — the directory the Serve app ``serve_app`` serves (its ``user_config.model_dir``), or
   ``model_dir``; its content hash (weights + calibration) is recorded;
2. **corrections** (:mod:`stream.corrections`) — every correction on the corrections topic, joined with its text
   from the output / review topics, latest per id; bad ones go to the corrections DLQ. Written as
   ``corrections.jsonl`` (the snapshot, hashed) and split by a stable hash of the id into ``train.jsonl`` and
   ``held_back.jsonl`` (``held_back_fraction``): a held-back id is never trained on, in any run. Fewer than
   ``min_corrections`` usable ones stop the run;
3. **train** — the fine-tuning recipe on Ray Train through the shared lifecycle (:func:`training.finetune.
   run_finetune`), ``init_model`` = the live model, ``train_files`` = the train share, rehearsal of the original
   training data (the split's train files, ``rehearsal_fraction``) and L2-SP or EWC towards the live weights.
   The new model directory ``model/`` gets its training report and post-processing as any fine-tune does;
4. **gate** — the live and the new model on the TEST split (every ``<split_dir>/*/test.txt``) and on the
   held-back corrections: the new model passes when every test file's macro-F1 drops by less than
   ``max_test_drop`` AND the held-back corrections' ``correction_metric`` rises by more than
   ``min_correction_gain``. ``gate_report.json`` (beside ``model/``) says what was measured and why;
5. **swap** — only when the gate passed, and only after checking that nothing changed under the run (the live
   model's content hash, the model the app serves, the corrections snapshot, the new model): the app's
   ``user_config.model_dir`` becomes ``model/`` (:func:`serving.swap.swap_model`, an in-place hot swap). It
   is the last step: a run that fails or is interrupted earlier leaves the served model as it was.

Exit codes of ``finsent learn``: 0 swapped (or, without a swap, the gate passed), 1 the gate refused the new model
(the old one keeps serving), 2 stopped (bad settings, too few corrections, inputs changed, a failed swap).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from classifier.config import Config, LogLevel
from classifier.errors import ConfigError, DataError, FinsentError

log = logging.getLogger(__name__)

#: written into every run directory
MANIFEST_FILE = "learn.json"
GATE_REPORT_FILE = "gate_report.json"
CORRECTIONS_FILE = "corrections.jsonl"
TRAIN_FILE = "train.jsonl"
HELD_BACK_FILE = "held_back.jsonl"
MODEL_SUBDIR = "model"
#: salt of the held-back hash: fixed, so an id is held back (or trained on) in every run alike
_HOLDOUT_SALT = "finsent-learn-holdout"

#: FinetuneConfig settings `learn` sets itself (from the live model, the corrections and its own settings)
LEARN_OWNS: tuple[str, ...] = (
    "init_model", "train_files", "extra_train_files", "dev_file", "rehearsal_files", "rehearsal_fraction", "l2sp",
    "ewc", "ewc_fisher", "labels", "output_dir", "overwrite", "resume", "model_name", "max_len", "head_tokens",
    "truncation", "pooling", "save_fisher")
#: learn's defaults for the fine-tuning run (a short continuation, one worker beside Serve and the stream)
FINETUNE_DEFAULTS: dict[str, Any] = {"epochs": 2, "lr": 2e-5, "batch_size": 16, "num_workers": 1,
                                     "warmup_ratio": 0.1, "class_weights": "none", "progress": False}


class LearnStop(FinsentError):
    """``finsent learn`` stopped before the swap (too few corrections, inputs changed, a failed swap)."""


# ================================================================================================ config
class LearnConfig(Config):
    """Continue the live model on the corrections posted to the corrections topic (with rehearsal of the original
    training data and L2-SP or EWC), gate the result on the test split and the held-back corrections, and
    hot-swap it into the Serve app when it passes."""

    example_overrides = ("model_dir=runs/finetune",)

    # ---- the live model ------------------------------------------------------------------------------------
    serve_app: str | None = Field(
        None,
        description="name of the running Serve app (`finsent serve app_name=...`) whose model is learned from and "
        "replaced; null = no Serve: learn from model_dir and gate, without a swap",
    )
    model_dir: str | None = Field(
        None,
        description="the live model directory when serve_app is null; with serve_app it must name the directory "
        "the app serves, or stay null",
    )
    ray_address: str = Field(
        "auto", description="Ray cluster the Serve app runs on (used with serve_app; auto = the local cluster)"
    )

    # ---- Kafka ---------------------------------------------------------------------------------------------
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    security: dict[str, Any] = Field(
        {}, description="kafka-python security settings (keys starting with security_, sasl_ or ssl_), as for "
                        "finsent stream",
    )
    output_topic: str = Field("finance.news.sentiment", description="the stream's output (sentiment) topic")
    corrections_topic: str | None = Field(
        None, description="topic people post corrections to ({\"id\", \"label\"}); default <output_topic>.corrections"
    )
    corrections_dlq_topic: str | None = Field(
        None, description="dead-letter topic of bad corrections; default <corrections_topic>.dlq"
    )
    text_topics: list[str] | None = Field(
        None,
        description="topics whose records give each correction's text, by id (later topics win); default "
        "[<output_topic>.review, <output_topic>]",
    )
    group_id: str = Field(
        "finsent-learn",
        description="consumer group that remembers how far the corrections were checked (each bad correction "
        "goes to the DLQ once)",
    )
    read_timeout_s: float = Field(60.0, description="most seconds to read each topic to its end")

    # ---- data ----------------------------------------------------------------------------------------------
    split_dir: str = Field(
        "runs/split", description="the train/dev/test split of the original data (`finsent split`)"
    )
    test_files: list[str] | None = Field(
        None, description="labelled files the gate scores; default every <split_dir>/*/test.txt"
    )
    dev_files: list[str] | None = Field(
        None,
        description="labelled files that select the epoch and fit the calibration; default every "
        "<split_dir>/*/dev.txt",
    )
    rehearsal_files: list[str] | None = Field(
        None, description="the original training data replayed among the corrections; default every "
                          "<split_dir>/*/train.txt",
    )

    # ---- learning ------------------------------------------------------------------------------------------
    min_corrections: int = Field(
        20, description="fewer usable corrections stop the run (post more corrections, then run learn again)"
    )
    held_back_fraction: float = Field(
        0.2,
        description="share of the corrections held back for the gate (chosen by a stable hash of the id, so a "
        "held-back id is never trained on)",
    )
    rehearsal_fraction: float = Field(
        0.5, description="fraction of the training examples drawn from rehearsal_files (0 = no rehearsal)"
    )
    forgetting: Literal["l2sp", "ewc", "none"] = Field(
        "l2sp", description="weight-space forgetting control towards the live weights: l2sp, ewc or none"
    )
    l2sp: float = Field(0.1, description="L2-SP coefficient (with forgetting=l2sp)")
    ewc: float = Field(1.0e6, description="EWC coefficient (with forgetting=ewc)")
    ewc_fisher: str | None = Field(
        None,
        description="EWC: Fisher file of the live model; default <live model>/fisher.safetensors, else "
        "estimated on rehearsal_files into the run directory",
    )
    finetune: dict[str, Any] = Field(
        dict(FINETUNE_DEFAULTS),
        description="further settings of the fine-tuning run (any `finsent finetune` setting except those learn "
        "sets itself), e.g. finetune.epochs=3 finetune.num_workers=2",
    )
    candidate_model: str | None = Field(
        None,
        description="skip training: gate (and swap) this model directory, e.g. the model of an earlier run whose "
        "swap failed",
    )

    # ---- gate and swap -------------------------------------------------------------------------------------
    max_test_drop: float = Field(
        0.01,
        description="the gate: every test file's macro-F1 must drop by less than this (absolute, 0.01 = one "
        "point; 0 = it must rise)",
    )
    correction_metric: Literal["accuracy", "macro_f1"] = Field(
        "accuracy", description="the gate: the score of the held-back corrections that must improve"
    )
    min_correction_gain: float = Field(
        0.0, description="the gate: the held-back corrections' score must rise by more than this"
    )
    swap: bool = Field(True, description="hot-swap the new model into serve_app when the gate passes")
    swap_timeout_s: float = Field(300.0, description="most seconds to wait for the app to serve the new model")

    # ---- output --------------------------------------------------------------------------------------------
    work_dir: str = Field("runs/learn", description="parent of the run directories")
    run_name: str | None = Field(None, description="the run directory's name; null = learn-<time>-<random>")
    log_level: LogLevel = Field("INFO", description="logging level: DEBUG, INFO, WARNING or ERROR")
    log_file: str | None = Field(
        None, description="file that receives Ray's, Ray Train's and the Kafka client's messages (the terminal shows "
        "finsent's own progress and the gate's decision); null = <work_dir>/learn.log")

    @model_validator(mode="after")
    def _check(self) -> LearnConfig:
        if not self.bootstrap_servers.strip() or any(":" not in s for s in self.bootstrap_servers.split(",")):
            raise ConfigError(f"bootstrap_servers: {self.bootstrap_servers!r} must be host:port[,host:port...], "
                              "e.g. bootstrap_servers=127.0.0.1:9092")
        bad = [k for k in self.security if not k.startswith(("security_", "sasl_", "ssl_"))]
        if bad:
            raise ConfigError(f"security: {bad} are not security settings; only keys starting with security_, "
                              "sasl_ or ssl_ pass through")
        if self.min_corrections < 2:
            raise ConfigError(f"min_corrections: must be at least 2 (one to train, one to hold back), got "
                              f"{self.min_corrections}")
        if not 0.0 < self.held_back_fraction < 1.0:
            raise ConfigError(f"held_back_fraction: must be in (0, 1), got {self.held_back_fraction} (e.g. 0.2)")
        if not 0.0 <= self.rehearsal_fraction < 1.0:
            raise ConfigError(f"rehearsal_fraction: must be in [0, 1), got {self.rehearsal_fraction}")
        for name in ("l2sp", "ewc", "max_test_drop", "read_timeout_s", "swap_timeout_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.forgetting == "ewc" and self.ewc <= 0:
            raise ConfigError("ewc: forgetting=ewc needs a positive coefficient, e.g. ewc=1e6 (or forgetting=none)")
        if self.forgetting == "l2sp" and self.l2sp <= 0:
            raise ConfigError("l2sp: forgetting=l2sp needs a positive coefficient, e.g. l2sp=0.1 (or forgetting=none)")
        if self.serve_app is not None and not self.serve_app.strip():
            raise ConfigError("serve_app: is blank; give the Serve app's name (`finsent serve` default: finsent) or "
                              "null")
        owned = sorted(set(self.finetune) & set(LEARN_OWNS))
        if owned:
            raise ConfigError(f"finetune.{owned[0]}: is set by learn itself (from the live model, the corrections and "
                              "learn's own settings); remove it" + (f" (also {owned[1:]})" if owned[1:] else ""))
        from training.config import FinetuneConfig

        try:
            FinetuneConfig(**self.finetune)
        except ConfigError as e:
            lines = [ln.replace("key(s): ", "key(s): finetune.") if ln.startswith("unknown") else f"finetune.{ln}"
                     for ln in str(e).splitlines()]
            raise ConfigError("\n".join(lines)) from None
        return self

    # ------------------------------------------------------------------------------------------ derived
    @property
    def corrections(self) -> str:
        return self.corrections_topic or f"{self.output_topic}.corrections"

    @property
    def corrections_dlq(self) -> str:
        return self.corrections_dlq_topic or f"{self.corrections}.dlq"

    @property
    def texts_from(self) -> list[str]:
        return list(self.text_topics) if self.text_topics else [f"{self.output_topic}.review", self.output_topic]

    def kafka_common(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers.split(","), **self.security}


#: the config of ``finsent learn`` (finsent.cli.config_class)
CONFIG = LearnConfig


# ================================================================================================ live model
@dataclass
class LiveModel:
    """The model being served: its directory, what it predicts (content hash), and where it is served."""

    model_dir: str
    model_version: str
    content: str
    labels: tuple[str, ...]
    meta: Any
    serve_app: str | None = None
    #: the version the app's replicas report (may carry a backend suffix such as +int8)
    served_version: str | None = None

    @classmethod
    def from_dir(cls, model_dir: str | Path, serve_app: str | None = None,
                 served_version: str | None = None) -> LiveModel:
        from classifier.modeldir import check_model_dir, content_version, model_version, read_meta

        d = check_model_dir(Path(model_dir).expanduser().absolute())
        _, meta = read_meta(d)
        return cls(model_dir=str(d), model_version=model_version(d, meta), content=content_version(d),
                   labels=tuple(meta.labels), meta=meta, serve_app=serve_app, served_version=served_version)

    def to_json(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "model_version": self.model_version, "content": self.content,
                "labels": list(self.labels), "serve_app": self.serve_app, "served_version": self.served_version}


def connect_serve(address: str) -> None:
    """Join the Ray cluster the Serve app runs on (once)."""
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise LearnStop(f"cannot join the Ray cluster at ray_address={address} ({e}): start the app with "
                            "`finsent serve`, or set ray_address to the cluster it runs on") from None


def resolve_live(cfg: LearnConfig) -> LiveModel:
    """The live model: the one ``serve_app`` serves, else ``model_dir``."""
    if cfg.serve_app is None:
        if not cfg.model_dir:
            raise ConfigError("model_dir is not set: pass model_dir=DIR (the live model directory) or serve_app=NAME "
                              "(a running `finsent serve` app)")
        return LiveModel.from_dir(cfg.model_dir)
    from serving.swap import served_model

    connect_serve(cfg.ray_address)
    served = served_model(cfg.serve_app)
    if served.get("last_update_error"):
        log.warning("Serve app %s reports a failed update: %s", cfg.serve_app, served["last_update_error"])
    live = LiveModel.from_dir(served["model_dir"], cfg.serve_app, served["model_version"])
    if cfg.model_dir and Path(cfg.model_dir).expanduser().absolute() != Path(live.model_dir):
        raise ConfigError(f"model_dir: {cfg.model_dir} is not the model Serve app {cfg.serve_app} serves "
                          f"({live.model_dir}); leave model_dir unset with serve_app")
    return live


# ================================================================================================ corrections
def held_back(correction_id: str, fraction: float) -> bool:
    """Whether a correction is held back for the gate: a stable hash of its id below ``fraction`` (the same
    answer in every run, so a held-back id is never trained on)."""
    h = int(hashlib.sha256(f"{_HOLDOUT_SALT}:{correction_id}".encode()).hexdigest()[:12], 16)
    return h / float(16**12) < fraction


def split_corrections(corrections: Sequence[Any], fraction: float) -> tuple[list[Any], list[Any]]:
    """(train share, held-back share) of ``corrections`` (anything with an ``id``)."""
    train, back = [], []
    for c in corrections:
        (back if held_back(c.id, fraction) else train).append(c)
    return train, back


def check_enough(n: int, n_train: int, n_back: int, cfg: LearnConfig) -> None:
    """Stop (with what to do) when there are too few corrections to train on or to gate with."""
    where = f"post corrections ({{\"id\": \"<news id>\", \"label\": \"<label>\"}}) to {cfg.corrections}"
    if n < cfg.min_corrections:
        raise LearnStop(f"only {n} usable correction(s), fewer than min_corrections={cfg.min_corrections}: {where} "
                        "and run finsent learn again (or lower min_corrections)")
    if n_train == 0 or n_back == 0:
        raise LearnStop(f"the {n} corrections give {n_train} to train on and {n_back} to hold back for the gate "
                        f"(held_back_fraction={cfg.held_back_fraction}): both need at least one; {where}, or "
                        "change held_back_fraction")


def file_sha256(path: str | Path) -> str:
    from classifier.modeldir import file_sha256 as sha

    return sha(path)


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> str:
    """Write rows as JSON lines (atomically); returns the file's sha256."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return file_sha256(path)


def read_corrections(path: str | Path) -> list[Any]:
    """The corrections of a ``corrections.jsonl`` snapshot."""
    from stream.corrections import LabelledCorrection

    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [LabelledCorrection.from_json(json.loads(ln)) for ln in lines if ln.strip()]


# ================================================================================================ data files
def split_files(cfg: LearnConfig, kind: str) -> list[str]:
    """``test_files`` / ``dev_files`` / ``rehearsal_files``, or every ``<split_dir>/*/<kind>.txt``."""
    from classifier.splits import ensure_default_split
    from training.config import expand_path

    given = getattr(cfg, {"test": "test_files", "dev": "dev_files", "train": "rehearsal_files"}[kind])
    setting = {"test": "test_files", "dev": "dev_files", "train": "rehearsal_files"}[kind]
    if given is not None:
        files = [str(expand_path(p)) for p in given]
    else:
        split = Path(expand_path(cfg.split_dir))
        ensure_default_split([split / "finfe" / f"{kind}.txt"])
        files = [str(p) for p in sorted(split.glob(f"*/{kind}.txt"))]
        if not files:
            raise DataError(f"{setting}: no {split}/*/{kind}.txt found: write the split with `finsent split "
                            f"out_dir={cfg.split_dir}`, or set {setting}=[...]")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise DataError(f"{setting}: {missing[0]} not found; fix the path or write the split with `finsent split`")
    return files


# ================================================================================================ training
def finetune_config(cfg: LearnConfig, live: LiveModel, train_file: Path, run_dir: Path, *,
                    dev_files: Sequence[str], rehearsal_files: Sequence[str], ewc_fisher: str | None = None) -> Any:
    """The FinetuneConfig that continues ``live`` on the train share of the corrections."""
    from classifier.modeldir import CALIBRATION_FILE, COMPANION_DIR
    from training.config import FinetuneConfig

    trunc = live.meta.truncation
    d = Path(live.model_dir)
    # post-processed like the live model (temperature, companion blend) unless finetune.* says otherwise
    values: dict[str, Any] = {"dropout": live.meta.dropout, "storage_path": str(run_dir / "ray"),
                              "calibrate": (d / CALIBRATION_FILE).is_file(), "companion": (d / COMPANION_DIR).is_dir(),
                              **cfg.finetune}
    values.update(
        init_model=live.model_dir, train_files=[str(train_file)], extra_train_files=[], dev_file=list(dev_files),
        rehearsal_files=list(rehearsal_files) if cfg.rehearsal_fraction > 0 else [],
        rehearsal_fraction=cfg.rehearsal_fraction,
        l2sp=cfg.l2sp if cfg.forgetting == "l2sp" else 0.0,
        ewc=cfg.ewc if cfg.forgetting == "ewc" else 0.0, ewc_fisher=ewc_fisher if cfg.forgetting == "ewc" else None,
        save_fisher=cfg.forgetting == "ewc",  # the next run's EWC anchors at this model
        labels=list(live.labels), output_dir=str(run_dir / MODEL_SUBDIR), overwrite=False, resume=False,
        model_name=live.meta.name, max_len=trunc.max_len, head_tokens=trunc.head_tokens,
        truncation=trunc.strategy, pooling=trunc.pooling,
    )
    return FinetuneConfig(**values)


def fisher_for(cfg: LearnConfig, live: LiveModel, run_dir: Path, rehearsal_files: Sequence[str],
               dev_files: Sequence[str]) -> str:
    """EWC's Fisher of the live model: ``ewc_fisher``, the live model's ``fisher.safetensors``, or estimated on
    the original training data (``rehearsal_files``) into the run directory."""
    from training.config import FinetuneConfig, expand_path
    from training.finetune import write_fisher

    if cfg.ewc_fisher:
        path = expand_path(cfg.ewc_fisher)
        if not path.is_file():
            raise DataError(f"ewc_fisher: {path} not found; leave it unset to estimate the Fisher on rehearsal_files")
        return str(path)
    own = Path(live.model_dir) / "fisher.safetensors"
    if own.is_file():
        return str(own)
    log.info("estimating the live model's Fisher on %s (EWC)", rehearsal_files)
    fcfg = FinetuneConfig(**{**cfg.finetune, "train_files": list(rehearsal_files), "dev_file": list(dev_files),
                             "labels": list(live.labels), "init_model": live.model_dir,
                             "max_len": live.meta.truncation.max_len, "head_tokens": live.meta.truncation.head_tokens})
    return str(write_fisher(fcfg, Path(live.model_dir), run_dir / "fisher.safetensors"))


# ================================================================================================ gate
def evaluate_model(model_dir: str | Path, test_files: Sequence[str], held: Sequence[Any], labels: Sequence[str],
                   batch_size: int = 64) -> dict[str, Any]:
    """Macro-F1 and accuracy of a model directory on each test file and on the held-back corrections."""
    from classifier.data import read_examples
    from classifier.metrics import compute_metrics
    from classifier.predict import Predictor
    from training.finetune import source_name

    predictor = Predictor.from_dir(model_dir, device="auto", batch_size=batch_size)

    def scores(texts: list[str], gold: list[str]) -> dict[str, Any]:
        names = predictor.labels
        preds = predictor.predict_labels(texts)
        m = compute_metrics(gold, preds, names)
        return {"n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    out: dict[str, Any] = {"model_dir": str(model_dir), "model_version": predictor.model_version, "test": {}}
    for f in test_files:
        data = read_examples(f, labels, on_error="skip")
        out["test"][source_name(f)] = scores(data.texts, data.labels)
    out["corrections"] = scores([c.text for c in held], [c.label for c in held])
    return out


def decide(before: dict[str, Any], after: dict[str, Any], cfg: LearnConfig) -> dict[str, Any]:
    """The gate's checks on two :func:`evaluate_model` results: passed, and a reason for each failed check."""
    checks: list[dict[str, Any]] = []
    for name, b in before["test"].items():
        a = after["test"][name]
        drop = b["macro_f1"] - a["macro_f1"]
        checks.append({"check": f"test {name} macro-F1", "before": b["macro_f1"], "after": a["macro_f1"],
                       "change": -drop, "rule": f"drop < {cfg.max_test_drop:g}", "passed": drop < cfg.max_test_drop})
    metric = cfg.correction_metric
    b, a = before["corrections"][metric], after["corrections"][metric]
    checks.append({"check": f"held-back corrections {metric}", "before": b, "after": a, "change": a - b,
                   "rule": f"gain > {cfg.min_correction_gain:g}", "passed": a - b > cfg.min_correction_gain})
    reasons = []
    for c in checks:
        if not c["passed"]:
            reasons.append(f"{c['check']} went {c['before']:.4f} -> {c['after']:.4f} ({100 * c['change']:+.1f} "
                           f"points), which fails the rule {c['rule']}")
    return {"passed": not reasons, "checks": checks, "reasons": reasons}


def gate(cfg: LearnConfig, live: LiveModel, new_dir: str | Path, test_files: Sequence[str], held: Sequence[Any],
         batch_size: int = 64) -> dict[str, Any]:
    """Score the live and the new model, decide, and return the gate report (not yet written)."""
    t0 = time.perf_counter()
    before = evaluate_model(live.model_dir, test_files, held, live.labels, batch_size)
    after = evaluate_model(new_dir, test_files, held, live.labels, batch_size)
    decision = decide(before, after, cfg)
    return {"passed": decision["passed"], "reasons": decision["reasons"], "checks": decision["checks"],
            "rules": {"max_test_drop": cfg.max_test_drop, "correction_metric": cfg.correction_metric,
                      "min_correction_gain": cfg.min_correction_gain},
            "live": before, "new": after, "held_back_corrections": len(held), "test_files": list(test_files),
            "eval_time_s": time.perf_counter() - t0}


# ================================================================================================ the run
@dataclass
class LearnResult:
    run_dir: Path
    model_dir: Path
    gate: dict[str, Any]
    swapped: bool = False
    swap: dict[str, Any] | None = None
    training_report: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.gate["passed"])

    def summary(self) -> str:
        lines = [f"run directory: {self.run_dir}", f"new model: {self.model_dir} ({self.gate['new']['model_version']})"]
        for c in self.gate["checks"]:
            lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['check']}: {c['before']:.4f} -> {c['after']:.4f} "
                         f"({100 * c['change']:+.1f} points; rule {c['rule']})")
        if not self.passed:
            lines.append("gate REFUSED the new model; the live model stays: " + "; ".join(self.gate["reasons"]))
        elif self.swapped:
            lines.append(f"gate passed; swapped: {self.swap['model_version']} now serves")
        else:
            lines.append(f"gate passed; not swapped ({self.gate.get('swap_skipped', '')})")
        return "\n".join(lines)


def new_run_dir(cfg: LearnConfig) -> Path:
    from training.config import expand_path

    name = cfg.run_name or f"learn-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    run_dir = Path(expand_path(cfg.work_dir)) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run_name: {run_dir} already exists; pick another run_name (or leave it unset)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    from classifier.modeldir import write_json

    write_json(run_dir, MANIFEST_FILE, manifest)


def run_learn(cfg: LearnConfig) -> LearnResult:
    """The whole loop (module docstring): live model → corrections from Kafka → train → gate → swap."""
    from classifier.config import to_dict
    from stream.corrections import collect_corrections

    live = resolve_live(cfg)
    run_dir = new_run_dir(cfg)
    log.info("learn run %s: live model %s (%s)%s", run_dir.name, live.model_version, live.model_dir,
             f", served by {cfg.serve_app}" if cfg.serve_app else "")
    snapshot = collect_corrections(
        cfg.kafka_common(), corrections_topic=cfg.corrections, dlq_topic=cfg.corrections_dlq,
        text_topics=cfg.texts_from, labels=live.labels, group_id=cfg.group_id, timeout_s=cfg.read_timeout_s)
    manifest = {"config": to_dict(cfg), "live": live.to_json(), "corrections": snapshot.summary(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return learn_from_corrections(cfg, live, snapshot.triage.corrections, run_dir, manifest)


def learn_from_corrections(cfg: LearnConfig, live: LiveModel, corrections: Sequence[Any], run_dir: Path,
                           manifest: dict[str, Any] | None = None) -> LearnResult:
    """Steps 2-5 on corrections already joined with their texts (:class:`stream.corrections.LabelledCorrection`
    or anything with ``id``, ``label``, ``text`` and ``to_json()``): snapshot, train, gate, swap."""
    manifest = dict(manifest or {})
    manifest.setdefault("live", live.to_json())
    train, held = split_corrections(corrections, cfg.held_back_fraction)
    manifest["split"] = {"corrections": len(corrections), "train": len(train), "held_back": len(held),
                         "held_back_fraction": cfg.held_back_fraction}
    files = {CORRECTIONS_FILE: write_jsonl(run_dir / CORRECTIONS_FILE, [c.to_json() for c in corrections])}
    try:
        check_enough(len(corrections), len(train), len(held), cfg)
    except LearnStop as e:
        write_manifest(run_dir, {**manifest, "files": files, "status": "stopped", "reason": str(e)})
        raise
    files[TRAIN_FILE] = write_jsonl(run_dir / TRAIN_FILE, [{"text": c.text, "label": c.label, "id": c.id} for c in train])
    files[HELD_BACK_FILE] = write_jsonl(run_dir / HELD_BACK_FILE,
                                        [{"text": c.text, "label": c.label, "id": c.id} for c in held])
    test_files = split_files(cfg, "test")
    manifest.update(files=files, test_files=test_files)

    training_report = None
    t0 = time.perf_counter()
    if cfg.candidate_model:
        from classifier.modeldir import check_model_dir
        from training.config import expand_path

        new_dir = check_model_dir(expand_path(cfg.candidate_model))
        manifest["candidate_model"] = str(new_dir)
    else:
        dev_files, rehearsal = split_files(cfg, "dev"), split_files(cfg, "train")
        fisher = fisher_for(cfg, live, run_dir, rehearsal, dev_files) if cfg.forgetting == "ewc" else None
        fcfg = finetune_config(cfg, live, run_dir / TRAIN_FILE, run_dir, dev_files=dev_files,
                               rehearsal_files=rehearsal, ewc_fisher=fisher)
        manifest.update(dev_files=dev_files, rehearsal_files=fcfg.rehearsal_files, ewc_fisher=fisher)
        write_manifest(run_dir, {**manifest, "status": "training"})
        from training.finetune import run_finetune

        result = run_finetune(fcfg)
        new_dir, training_report = result.model_dir, result.report
    manifest["train_time_s"] = time.perf_counter() - t0

    write_manifest(run_dir, {**manifest, "status": "gating"})
    batch = int(cfg.finetune.get("eval_batch_size", 64))
    report = gate(cfg, live, new_dir, test_files, held, batch)
    from classifier.modeldir import content_version

    new_content = content_version(new_dir)
    report.update(run_dir=str(run_dir), model_dir=str(new_dir), live_model=live.to_json(), swapped=False)
    out = LearnResult(run_dir=run_dir, model_dir=Path(new_dir), gate=report, training_report=training_report,
                      manifest=manifest)
    if not report["passed"]:
        log.warning("gate refused %s: %s; %s keeps serving", report["new"]["model_version"],
                    "; ".join(report["reasons"]), live.model_version)
    elif not cfg.swap or not live.serve_app:
        report["swap_skipped"] = ("swap=false" if not cfg.swap else
                                  f"no serve_app: deploy {new_dir} yourself, e.g. finsent serve model_dir={new_dir}")
    else:
        try:
            check_unchanged(live, run_dir, files, new_dir, new_content)
            from serving.swap import swap_model

            out.swap = swap_model(live.serve_app, str(new_dir), expect_version=report["new"]["model_version"],
                                  timeout_s=cfg.swap_timeout_s)
            out.swapped = report["swapped"] = True
            report["swap"] = out.swap
        except FinsentError as e:
            report["swap_error"] = str(e)
            _finish(run_dir, report, manifest, "stopped before the swap")
            raise LearnStop(f"{e}; the new model is {new_dir} (gate report: {run_dir / GATE_REPORT_FILE})") from None
    _finish(run_dir, report, manifest, "swapped" if out.swapped else "passed" if out.passed else "refused")
    return out


def _finish(run_dir: Path, report: dict[str, Any], manifest: dict[str, Any], status: str) -> None:
    from classifier.modeldir import write_json

    report["decided_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(run_dir, GATE_REPORT_FILE, report)
    write_manifest(run_dir, {**manifest, "status": status, "gate": {"passed": report["passed"],
                                                                    "reasons": report["reasons"]},
                             "finished": report["decided_at"]})


def check_unchanged(live: LiveModel, run_dir: Path, files: dict[str, str], new_dir: str | Path,
                    new_content: str) -> None:
    """Stop when an input changed while the run learned: the live model's content, the model the app serves,
    the corrections snapshot and its shares, or the gated new model."""
    from classifier.modeldir import content_version

    changed = []
    try:
        if content_version(live.model_dir) != live.content:
            changed.append(f"the live model directory {live.model_dir} holds other weights or calibration")
    except OSError:
        changed.append(f"the live model directory {live.model_dir} is gone")
    if live.serve_app:
        from serving.swap import served_model

        now = served_model(live.serve_app)
        if Path(now["model_dir"]).absolute() != Path(live.model_dir) or now["model_version"] != live.served_version:
            changed.append(f"Serve app {live.serve_app} now serves {now['model_version']} from {now['model_dir']} "
                           f"(the run started from {live.served_version})")
    for name, sha in files.items():
        p = run_dir / name
        if not p.is_file() or file_sha256(p) != sha:
            changed.append(f"the corrections snapshot {p} was modified")
    if content_version(new_dir) != new_content:
        changed.append(f"the new model {new_dir} was modified after the gate scored it")
    if changed:
        raise LearnStop("inputs changed while learning, so nothing was swapped: " + "; ".join(changed)
                        + ". Run finsent learn again to learn from the current state")


# ================================================================================================ command
def main(argv: list[str] | None = None) -> int:
    """``finsent learn [--config FILE] [key=value ...]``."""
    import sys

    from classifier.config import parse_command, run_command

    def run(args: list[str]) -> int:
        from classifier.console import quiet_terminal

        cfg = parse_command(LearnConfig, args, prog="finsent learn")
        log_path = Path(cfg.log_file or Path(cfg.work_dir) / "learn.log").expanduser().absolute()
        print(f"full log (Ray, Ray Train, Kafka client): {log_path}", file=sys.stderr)
        try:
            with quiet_terminal(log_path, level=getattr(logging, cfg.log_level)) as out:
                logging.getLogger("kafka").setLevel(logging.WARNING)
                result = run_learn(cfg)
                out.write(result.summary() + "\n")
        except Exception:
            print(f"see {log_path} for the whole log", file=sys.stderr)
            raise
        return 0 if result.passed else 1

    return run_command("finsent learn", run, sys.argv[1:] if argv is None else argv)
