"""``finsent demo``: the whole pipeline on one machine, scored on held-out news, at a rate this host keeps.

1. picks the records to replay: a seeded sample of the **test** split that ``finsent split`` writes
   (``runs/split/<source>/test.txt``, written on first use). Nothing trains or selects on test; the texts are
   also checked against the training and dev files the served model's report names;
2. starts the embedded Kafka broker (or uses ``bootstrap_servers=``) and a local Ray (or ``RAY_ADDRESS``);
3. uses ``model=DIR``, else the cached demo model, else fine-tunes one on Ray Train with the short recipe
   ``training/configs/demo.yaml`` (the split's train and dev files), printing an estimate from a measured
   training step first;
4. picks the fastest CPU serving variant (``backend=auto quantize=auto``: measured on this host, cached in the
   model directory) and deploys it on Ray Serve;
5. runs the stream consumer group (classifying through the Serve handle), measures what this host sustains end
   to end with a burst through the same path (input topic -> stream -> Serve -> sentiment topic) and replays
   the held-out records at ``headroom`` x that rate (``rate=`` overrides it);
6. shows a live view (sent, labelled, consumer lag, p50/p99 latency), then a summary computed from what came
   out of the sentiment topic: accuracy and macro-F1 against the held-back labels, DLQ, review and drift alerts;
7. shuts everything down (Ctrl-C at any point too).

Ray, Serve, Kafka-client and library messages go to a log file whose path is printed first; the terminal
shows one line per step, the live view and the summary. A failure prints its cause and points at the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import Field, model_validator

from classifier.config import Config, field_flag_aliases, parse_command
from classifier.errors import ConfigError, DataError, FinsentError

log = logging.getLogger(__name__)

#: what a short fine-tune costs besides its training steps and dev passes on an idle 2-core machine: Ray Train
#: start-up, the worker's model build and data encoding, the checkpoint, export, calibration fit and companion
#: (measured on the project's 2-core hosts: 25-35 s)
FINETUNE_OVERHEAD_S = 30.0
#: Python loggers whose records are internals: they go to the log file only (like everything else)
INTERNAL_LOGGERS: tuple[str, ...] = ("ray", "ray.serve", "ray.train", "ray.data", "kafka", "filelock", "urllib3",
                                     "jieba", "transformers", "onnxruntime", "torch")


class DemoConfig(Config):
    """Options of ``finsent demo`` (``finsent demo records=200 rate=20``; old ``--records 200`` flags still work)."""

    model: str | None = Field(
        None,
        description="finsent model directory to serve; default: the cached demo model, else fine-tune one",
    )
    base_model: str | None = Field(
        None,
        description="base checkpoint for the demo fine-tune (default $FINSENT_BASE_MODEL or "
        "../shared/models/me5-small-zh-fin)",
    )
    tiny: bool = Field(
        False,
        description="fine-tune a tiny random BERT instead of the base model (seconds; for tests and dry "
        "runs; its labels are near chance)",
    )
    cache_dir: str = Field(
        os.environ.get("FINSENT_CACHE", str(Path.home() / ".cache" / "finsent")),
        description="where the fine-tuned demo model is cached between runs",
    )
    retrain: bool = Field(False, description="fine-tune a new demo model even if one is cached")
    split_dir: str = Field(
        "runs/split",
        description="the train/dev/test split of `finsent split` (the default one is written on first use); "
        "the demo model trains on its train files and selects on dev, the replay takes only test",
    )
    sources: list[str] = Field(
        ["cfsc"],
        description="split sources whose held-out test records are replayed: cfsc (news sentences), finfe "
        "(forum posts), or both, e.g. sources=[cfsc,finfe]",
    )
    records: int = Field(
        300,
        description="how many held-out test records to replay (a seeded random sample; all if fewer)",
    )
    rate: float | None = Field(
        None,
        description="records per second sent to the input topic; null = measure what this host sustains end "
        "to end first and replay at headroom x that",
    )
    headroom: float = Field(
        0.7,
        description="fraction of the measured end-to-end rate to replay at (below 1 so latency stays low)",
    )
    probe_records: int = Field(
        128,
        description="records of the timed burst that measures the end-to-end rate (after a warm-up of 16 "
        "records); neither is scored",
    )
    seed: int = Field(0, description="seed of the sample")
    bootstrap_servers: str | None = Field(
        None,
        description="Kafka bootstrap servers; default: start the embedded broker on loopback",
    )
    partitions: int = Field(
        2,
        description="partitions of the demo topics (= the most consumers that can share the work)",
    )
    topic_prefix: str = Field(
        "demo",
        description="demo topics are <prefix>.news, <prefix>.news.sentiment (+ .review, .alerts) and "
        "<prefix>.news.dlq",
    )
    min_replicas: int = Field(1, description="Serve autoscaling: fewest replicas")
    max_replicas: int = Field(
        2, description="Serve autoscaling: most replicas (the demo starts with this many, so the rate it "
        "measures is the one it replays against)")
    replica_cpus: float = Field(
        1.0, description="CPUs reserved per Serve replica (also its torch/ONNX Runtime threads, at least 1)")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="what runs the model in the Serve replicas on CPU: auto = measure torch and ONNX Runtime on "
        "this host and keep the fastest within tolerance (cached in the model directory), torch, or onnx",
    )
    quantize: Literal["auto", "none", "int8"] = Field(
        "auto",
        description="serving precision on CPU: auto = measured with backend (int8 only where it is faster and "
        "within tolerance of fp32), none = fp32, int8 = dynamic int8 (see docs/demo.md)",
    )
    timeout_s: float = Field(
        120.0,
        description="give up waiting for labelled records this many seconds after the last one was sent",
    )
    quiet: bool = Field(False, description="no live view (steps and summary only)")
    out: str = Field(
        "runs/demo",
        description="where summary.json, records.jsonl (one line per replayed record: source, line, text, "
        "true/predicted label, latency) and demo.log are written",
    )
    log_file: str | None = Field(
        None,
        description="file that receives Ray, Serve, Kafka and library messages; default <out>/demo.log",
    )

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        if self.records < 1:
            raise ConfigError(f"records: must be >= 1, got {self.records}")
        if self.rate is not None and self.rate <= 0:
            raise ConfigError(f"rate: must be > 0 records/s (or null to measure it), got {self.rate}")
        if not 0 < self.headroom <= 1:
            raise ConfigError(f"headroom: must be in (0, 1], got {self.headroom}; e.g. headroom=0.7")
        if self.probe_records < 8:
            raise ConfigError(f"probe_records: must be >= 8, got {self.probe_records}")
        if not self.sources:
            raise ConfigError("sources: name at least one split source, e.g. sources=[cfsc]")
        if self.partitions < 1:
            raise ConfigError(f"partitions: must be >= 1, got {self.partitions}")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigError(f"min_replicas/max_replicas: need 0 <= min <= max and max >= 1, got "
                              f"{self.min_replicas}/{self.max_replicas}")
        if self.replica_cpus <= 0:
            raise ConfigError(f"replica_cpus: must be > 0, got {self.replica_cpus}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.model is not None and not (Path(self.model) / "config.json").is_file():
            raise ConfigError(f"model: {self.model} is not a model directory (no config.json); give the output_dir "
                              "of `finsent finetune`, or leave model unset to use/build the demo model")
        return self

    @property
    def log_path(self) -> Path:
        return Path(self.log_file) if self.log_file else Path(self.out) / "demo.log"


#: the old per-field flags (``--records 500``, ``--tiny``), kept for one release
DEMO_ALIASES = field_flag_aliases(DemoConfig)
CONFIG = DemoConfig


# ============================================================================================ the terminal
class Console:
    """What the user sees: step lines, the live view (in place on a terminal) and the summary, written to the
    process's original stdout/stderr while everything else goes to the log file."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out = out
        self.err = err
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self._status = False

    def say(self, text: str = "", end: str = "\n") -> None:
        self._clear_status()
        self.out.write(text + end)
        self.out.flush()

    def status(self, text: str) -> None:
        """The live-view line: rewritten in place on a terminal (cut to its width), one line each call
        elsewhere."""
        if self.tty:
            import shutil

            self.out.write("\r\x1b[K" + _fit(text, shutil.get_terminal_size().columns - 1))
            self._status = True
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def error(self, text: str) -> None:
        self._clear_status()
        self.out.flush()
        self.err.write(text + "\n")
        self.err.flush()

    def _clear_status(self) -> None:
        if self._status:
            self.out.write("\n")
            self._status = False


def _fit(text: str, columns: int) -> str:
    """``text`` cut to ``columns`` terminal cells (East Asian wide characters take two)."""
    import unicodedata

    used = 0
    for i, ch in enumerate(text):
        used += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
        if used > columns:
            return text[:i]
    return text


@contextlib.contextmanager
def quiet_terminal(log_path: Path) -> Iterator[Console]:
    """Everything (Python prints, library warnings, Ray's and the C++ libraries' output, every logger) into
    ``log_path`` (:func:`classifier.console.quiet_terminal`, with no logger shown: the demo speaks through its
    :class:`Console` alone); yields a :class:`Console` on the original stdout/stderr."""
    from classifier.console import quiet_terminal as to_log_file

    log_path.unlink(missing_ok=True)  # one run, one log
    sys.stderr.flush()
    err = os.fdopen(os.dup(2), "w", encoding="utf-8", buffering=1)
    try:
        with to_log_file(log_path, packages=()) as out:
            for name in INTERNAL_LOGGERS:
                logging.getLogger(name).setLevel(logging.INFO if name.startswith("ray") else logging.WARNING)
            yield Console(out, err)
    finally:
        err.close()


# ============================================================================================ held-out records
@dataclass(frozen=True)
class Record:
    """One held-out record to replay: its id (``<source>-test-<line>``), file, line, text and held-back label."""

    id: str
    source: str
    line: int
    text: str
    label: str


@dataclass
class HeldOut:
    records: list[Record]
    files: dict[str, Path]
    available: int
    #: how the records were checked against the served model's training and dev data (a sentence)
    verified: str = ""
    dropped: int = 0


def _split_dir(cfg: DemoConfig) -> Path:
    from training.config import expand_path

    return expand_path(cfg.split_dir)


def held_out_files(cfg: DemoConfig) -> dict[str, Path]:
    """``{source: <split_dir>/<source>/test.txt}``; writes the default split when it is missing."""
    from classifier.splits import MANIFEST, ensure_default_split

    split = _split_dir(cfg)
    files = {s: split / s / "test.txt" for s in cfg.sources}
    ensure_default_split(list(files.values()))
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        have = sorted(p.name for p in split.iterdir() if p.is_dir()) if split.is_dir() else []
        hint = (f"that split has the sources {have}: pick sources from them" if (split / MANIFEST).is_file()
                else f"write one with `finsent split out_dir={cfg.split_dir}`")
        raise ConfigError(f"sources/split_dir: no held-out test file {', '.join(missing)}; {hint}")
    return files


def sample_held_out(cfg: DemoConfig) -> HeldOut:
    """A seeded sample of ``cfg.records`` test records of ``cfg.sources`` (all of them if fewer)."""
    from classifier.data import read_examples

    files = held_out_files(cfg)
    pool: list[Record] = []
    for source, path in files.items():
        for e in read_examples(path, on_error="raise").examples:
            pool.append(Record(f"{source}-test-{e.line}", source, e.line, e.text, e.label))
    if not pool:
        raise DataError(f"the test files {[str(p) for p in files.values()]} hold no example")
    picked = random.Random(cfg.seed).sample(pool, min(cfg.records, len(pool)))
    return HeldOut(picked, files, len(pool))


def check_held_out(model_dir: Path, held: HeldOut, split_dir: Path) -> None:
    """Drop any record whose text is in the served model's training or dev files and say how this was checked
    (``held.verified``): by reading those files (named in its ``training_report.json``), else by their sha256
    against the split's train/dev files, else not at all (said so)."""
    from classifier.data import read_examples
    from classifier.modeldir import REPORT_FILE, read_json
    from classifier.splits import MANIFEST

    report = read_json(model_dir, REPORT_FILE) or {}
    dev = report.get("dev_file")
    files = [*report.get("train_files", []), *([dev] if isinstance(dev, str) else (dev or [])),
             *report.get("config", {}).get("rehearsal_files", [])]
    if not files:
        held.verified = (f"NOT verified: {model_dir} has no {REPORT_FILE} naming its training data, so the "
                         "scores may include texts it trained on")
        return
    shas = (report.get("data") or {}).get("sha256", {})
    seen: set[str] = set()
    unread: list[str] = []
    for f in files:
        if Path(f).is_file():
            seen.update(e.text for e in read_examples(f, require_labels=False).examples)
        else:
            unread.append(f)
    if unread:
        manifest = split_dir / MANIFEST
        split_shas = set()
        if manifest.is_file():
            outputs = json.loads(manifest.read_text(encoding="utf-8")).get("outputs", {})
            split_shas = {o["sha256"] for rel, o in outputs.items() if rel.rsplit("/", 1)[-1] in ("train.txt",
                                                                                                  "dev.txt")}
        if not all(shas.get(f) in split_shas for f in unread):
            held.verified = (f"NOT verified: the model's training files {unread} are not here and are not the "
                             f"split's train/dev files, so the scores may include texts it trained on")
            return
    keep = [r for r in held.records if r.text not in seen]
    held.dropped = len(held.records) - len(keep)
    held.records = keep
    how = "checked against the files named in its training report" + (
        " (and, for files not here, their sha256 against the split's train/dev)" if unread else "")
    held.verified = (f"the model never trained or selected on them ({how}"
                     + (f"; {held.dropped} sampled records that also occur there were left out)" if held.dropped
                        else ")"))
    if not held.records:
        raise DataError("every sampled test record also occurs in the model's training or dev data; nothing "
                        "held out is left to score")


# ============================================================================================ the model
@dataclass
class FinetuneEstimate:
    seconds: float
    steps: int
    step_s: float
    eval_s: float
    examples: int


def estimate_finetune(ft: Any) -> FinetuneEstimate:
    """Wall time of fine-tuning ``ft`` (a resolved :class:`training.config.FinetuneConfig`) on this machine, from
    one measured training step of the real encoder at the data's mean length (with ``ft``'s frozen layers, batch
    size and worker threads), one measured dev forward, and :data:`FINETUNE_OVERHEAD_S`."""
    import torch

    from classifier.data import read_examples
    from classifier.modeling import FinsentClassifier, load_encoder
    from classifier.tokenization import FinsentTokenizer, TruncationConfig
    from training.forgetting import freeze_lowest_layers

    train = read_examples([*ft.train_files, *ft.extra_train_files], ft.labels).examples
    dev = read_examples(ft.dev_files, ft.labels).examples
    n_train = min(len(train), ft.max_train_examples or len(train))
    tok = FinsentTokenizer.from_base(ft.base_model, truncation=TruncationConfig(max_len=ft.max_len))
    rng = random.Random(ft.seed)

    def mean_len(examples: Sequence[Any]) -> int:
        texts = [e.text for e in rng.sample(list(examples), min(256, len(examples)))]
        lengths = [len(tok.truncate(ids)) for ids in tok.encode(texts)] or [8]
        return max(4, round(sum(lengths) / len(lengths)))

    len_train, len_dev = mean_len(train), mean_len(dev)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(ft.cpus_per_worker, os.cpu_count() or 1)))
    try:
        model = FinsentClassifier(load_encoder(ft.base_model), len(ft.labels), ft.dropout)
        if ft.freeze_layers:
            freeze_lowest_layers(model, ft.freeze_layers)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ft.lr)
        vocab = int(model.config.vocab_size)
        x = torch.randint(5, vocab, (ft.per_worker_batch, len_train))
        y = torch.randint(0, len(ft.labels), (ft.per_worker_batch,))
        for _ in range(2):  # the first one warms up (allocations), the second is timed
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(input_ids=x, attention_mask=torch.ones_like(x)), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            step_s = time.perf_counter() - t0
        model.eval()
        xd = torch.randint(5, vocab, (ft.eval_batch_size, len_dev))
        with torch.inference_mode():
            model(input_ids=xd, attention_mask=torch.ones_like(xd))
            t0 = time.perf_counter()
            model(input_ids=xd, attention_mask=torch.ones_like(xd))
            fwd_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    steps = math.ceil(n_train / ft.batch_size) * ft.epochs
    dev_passes = ft.epochs + (1 if ft.calibrate or ft.companion else 0)
    eval_s = dev_passes * math.ceil(len(dev) / ft.eval_batch_size) * fwd_s
    return FinetuneEstimate(FINETUNE_OVERHEAD_S + steps * step_s + eval_s, steps, step_s, eval_s, n_train)


def _short(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter lines on the terminal)."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    return f"about {seconds / 60:.1f} min".replace(".0 min", " min")


def demo_model(cfg: DemoConfig, console: Console) -> Path:
    if cfg.model:
        console.say(f"[demo] model: {cfg.model} (given)")
        return Path(cfg.model)
    from classifier.paths import default_base_model

    if cfg.tiny:
        key, base = "tiny", None
    else:
        base = default_base_model(cfg.base_model)
        key = "base-" + base.name
    cached = Path(cfg.cache_dir).expanduser() / f"demo-model-{key}"
    if (cached / "model.safetensors").is_file() and not cfg.retrain:
        console.say(f"[demo] model: the cached demo model {cached} (retrain=true builds a new one)")
        return cached
    return finetune_demo_model(cfg, base, cached, console)


def demo_finetune_config(cfg: DemoConfig, base: Path | None, work: Path) -> Any:
    """The demo recipe (training/configs/demo.yaml) with this run's paths; ``tiny`` shrinks it further."""
    import training
    from classifier.config import load_config
    from training.config import FinetuneConfig, resolve_paths

    split = _split_dir(cfg)
    overrides = [f"output_dir={work / 'model'}", f"storage_path={(work / 'ray').resolve()}", "overwrite=true"]
    ft = load_config(FinetuneConfig, Path(training.__file__).parent / "configs" / "demo.yaml", overrides)
    files = {"train_files": ft.train_files, "dev_file": ft.dev_files}
    if split != _split_dir(DemoConfig()):  # the recipe names runs/split: point it at split_dir
        files = {k: [str(split / Path(f).parent.name / Path(f).name) for f in v] for k, v in files.items()}
        overrides += [f"train_files=[{','.join(files['train_files'])}]", f"dev_file=[{','.join(files['dev_file'])}]"]
    if cfg.tiny:
        from classifier.testing import make_tiny_base_dir

        tiny = make_tiny_base_dir(work / "tiny-base")
        overrides += [f"base_model={tiny}", "max_train_examples=400", "max_len=64", "lr=1e-3", "freeze_layers=0",
                      "model_name=demo-tiny"]
    else:
        overrides += [f"base_model={base}"]
    ft = load_config(FinetuneConfig, Path(training.__file__).parent / "configs" / "demo.yaml", overrides)
    return resolve_paths(ft)


def finetune_demo_model(cfg: DemoConfig, base: Path | None, target: Path, console: Console) -> Path:
    import shutil

    from classifier.splits import ensure_default_split
    from training.finetune import run_finetune

    work = Path(cfg.out) / "train"
    ft = demo_finetune_config(cfg, base, work)
    ensure_default_split([*ft.train_files, *ft.dev_files])
    n = f"{ft.max_train_examples:,}" if ft.max_train_examples else "all"
    console.say(f"[demo] no cached demo model: fine-tuning one on Ray Train ({n} examples, {ft.epochs} epoch, "
                f"max_len {ft.max_len}; training/configs/demo.yaml) ...", end="")
    est = estimate_finetune(ft)
    console.say(f" {_minutes(est.seconds)} on this machine ({est.steps} steps x {est.step_s:.2f} s measured, "
                f"dev {est.eval_s:.0f} s, start-up/export ~{FINETUNE_OVERHEAD_S:.0f} s)")
    started = time.monotonic()
    result = run_finetune(ft)
    took = time.monotonic() - started
    console.say(f"[demo] fine-tuned in {took:.0f} s (estimate {est.seconds:.0f} s) -> cached in {target}")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(result.model_dir, target)
    shutil.rmtree(work, ignore_errors=True)  # the Ray run's checkpoints and the exported copy (~350 MB)
    return target


def choose_serving(cfg: DemoConfig, model_dir: Path, threads: int) -> tuple[str, Any]:
    """The serving variant (``onnx-int8`` ...) for replicas with ``threads`` threads: loads the model here once
    with ``backend``/``quantize`` so ``auto`` measures on this host (exporting ONNX on first use) and caches its
    decision in the model directory. Returns (variant, AutoDecision or None)."""
    import torch

    from classifier.predict import Predictor

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        predictor = Predictor.from_dir(model_dir, device="cpu", backend=cfg.backend, quantize=cfg.quantize)
    finally:
        torch.set_num_threads(old)
    return predictor.backend.name, predictor.auto_decision


def deploy(cfg: DemoConfig, model_dir: Path, variant: str | None) -> tuple[str, int]:
    from ray import serve

    from serving.app import build_app
    from serving.config import make_config
    from stream.broker import free_port

    backend, quantize = ("torch", "none") if variant is None else (
        variant.split("-")[0], "int8" if variant.endswith("int8") else "none")
    port = free_port()
    scfg = make_config(model_dir=str(model_dir), min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas,
                       initial_replicas=cfg.max_replicas, num_cpus=cfg.replica_cpus, port=port, host="127.0.0.1",
                       app_name=f"{cfg.topic_prefix}-finsent", backend=backend, quantize=quantize)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(scfg), name=scfg.app_name, route_prefix=scfg.route_prefix)
    return scfg.app_name, port


# ============================================================================================ the stream side
@dataclass
class Seen:
    """What came out of the demo's topics, by record key."""

    out: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    dlq: dict[str, tuple[float, str]] = field(default_factory=dict)
    review: set[str] = field(default_factory=set)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    last: dict[str, Any] | None = None


class Watcher(threading.Thread):
    """Reads the sentiment, DLQ, review and alert topics from their current end, recording arrival times."""

    def __init__(self, bootstrap: str, topics: dict[str, str], partitions: int) -> None:
        super().__init__(name="demo-watch", daemon=True)
        self.bootstrap = bootstrap
        self.topics = topics
        self.partitions = partitions
        self.seen = Seen()
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from stream.codec import HEADER_ERROR, header

        try:
            consumer = KafkaConsumer(bootstrap_servers=[self.bootstrap], client_id="finsent-demo-watch",
                                     enable_auto_commit=False, group_id=None, fetch_max_wait_ms=100)
        except BaseException as e:  # reported by the main thread
            self.error = e
            self.ready.set()
            return
        t = self.topics
        parts = [TopicPartition(topic, p) for topic in (t["output"], t["dlq"], t["review"])
                 for p in range(self.partitions)] + [TopicPartition(t["alerts"], 0)]
        try:
            consumer.assign(parts)
            consumer.seek_to_end(*parts)
            for tp in parts:
                consumer.position(tp)  # resolve the end now, before anything is produced
            self.ready.set()
            while not self.stop_event.is_set():
                for tp, msgs in consumer.poll(timeout_ms=200).items():
                    now = time.time()
                    with self.lock:
                        for msg in msgs:
                            key = (msg.key or b"").decode("utf-8", "replace")
                            if tp.topic == t["output"]:
                                rec = json.loads(msg.value)
                                self.seen.out.setdefault(key, (now, rec))
                                self.seen.last = rec
                            elif tp.topic == t["dlq"]:
                                self.seen.dlq.setdefault(key, (now, header(msg.headers or [], HEADER_ERROR) or "?"))
                            elif tp.topic == t["review"]:
                                self.seen.review.add(key)
                            else:
                                self.seen.alerts.append(json.loads(msg.value))
        except BaseException as e:
            self.error = e
            self.ready.set()
        finally:
            consumer.close()

    def done(self, keys: Sequence[str]) -> int:
        with self.lock:
            return sum(1 for k in keys if k in self.seen.out or k in self.seen.dlq)


def _check_reachable(servers: Sequence[str], timeout_s: float = 5.0) -> None:
    """Fail fast (instead of after the Kafka client's bootstrap timeout) when no server accepts a connection."""
    import socket

    errors = []
    for server in servers:
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
            return
        except (OSError, ValueError) as e:
            errors.append(f"{server}: {e}")
    raise ConnectionError("; ".join(errors))


def _send(producer: Any, topic: str, key: str, text: str) -> None:
    value = json.dumps({"id": key, "title": "", "content": text, "source": "finsent-demo"}, ensure_ascii=False)
    producer.send(topic, key=key.encode(), value=value.encode("utf-8"))


def _wait_for(watcher: Watcher, keys: Sequence[str], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while watcher.done(keys) < len(keys):
        if watcher.error is not None:
            raise watcher.error
        if time.monotonic() > deadline:
            raise FinsentError(f"{what}: only {watcher.done(keys)} of {len(keys)} records came out of the stream "
                               f"within {timeout_s:.0f} s; see the log for the stream's errors")
        time.sleep(0.02)


@dataclass
class Probe:
    rate: float
    records: int
    seconds: float


def warm_up(producer: Any, topic: str, texts: Sequence[str], watcher: Watcher, run_id: str, timeout_s: float,
            n: int = 16) -> None:
    """``n`` records through the whole path before anything is timed or scored: the consumer group joins, the
    Serve replicas run their first batches. Keys are ``<run>:warm-*`` (not scored)."""
    keys = [f"{run_id}:warm-{i}" for i in range(n)]
    for i, key in enumerate(keys):
        _send(producer, topic, key, texts[i % len(texts)])
    producer.flush()
    _wait_for(watcher, keys, timeout_s, "warm-up")


def measure_rate(producer: Any, topic: str, texts: Sequence[str], watcher: Watcher, run_id: str, n: int,
                 timeout_s: float) -> Probe:
    """What this host sustains end to end (after :func:`warm_up`): ``n`` records sent at once; rate = n / (last
    output seen - first send). Keys are ``<run>:probe-*`` (not scored)."""
    keys = [f"{run_id}:probe-{i}" for i in range(n)]
    t0 = time.time()
    for i, key in enumerate(keys):
        _send(producer, topic, key, texts[i % len(texts)])
    producer.flush()
    _wait_for(watcher, keys, timeout_s, "rate probe")
    with watcher.lock:
        last = max(watcher.seen.out[k][0] if k in watcher.seen.out else watcher.seen.dlq[k][0] for k in keys)
    seconds = max(1e-3, last - t0)
    return Probe(n / seconds, n, seconds)


def _replay(producer: Any, topic: str, items: Sequence[tuple[str, str]], rate: float, sent_at: dict[str, float],
            stop: threading.Event) -> None:
    start = time.monotonic()
    for i, (key, text) in enumerate(items):
        if stop.is_set():
            break
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sent_at[key] = time.time()
        _send(producer, topic, key, text)
    producer.flush()


def _percentile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def _lag(runner: Any) -> int | None:
    """The stream's consumer lag (records behind the input's high watermark) from its metrics."""
    samples = [s.value for m in runner.metrics.lag.collect() for s in m.samples]
    return int(sum(samples)) if samples else None


def live_view(console: Console, watcher: Watcher, runner: Any, keys: Sequence[str], sent_at: dict[str, float],
              producer_thread: threading.Thread, timeout_s: float, quiet: bool) -> int:
    """Refresh one status line (twice a second on a terminal, every 5 s elsewhere) until every replayed record
    came out or ``timeout_s`` passed since the last send; returns the highest consumer lag seen."""
    every = 0.5 if console.tty else 5.0
    started = time.monotonic()
    shown = 0.0
    max_lag = 0
    last_send = None
    while True:
        done = watcher.done(keys)
        lag = _lag(runner)
        max_lag = max(max_lag, lag or 0)
        if watcher.error is not None:
            raise watcher.error
        if not producer_thread.is_alive() and last_send is None:
            last_send = time.monotonic()
        finished = done >= len(keys) and not producer_thread.is_alive()
        timed_out = last_send is not None and time.monotonic() - last_send > timeout_s
        now = time.monotonic()
        if not quiet and (finished or timed_out or now - shown >= every):
            shown = now
            with watcher.lock:
                lat = [watcher.seen.out[k][0] - sent_at[k] for k in keys if k in watcher.seen.out and k in sent_at]
                last = watcher.seen.last
            text = ""
            if last is not None:
                s = last.get("sentiment", {})
                text = f"  | {s.get('label', '?')} {max((s.get('probabilities') or {'': 0}).values()):.2f} " \
                       f"{str(last.get('content', ''))[:24]}"
            latency = f"p50 {_percentile(lat, 50):.2f} s  p99 {_percentile(lat, 99):.2f} s" if lat else "p50 -  p99 -"
            console.status(f"  {now - started:5.1f} s  sent {len(sent_at):>4}/{len(keys)}  labelled {done:>4}  "
                           f"lag {'?' if lag is None else lag:>3}  latency {latency}{text}")
        if finished or timed_out:
            return max_lag
        time.sleep(0.05)


# ============================================================================================ summary
def summarize(cfg: DemoConfig, held: HeldOut, keys: dict[str, Record], seen: Seen, sent_at: dict[str, float],
              labels: Sequence[str]) -> dict[str, Any]:
    """The demo's figures, computed only from what came out of the topics for the replayed keys."""
    from classifier.metrics import compute_metrics

    out = {k: v for k, v in seen.out.items() if k in keys}
    dlq = {k: v for k, v in seen.dlq.items() if k in keys}
    lat_ms = [1000 * (t - sent_at[k]) for k, (t, _) in out.items() if k in sent_at]
    pairs = [(keys[k].label, rec["sentiment"]["label"], keys[k].source) for k, (_, rec) in out.items()]
    metrics = compute_metrics([t for t, _, _ in pairs], [p for _, p, _ in pairs], labels) if pairs else None
    per_source = {}
    for src in dict.fromkeys(r.source for r in held.records):
        sub = [(t, p) for t, p, s in pairs if s == src]
        if sub:
            m = compute_metrics([t for t, _ in sub], [p for _, p in sub], labels)
            per_source[src] = {"records": len(sub), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                               "file": str(held.files[src])}
    first = min(sent_at.values()) if sent_at else 0.0
    last = max((t for t, _ in out.values()), default=first)
    versions = Counter(rec["sentiment"]["model_version"] for _, rec in out.values())
    return {
        "held_out": {"sources": per_source, "records": len(pairs), "sampled_of": held.available,
                     "split_dir": str(_split_dir(cfg)), "verified": held.verified, "dropped": held.dropped},
        "records_in": len(sent_at),
        "records_out": len(out),
        "dlq": len(dlq),
        "dlq_reasons": dict(Counter(reason for _, reason in dlq.values())),
        "missing": len(sent_at) - len(out) - len(dlq),
        "throughput_per_s": len(out) / max(1e-9, last - first) if out else 0.0,
        "latency_ms_p50": _percentile(lat_ms, 50),
        "latency_ms_p99": _percentile(lat_ms, 99),
        "latency_ms_max": max(lat_ms, default=float("nan")),
        "label_distribution": dict(Counter(rec["sentiment"]["label"] for _, rec in out.values())),
        "accuracy": metrics["accuracy"] if metrics else None,
        "macro_f1": metrics["macro_f1"] if metrics else None,
        "scored_against_held_back_labels": len(pairs),
        "review": len(seen.review & set(out)),
        "alerts": len(seen.alerts),
        "model_version": versions.most_common(1)[0][0] if versions else None,
    }


def print_summary(console: Console, s: dict[str, Any]) -> None:
    h = s["held_out"]
    say = console.say
    say("\n== finsent demo summary ==")
    names = {"cfsc": "CFSC news sentences", "finfe": "FinFE forum posts"}
    for src, v in h["sources"].items():
        say(f"held-out test: {v['records']} {names.get(src, src)} from {_short(Path(v['file']))} scored: accuracy "
            f"{v['accuracy']:.3f}, macro-F1 {v['macro_f1']:.3f}")
    if len(h["sources"]) > 1:
        say(f"all {h['records']} held-out records: accuracy {s['accuracy']:.3f}, macro-F1 {s['macro_f1']:.3f}")
    say(f"  {h['verified']}")
    say(f"records in {s['records_in']}  out {s['records_out']}  DLQ {s['dlq']}"
        + (f" {s['dlq_reasons']}" if s["dlq"] else "") + f"  missing {s['missing']}")
    r = s["rate"]
    why = (f"measured {r['measured_per_s']:.1f}/s end to end, x{r['headroom']:g}" if r["measured_per_s"]
           else "given")
    say(f"replayed at {r['chosen_per_s']:.1f}/s ({why}); throughput {s['throughput_per_s']:.1f}/s; end-to-end "
        f"latency p50 {s['latency_ms_p50']:.0f} ms, p99 {s['latency_ms_p99']:.0f} ms; highest consumer lag "
        f"{s['max_lag']}")
    say(f"labels {s['label_distribution']}")
    say(f"review: {s['review']} labelled records with top probability < {s['review_threshold']:g} also went to "
        f"{s['topics']['review']}")
    say(f"drift alarm: {s['alerts'] or 'no'} alert{'s' if s['alerts'] != 1 else ''} on {s['topics']['alerts']}")
    say(f"model {s['model_version']} served as {s['serving']['variant']} on {s['serving']['replicas']} "
        f"replica(s); wall time {s['wall_time_s']:.0f} s")


# ============================================================================================ the run
def run_demo(cfg: DemoConfig, console: Console) -> dict[str, Any]:
    import ray

    from classifier.modeldir import read_meta
    from stream.admin import ensure_topics
    from stream.broker import EmbeddedBroker
    from stream.classify import build_classify
    from stream.config import StreamConfig
    from stream.runner import StreamRunner

    started = time.monotonic()
    run_id = uuid.uuid4().hex[:6]
    held = sample_held_out(cfg)
    pre = ", ".join(_short(p) for p in held.files.values())
    console.say(f"[demo] held-out records: {len(held.records)} of the {held.available} test records in {pre} "
                f"(the test split: no model here trains or selects on it)")
    broker = None
    runner: StreamRunner | None = None
    runner_thread: threading.Thread | None = None
    watcher: Watcher | None = None
    producer = None
    replay: threading.Thread | None = None
    stop = threading.Event()
    started_ray = False
    app: str | None = None
    prefix = cfg.topic_prefix
    topics = {"input": f"{prefix}.news", "output": f"{prefix}.news.sentiment", "dlq": f"{prefix}.news.dlq",
              "review": f"{prefix}.news.sentiment.review", "alerts": f"{prefix}.news.sentiment.alerts"}
    try:
        t0 = time.monotonic()
        if cfg.bootstrap_servers:
            bootstrap = cfg.bootstrap_servers
        else:
            broker = EmbeddedBroker().start()
            bootstrap = broker.bootstrap
        common = {"bootstrap_servers": bootstrap.split(",")}
        try:
            _check_reachable(common["bootstrap_servers"])
            ensure_topics(common, [topics["input"], topics["output"], topics["dlq"], topics["review"]],
                          partitions=cfg.partitions)
            ensure_topics(common, [topics["alerts"]], partitions=1)
        except Exception as e:
            raise FinsentError(f"bootstrap_servers: no Kafka broker answers at {bootstrap} ({type(e).__name__}: "
                               f"{e}); check the address, or leave bootstrap_servers unset to use the embedded "
                               "broker") from e
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            kw = {"log_to_driver": False, "logging_level": logging.INFO}
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(address="local", num_cpus=max(4, os.cpu_count() or 2), include_dashboard=False, **kw)
                started_ray = True
            _stop_on_sigterm()  # again: Ray's core worker installed its own SIGTERM handler, which aborts
            if started_ray:
                log.info("local Ray session: %s", ray._private.worker._global_node.get_session_dir_path())
        console.say(f"[demo] Kafka broker at {bootstrap}{' (embedded)' if broker else ''}; "
                    f"{'a local Ray' if started_ray else 'Ray at ' + str(os.environ.get('RAY_ADDRESS'))} up "
                    f"({time.monotonic() - t0:.0f} s)")
        model_dir = demo_model(cfg, console)
        check_held_out(model_dir, held, _split_dir(cfg))
        labels = list(read_meta(model_dir)[1].labels)

        import torch

        threads = max(1, int(cfg.replica_cpus))
        variant, decision = None, None
        if not torch.cuda.is_available():
            first = cfg.backend != "torch" and not any(model_dir.glob("onnx/*.onnx"))
            console.say(f"[demo] serving backend (backend={cfg.backend} quantize={cfg.quantize})" + (
                ": first use of this model, exporting it to ONNX and timing the variants on this CPU (about "
                "30 s)" if first else "") + " ...", end="")
            t0 = time.monotonic()
            variant, decision = choose_serving(cfg, model_dir, threads)
            speeds = ""
            if decision is not None:
                ms = {m.variant: m for m in decision.measurements}
                speeds = "; " + ", ".join(f"{v} {m.texts_per_s_batch:.0f}/s" for v, m in ms.items()) + \
                    f" at batch 32, {threads} thread(s)" + (" (cached measurement)" if decision.cached else "")
            console.say(f" {variant} ({time.monotonic() - t0:.0f} s{speeds})")
        console.say(f"[demo] deploying on Ray Serve: {cfg.max_replicas} replica(s) x {cfg.replica_cpus:g} CPU "
                    "(about 10-20 s) ...", end="")
        t0 = time.monotonic()
        app, port = deploy(cfg, model_dir, variant)
        console.say(f" up in {time.monotonic() - t0:.0f} s at http://127.0.0.1:{port}")

        scfg = StreamConfig(bootstrap_servers=bootstrap, input_topic=topics["input"], output_topic=topics["output"],
                            dlq_topic=topics["dlq"], review_topic=topics["review"],
                            drift={"alerts_topic": topics["alerts"]}, partitions=cfg.partitions,
                            group_id=f"{prefix}-stream", serve_app=app, predict_batch_size=16,
                            session_timeout_ms=6000, heartbeat_interval_ms=2000, poll_timeout_ms=100)
        runner = StreamRunner(scfg, build_classify(scfg))
        runner.setup()
        runner_thread = threading.Thread(target=runner.run, name="stream-runner", daemon=True)
        runner_thread.start()
        watcher = Watcher(bootstrap, topics, cfg.partitions)
        watcher.start()
        watcher.ready.wait(30)
        if watcher.error is not None:
            raise watcher.error
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=common["bootstrap_servers"], acks="all", linger_ms=5,
                                 enable_idempotence=True, client_id="finsent-demo-replay")
        texts = [r.text for r in held.records]
        wait_s = max(60.0, cfg.timeout_s)
        console.say(f"[demo] warming up: 16 records through {topics['input']} -> stream -> Serve -> "
                    f"{topics['output']} (the consumer group joins) ...", end="")
        t0 = time.monotonic()
        warm_up(producer, topics["input"], texts, watcher, run_id, wait_s)
        console.say(f" {time.monotonic() - t0:.0f} s")
        probe = None
        if cfg.rate is None:
            console.say(f"[demo] measuring what this host sustains end to end: {cfg.probe_records} records at once "
                        "through the same path ...", end="")
            probe = measure_rate(producer, topics["input"], texts, watcher, run_id, cfg.probe_records, wait_s)
            rate = probe.rate * cfg.headroom
            console.say(f" {probe.rate:.1f} records/s -> replaying at {rate:.1f}/s ({cfg.headroom:.0%})")
        else:
            rate = cfg.rate
        keys = {f"{run_id}:{r.id}": r for r in held.records}
        sent_at: dict[str, float] = {}
        console.say(f"[demo] replaying {len(keys)} held-out records into {topics['input']} at {rate:.1f}/s "
                    f"({_minutes(len(keys) / rate)}); labels held back")
        replay = threading.Thread(target=_replay, args=(producer, topics["input"],
                                                        [(k, r.text) for k, r in keys.items()], rate, sent_at, stop),
                                  name="replay", daemon=True)
        replay.start()
        max_lag = live_view(console, watcher, runner, list(keys), sent_at, replay, cfg.timeout_s, cfg.quiet)
        replay.join(timeout=30)
        with watcher.lock:
            summary = summarize(cfg, held, keys, watcher.seen, sent_at, labels)
        summary.update({
            "rate": {"chosen_per_s": rate, "measured_per_s": probe.rate if probe else None,
                     "probe_records": probe.records if probe else 0, "probe_s": probe.seconds if probe else None,
                     "headroom": cfg.headroom if probe else None},
            "max_lag": max_lag,
            "review_threshold": scfg.review_threshold or 0.0,
            "topics": topics,
            "serving": {"variant": variant or "torch (GPU)", "replicas": cfg.max_replicas,
                        "replica_cpus": cfg.replica_cpus,
                        "auto": [m.__dict__ for m in decision.measurements] if decision else None},
            "stream": {k: v for k, v in runner.summary.__dict__.items() if k != "assignments"},
            "log_file": str(cfg.log_path),
            "ray_session_dir": ray._private.worker._global_node.get_session_dir_path() if started_ray else None,
            "broker_pid": broker.pid if broker else None,
            "wall_time_s": time.monotonic() - started,
        })
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "records.jsonl", "w", encoding="utf-8") as f:
            for key, r in keys.items():
                row: dict[str, Any] = {"id": r.id, "source": r.source, "file": str(held.files[r.source]),
                                       "line": r.line, "text": r.text, "true": r.label}
                if key in watcher.seen.out:
                    t, rec = watcher.seen.out[key]
                    row.update(pred=rec["sentiment"]["label"], score=rec["sentiment"]["score"],
                               latency_ms=1000 * (t - sent_at[key]) if key in sent_at else None,
                               review=key in watcher.seen.review)
                elif key in watcher.seen.dlq:
                    row["dlq"] = watcher.seen.dlq[key][1]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2, default=str),
                                          encoding="utf-8")
        print_summary(console, summary)
        return summary
    finally:
        stop.set()
        if replay is not None:
            replay.join(timeout=10)
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)
        if runner is not None:
            runner.stop()
        if runner_thread is not None:
            runner_thread.join(timeout=60)
        if watcher is not None:
            watcher.stop_event.set()
            watcher.join(timeout=10)
        if ray.is_initialized():
            if app is not None and not started_ray:  # someone else's cluster: remove only the demo's app
                from ray import serve

                with contextlib.suppress(Exception):
                    serve.delete(app)
            ray.shutdown()
        if broker is not None:
            broker.stop()
        if started_ray or broker is not None:
            console.say("[demo] stopped: stream, Serve, Ray and broker shut down")


def _stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a container stop) shuts the demo down like Ctrl-C: broker, Ray and Serve included."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_command(DemoConfig, list(sys.argv[1:] if argv is None else argv), prog="finsent demo",
                        description=__doc__, aliases=DEMO_ALIASES)
    log_path = cfg.log_path.absolute()
    _stop_on_sigterm()
    with quiet_terminal(log_path) as console:
        console.say(f"[demo] log: {log_path} (Ray, Serve, Kafka and library messages)")
        try:
            summary = run_demo(cfg, console)
        except KeyboardInterrupt:
            console.error("\n[demo] interrupted: everything was shut down")
            return 130
        except Exception as e:  # noqa: BLE001 - the cause goes to the terminal, the traceback to the log
            log.exception("finsent demo failed")
            code = 2 if isinstance(e, FinsentError) else 1
            cause = str(e) if isinstance(e, FinsentError) or str(e).startswith(type(e).__name__) else \
                f"{type(e).__name__}: {e}"
            console.error(f"finsent demo: error: {cause}\n(full traceback and Ray/Kafka messages: {log_path})")
            return code
        out = Path(cfg.out)
        console.say(f"[demo] summary: {out / 'summary.json'}, records: {out / 'records.jsonl'}, log: {log_path}")
        return 0 if summary["missing"] == 0 else 1
