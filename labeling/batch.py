"""``finsent label``: label news archives with a pool of Predictor actors on Ray Data.

Pipeline::

    input files ──read tasks (one per file, shards of rows_per_shard rows, done shards skipped)──▶
    map_batches(PredictorActor, actor pool: CPU or GPU actors, each loads the model once) ──▶
    driver: rows gathered per shard → part-<file>-<shard>.parquet|jsonl written atomically + commit record

The driver writes the shards, so the output directory only needs to be reachable from the driver (any
fsspec URL). Ray's own output (C++ core logs, Ray Data's plan and progress lines, actor output) goes to a log
file; the terminal shows one progress bar and the summary.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from classifier.errors import ConfigError, DataError, FinsentError
from labeling.config import PROB_PREFIX, LabelConfig
from labeling.inputs import InputFile, ReadSpec, check_fields, count_rows, read_file_shards, resolve_inputs
from labeling.output import (
    ERRORS,
    LOG,
    OutputDir,
    ShardRecord,
    encode_shard,
    new_manifest,
    shard_output,
)

log = logging.getLogger(__name__)

#: read tasks running at once (reading is cheap next to the model; a few keep the actors fed)
MAX_READ_TASKS = 4


# ================================================================================================ the actor
def predictor_kwargs(device: str, batch_size: int, quantize: str, backend: str,
                     threads: int | None = None) -> dict[str, Any]:
    """Keyword arguments for ``Predictor.from_dir``: ``backend`` and ``threads`` only when this Predictor
    accepts them (it gained them with the ONNX backend)."""
    from classifier.predict import Predictor

    params = inspect.signature(Predictor.from_dir).parameters
    kwargs: dict[str, Any] = {"device": device, "batch_size": batch_size, "quantize": quantize}
    if "backend" in params:
        kwargs["backend"] = backend
    elif backend not in ("auto", "torch"):
        raise ConfigError(f"backend={backend}: this finsent's Predictor has only the torch backend; use "
                          "backend=auto or backend=torch")
    if threads is not None and "threads" in params:
        kwargs["threads"] = threads
    return kwargs


class PredictorActor:
    """A Ray Data actor (callable class): loads the model once in ``__init__``, labels pyarrow batches."""

    def __init__(self, model_dir: str, predictor_args: Mapping[str, Any], threads: int,
                 labels: Sequence[str]) -> None:
        import torch

        from classifier.predict import Predictor

        torch.set_num_threads(threads)
        self.predictor = Predictor.from_dir(model_dir, **dict(predictor_args))
        if tuple(self.predictor.labels) != tuple(labels):
            raise ConfigError(f"{model_dir} on this worker has labels {self.predictor.labels}, the driver "
                              f"saw {tuple(labels)}: give every node the same model directory")
        self.labels = tuple(labels)

    def _predict(self, texts: list[str]) -> tuple[list[list[float] | None], list[str | None]]:
        from classifier.errors import InputError

        try:
            return self.predictor.predict_proba(texts).tolist(), [None] * len(texts)
        except InputError:  # one bad text fails a whole call: label the rest one by one
            probs: list[list[float] | None] = []
            errors: list[str | None] = []
            for t in texts:
                try:
                    probs.append(self.predictor.predict_proba([t]).tolist()[0])
                    errors.append(None)
                except InputError as e:
                    probs.append(None)
                    errors.append(f"rejected by the model: {e}")
            return probs, errors

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        n = batch.num_rows
        errors = batch["__error"].to_pylist()
        texts = batch["__text"].to_pylist()
        ok = [i for i in range(n) if errors[i] is None]
        probs: list[list[float] | None] = [None] * n
        if ok:
            p, errs = self._predict([texts[i] for i in ok])
            for i, pi, ei in zip(ok, p, errs, strict=True):
                probs[i] = pi
                if ei is not None:
                    errors[i] = ei
        label: list[str | None] = [None] * n
        score: list[float | None] = [None] * n
        version: list[str | None] = [None] * n
        for i, pi in enumerate(probs):
            if pi is not None:
                pred = self.predictor.to_prediction(pi)
                label[i], score[i], version[i] = pred["label"], pred["score"], pred["model_version"]
        out = batch.drop_columns(["__text"])
        out = out.set_column(out.schema.get_field_index("__error"), "__error", pa.array(errors, pa.string()))
        out = out.append_column("label", pa.array(label, pa.string()))
        out = out.append_column("score", pa.array(score, pa.float32()))
        for j, name in enumerate(self.labels):
            col = [None if pi is None else pi[j] for pi in probs]
            out = out.append_column(PROB_PREFIX + name, pa.array(col, pa.float32()))
        return out.append_column("model_version", pa.array(version, pa.string()))


def read_files(batch: Mapping[str, Any], files: Sequence[InputFile], spec: ReadSpec) -> Iterator[Any]:
    """Ray Data read stage: one row per input file in, one pyarrow table per unfinished shard out."""
    for i in batch["file"]:
        yield from read_file_shards(files[int(i)], spec)


# ================================================================================================ run
@dataclass
class LabelSummary:
    """Figures of one ``finsent label`` run (also written to ``_summary.json``)."""

    output_dir: str
    model_version: str
    rows: int = 0  #: input rows handled by this run
    labelled: int = 0
    bad: int = 0
    shards_written: int = 0
    shards_skipped: int = 0  #: done by an earlier run
    rows_skipped: int = 0
    total_labelled: int = 0  #: in the whole output directory
    total_bad: int = 0
    actors: int = 0
    wall_time_s: float = 0.0
    label_time_s: float = 0.0  #: from the pipeline's start (Ray up, before the models load) to its end
    startup_s: float = 0.0  #: from the pipeline's start to the first labelled rows (actors starting up)
    rows_per_s: float = 0.0  #: rows / wall_time_s
    log_file: str | None = None
    errors_file: str = ""
    bad_reasons: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def format(self) -> str:
        if self.rows:
            head = (f"labelled {self.labelled:,} rows ({self.bad:,} bad) in {self.wall_time_s:.1f} s: "
                    f"{self.rows_per_s:.1f} rows/s with {self.actors} actor(s)")
        else:
            head = f"nothing left to label ({self.wall_time_s:.1f} s)"
        lines = [
            head,
            f"shards: {self.shards_written} written, {self.shards_skipped} skipped as done "
            f"({self.rows_skipped:,} rows)",
            f"output: {self.output_dir} ({self.total_labelled:,} rows labelled, {self.total_bad:,} bad rows "
            f"in {self.errors_file})",
        ]
        if self.bad_reasons:
            top = sorted(self.bad_reasons.items(), key=lambda kv: -kv[1])[:5]
            lines.append("bad rows: " + "; ".join(f"{n} × {r}" for r, n in top))
        if self.log_file:
            lines.append(f"Ray log: {self.log_file}")
        return "\n".join(lines)


def _reason_key(reason: str) -> str:
    return reason.split(":", 1)[0]


def _finsent_cause(exc: BaseException) -> FinsentError | None:
    """The FinsentError raised in a Ray task or actor behind a Ray Data exception, if any."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or e is None:
            continue
        seen.add(id(e))
        if isinstance(e, FinsentError):
            return e
        for nxt in (getattr(e, "cause", None), e.__cause__, e.__context__):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return None


def default_log_file(cfg: LabelConfig, out: OutputDir) -> str:
    if cfg.log_file:
        return cfg.log_file
    return out.path(LOG) if out.is_local else str(Path.cwd() / "finsent-label.log")


@contextlib.contextmanager
def ray_output_to(log_path: str | None) -> Iterator[TextIO]:
    """Point file descriptors 1 and 2 at ``log_path`` (Ray's C++ logs, its Python loggers and forwarded worker
    output all write there); yield a stream on the real terminal for the progress bar and warnings."""
    if log_path is None:
        yield sys.stderr
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    orig = sys.stdout, sys.stderr
    for s in orig:
        with contextlib.suppress(Exception):
            s.flush()
    from classifier.console import stream_beside

    saved = os.dup(1), os.dup(2)
    # the terminal: fd 2 as it was (a CLI), or the Python stream when it is not fd 2 (pytest, a notebook)
    term, own_term = stream_beside(orig[1], 2, saved[1])
    with open(log_path, "ab", buffering=0) as logf:
        os.dup2(logf.fileno(), 1)
        os.dup2(logf.fileno(), 2)
        # Ray's Python loggers and its worker-output printer write to sys.stderr/sys.stdout at emit time
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        handler = _TerminalHandler(term)
        pkg = logging.getLogger("labeling")
        pkg.addHandler(handler)
        try:
            yield term
        finally:
            pkg.removeHandler(handler)
            for s in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    s.flush()
            sys.stdout, sys.stderr = orig
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if own_term:
                term.close()


class _TerminalHandler(logging.Handler):
    """Warnings of this package on the terminal, above the progress bar."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(logging.WARNING)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        with contextlib.suppress(Exception):
            tqdm.write(self.format(record), file=self.stream)


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data's progress bars and stats off while this run executes (the driver shows its own bar), and
    small output blocks: Ray Data merges what a read task yields into blocks of up to 128 MiB, so a single
    input file (the corpus) would reach the actor pool as ONE block and one actor would label it all; with
    64 KiB blocks every shard is split and every actor gets work."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    quiet = {"enable_progress_bars": False, "enable_operator_progress_bars": False,
             "enable_auto_log_stats": False, "verbose_stats_logs": False, "target_max_block_size": 1 << 16}
    before = {k: getattr(ctx, k) for k in quiet}
    for k, v in quiet.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            setattr(ctx, k, v)


def _actor_count(cfg: LabelConfig, rows_todo: int | None) -> int:
    import ray

    res = ray.cluster_resources()
    if cfg.num_gpus > 0:
        gpus = res.get("GPU", 0)
        if gpus < cfg.num_gpus:
            raise ConfigError(f"num_gpus={cfg.num_gpus} per actor but the Ray cluster has {gpus:g} GPU(s): "
                              "use num_gpus=0 for CPU actors or join a cluster with GPUs (RAY_ADDRESS)")
        fit = int(gpus // cfg.num_gpus)
    else:
        cpus = res.get("CPU", 0)
        if cpus < cfg.num_cpus:
            raise ConfigError(f"num_cpus={cfg.num_cpus:g} per actor but the Ray cluster has {cpus:g} CPU(s): "
                              "lower num_cpus")
        fit = max(1, int(cpus // cfg.num_cpus))
    if cfg.concurrency is not None:
        if cfg.concurrency > fit:
            log.warning("concurrency=%d actors but the cluster fits %d now: the rest start when resources "
                        "free up (an autoscaling cluster adds nodes)", cfg.concurrency, fit)
        return cfg.concurrency
    if rows_todo is not None:
        fit = min(fit, max(1, math.ceil(rows_todo / cfg.batch_size)))
    return fit


def run_label(cfg: LabelConfig, *, shutdown_ray: bool | None = None, quiet: bool = True) -> LabelSummary:
    """Label ``cfg.inputs`` into ``cfg.output_dir`` (resuming a run with the same settings) and return the
    figures. ``shutdown_ray``: None = shut Ray down at the end if this call started it. ``quiet``: send Ray's
    output to the log file (the CLI's behaviour)."""
    t0 = time.perf_counter()
    cfg.check_required()
    out = OutputDir(str(cfg.output_dir))
    files = resolve_inputs(cfg.inputs, cfg.format, exclude=out.fs.unstrip_protocol(out.root))
    check_fields(files, cfg.text_fields)
    load_args = predictor_kwargs(cfg.device, cfg.model_batch_size, cfg.quantize, cfg.backend, cfg.threads)
    labels, model_version = _inspect_model(cfg, load_args)
    manifest = new_manifest(cfg.output_settings(), [f.fingerprint() for f in files], model_version, labels)
    done = out.prepare(manifest, cfg.overwrite)

    done_chunks: dict[int, set[int]] = {}
    last_chunk: dict[int, int] = {}
    for rec in done.values():
        done_chunks.setdefault(rec.file, set()).add(rec.chunk)
        if rec.last:
            last_chunk[rec.file] = rec.chunk
    complete = {i for i, last in last_chunk.items() if done_chunks[i] >= set(range(last + 1))}
    todo = [f for f in files if f.index not in complete]
    counts = [count_rows(f) for f in todo]
    rows_skipped = sum(r.rows for r in done.values())
    total = None
    if all(c is not None for c in counts):
        total = sum(c for c in counts if c is not None) + sum(
            r.rows for r in done.values() if r.file in complete)
    spec = ReadSpec(
        text_fields=tuple(cfg.text_fields), id_field=cfg.id_field, passthrough=tuple(cfg.passthrough),
        rows_per_shard=cfg.rows_per_shard, output_ext=cfg.output_format,
        done={k: frozenset(v) for k, v in done_chunks.items()},
    )
    summary = LabelSummary(output_dir=out.url, model_version=model_version, shards_skipped=len(done),
                           rows_skipped=rows_skipped, errors_file=out.path(ERRORS))
    log_path = default_log_file(cfg, out) if quiet else None
    summary.log_file = log_path if todo else None
    records = dict(done)
    if todo:
        with ray_output_to(log_path) as term:
            started = _start_ray()
            try:
                with _quiet_ray_data():  # before the Dataset is built: it keeps the context it was built in
                    _run_pipeline(cfg, files, todo, spec, load_args, labels, out, records, summary, term,
                                  total=total, initial=rows_skipped, rows_todo=None if total is None else
                                  total - rows_skipped)
            finally:
                if shutdown_ray or (shutdown_ray is None and started):
                    import ray

                    ray.shutdown()
    _check_complete(files, records)
    summary.total_labelled = sum(r.labelled for r in records.values())
    summary.total_bad = sum(len(r.bad) for r in records.values())
    summary.wall_time_s = round(time.perf_counter() - t0, 3)
    summary.rows_per_s = round(summary.rows / summary.wall_time_s, 2) if summary.wall_time_s else 0.0
    out.finish(list(records.values()), summary.to_json())
    return summary


def _inspect_model(cfg: LabelConfig, load_args: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """Load the model on the driver before Ray starts: a missing or broken model directory, or a backend /
    precision the host cannot run, fails here with the Predictor's own message. Returns the labels and the
    plain (torch fp32) model version, which the manifest records.

    With CPU actors and a backend or precision other than torch fp32, the model is loaded a second time as
    the actors will load it (same threads): that exports the ONNX graph and, for ``auto``, measures the
    variants once, so the actors on this host find both in the cache instead of racing to make them."""
    import torch

    from classifier.predict import Predictor

    model_dir = Path(str(cfg.model_dir)).expanduser()
    if not model_dir.is_dir():
        raise ConfigError(f"model_dir: {model_dir} is not a directory; pass a model directory written by "
                          "`finsent finetune` (model_dir=path/to/model)")
    plain = predictor_kwargs("cpu", 1, "none", "torch")
    try:
        p = Predictor.from_dir(model_dir, **plain)
        labels, version = tuple(p.labels), p.model_version
        del p
        variant = (cfg.backend, cfg.quantize)
        if cfg.device == "cpu" and "backend" in load_args and variant != ("torch", "none"):
            before = torch.get_num_threads()
            torch.set_num_threads(cfg.threads)
            try:
                p = Predictor.from_dir(model_dir, **{**load_args, "batch_size": 1})
            finally:
                torch.set_num_threads(before)
            log.info("actors will run %s", p.model_version)
            del p
    except FinsentError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model_dir: cannot load {model_dir} ({type(e).__name__}: {e}); pass a complete "
                          "model directory written by `finsent finetune`") from None
    return labels, version


def _start_ray() -> bool:
    """Join $RAY_ADDRESS or start a local Ray (training's guarded start); True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    from training.finetune import ensure_ray

    ensure_ray()
    return True


def _run_pipeline(cfg: LabelConfig, files: Sequence[InputFile], todo: Sequence[InputFile], spec: ReadSpec,
                  load_args: dict[str, Any], labels: Sequence[str], out: OutputDir,
                  records: dict[str, ShardRecord], summary: LabelSummary, term: TextIO, *, total: int | None,
                  initial: int, rows_todo: int | None) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy
    from tqdm import tqdm

    actors = _actor_count(cfg, rows_todo)
    summary.actors = actors
    t_start = time.perf_counter()
    ds = ray.data.from_items([{"file": f.index} for f in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        read_files, batch_size=1, fn_kwargs={"files": list(files), "spec": spec}, num_cpus=0,
        compute=TaskPoolStrategy(size=min(len(todo), MAX_READ_TASKS)),
    )
    ds = ds.map_batches(
        PredictorActor,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        fn_constructor_kwargs={"model_dir": str(Path(str(cfg.model_dir)).expanduser().resolve()),
                               "predictor_args": load_args, "threads": cfg.threads, "labels": list(labels)},
        compute=ActorPoolStrategy(size=actors),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus or None,
    )
    pending: dict[str, list[Any]] = {}
    got: dict[str, int] = {}
    tty = hasattr(term, "isatty") and term.isatty()
    bar = tqdm(total=total, initial=initial, unit="rows", file=term, disable=not cfg.progress,
               dynamic_ncols=True, mininterval=0.5 if tty else 30.0, smoothing=0.1, desc="label")
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not summary.startup_s:
                summary.startup_s = round(time.perf_counter() - t_start, 3)
            for name in pc.unique(batch["__shard"]).to_pylist():
                part = batch.filter(pc.equal(batch["__shard"], name))
                pending.setdefault(name, []).append(part)
                got[name] = got.get(name, 0) + part.num_rows
                expected = part["__shard_rows"][0].as_py()
                if got[name] == expected:
                    shard = pa.concat_tables(pending.pop(name))
                    rec = _commit(out, name, shard, files, labels, cfg)
                    versions = pc.drop_null(shard["model_version"])
                    if len(versions):  # what the actors ran (e.g. +onnx), rather than the plain version
                        summary.model_version = versions[0].as_py()
                    records[name] = rec
                    summary.shards_written += 1
                    summary.rows += rec.rows
                    summary.labelled += rec.labelled
                    summary.bad += len(rec.bad)
                    for e in rec.bad:
                        key = _reason_key(e["reason"])
                        summary.bad_reasons[key] = summary.bad_reasons.get(key, 0) + 1
                    bar.set_postfix_str(f"shards {summary.shards_written}, bad {summary.bad}",
                                        refresh=False)
                elif got[name] > expected:
                    raise DataError(f"shard {name} got {got[name]} rows for {expected}: a read task ran "
                                    "twice; run the command again to resume")
                bar.update(part.num_rows)
    except Exception as e:
        cause = _finsent_cause(e)
        if cause is not None and cause is not e:
            raise type(cause)(str(cause)) from None
        raise
    finally:
        bar.close()
    summary.label_time_s = round(time.perf_counter() - t_start, 3)
    if pending:
        raise DataError(f"{len(pending)} shard(s) ended incomplete ({', '.join(sorted(pending)[:3])}): run "
                        "the command again to resume")


def _commit(out: OutputDir, name: str, table: Any, files: Sequence[InputFile], labels: Sequence[str],
            cfg: LabelConfig) -> ShardRecord:
    data, bad_idx = shard_output(table, labels, cfg.passthrough)
    sorted_t = table.sort_by("__row")
    file_index = sorted_t["__file"][0].as_py()
    file = files[file_index]
    bad = []
    if bad_idx:
        ids, rows, reasons = (sorted_t[c].to_pylist() for c in ("__id", "__row", "__error"))
        bad = [{"id": ids[i], "file": file.name, "row": rows[i], "reason": reasons[i]} for i in bad_idx]
    rec = ShardRecord(shard=name, file=file_index, chunk=int(name.rsplit("-", 1)[1].split(".")[0]),
                      rows=table.num_rows, labelled=data.num_rows, bad=bad,
                      last=bool(sorted_t["__last"][0].as_py()), data_size=0)
    out.commit_shard(rec, encode_shard(data, cfg.output_format))
    return rec


def _check_complete(files: Sequence[InputFile], records: Mapping[str, ShardRecord]) -> None:
    chunks: dict[int, set[int]] = {}
    last: dict[int, int] = {}
    for r in records.values():
        chunks.setdefault(r.file, set()).add(r.chunk)
        if r.last:
            last[r.file] = r.chunk
    missing = []
    for f in files:
        if f.index not in chunks:
            continue  # an empty file has no shard
        if f.index not in last or chunks[f.index] != set(range(last[f.index] + 1)):
            missing.append(f.name)
    if missing:
        raise DataError(f"output incomplete for {', '.join(missing[:3])}: run the command again to resume")
