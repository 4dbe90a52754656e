"""``finsent demo``: the whole pipeline on one machine, then a summary, leaving nothing running.

1. starts the embedded broker (or uses ``--bootstrap-servers``) and a local Ray (or ``RAY_ADDRESS``);
2. uses ``--model``, else the cached demo model, else fine-tunes one with a short budget on Ray Train;
3. deploys the Ray Serve app with autoscaling;
4. runs the stream consumer group (classifying through the Serve handle) and replays news into the input
   topic at ``--rate`` (default: CFSC news sentences, labels held back);
5. shows each labelled record as it arrives, then a summary: records in/out, DLQ, throughput, p50/p99
   end-to-end latency, label distribution and accuracy against the held-back labels;
6. shuts everything down (Ctrl-C at any point too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.errors import ConfigError, FinsentError

log = logging.getLogger(__name__)


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class DemoConfig:
    """Options of ``finsent demo`` (each is also a command-line flag: ``--records 500``)."""

    model: str | None = _help("finsent model directory to serve; default: the cached demo model, else fine-tune one",
                              default=None)
    base_model: str | None = _help("base checkpoint for the demo fine-tune (default $FINSENT_BASE_MODEL or "
                                   "../shared/models/me5-small-zh-fin)", default=None)
    tiny: bool = _help("fine-tune a tiny random BERT instead of the base model (seconds; for tests and dry runs; "
                       "its labels are near chance)", default=False)
    cache_dir: str = _help("where the fine-tuned demo model is cached between runs",
                           default=os.environ.get("FINSENT_CACHE", str(Path.home() / ".cache" / "finsent")))
    retrain: bool = _help("fine-tune a new demo model even if one is cached", default=False)
    data: str | None = _help("news to replay: label|||text or JSONL (default: ../shared/data/cfsc/train.txt); "
                             "labels are held back and used only for the accuracy in the summary", default=None)
    records: int = _help("how many news records to replay (a seeded random sample of the file)", default=300)
    rate: float = _help("records per second sent to the input topic (2 CPU cores label about 45/s with int8)",
                        default=30.0)
    seed: int = _help("seed of the sample", default=0)
    bootstrap_servers: str | None = _help("Kafka bootstrap servers; default: start the embedded broker on loopback",
                                          default=None)
    partitions: int = _help("partitions of the demo topics (= the most consumers that can share the work)", default=2)
    topic_prefix: str = _help("demo topics are <prefix>.news, <prefix>.news.sentiment, <prefix>.news.dlq",
                              default="demo")
    min_replicas: int = _help("Serve autoscaling: fewest replicas", default=1)
    max_replicas: int = _help("Serve autoscaling: most replicas", default=2)
    replica_cpus: float = _help("CPUs reserved per Serve replica", default=0.5)
    quantize: str = _help("serving precision: int8 = dynamic int8 Linear layers (on 2 CPU cores about 2-3x the "
                          "served throughput for -0.7 point of FinFE dev macro-F1, see bench/README.md), none = "
                          "fp32, auto = int8 unless a GPU is visible", default="auto")
    timeout_s: float = _help("give up waiting for labelled records after this many seconds", default=300.0)
    quiet: bool = _help("do not print a line per labelled record", default=False)
    out: str = _help("where summary.json and records.jsonl (one line per record: true/predicted label, latency) "
                     "are written", default="runs/demo")

    def __post_init__(self) -> None:
        if self.records < 1:
            raise ConfigError(f"records: must be >= 1, got {self.records}")
        if self.rate <= 0:
            raise ConfigError(f"rate: must be > 0 records/s, got {self.rate}")
        if self.quantize not in ("auto", "int8", "none"):
            raise ConfigError(f"quantize: {self.quantize!r} is not allowed; choose auto, int8 or none")
        if self.partitions < 1:
            raise ConfigError(f"partitions: must be >= 1, got {self.partitions}")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigError(f"min_replicas/max_replicas: need 0 <= min <= max and max >= 1, got "
                              f"{self.min_replicas}/{self.max_replicas}")
        if self.model is not None and not (Path(self.model) / "config.json").is_file():
            raise ConfigError(f"model: {self.model} is not a model directory (no config.json); give the output_dir "
                              "of `finsent finetune`, or leave --model out to use/build the demo model")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finsent demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(DemoConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if f.type in ("bool",) or isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            conv = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            p.add_argument(flag, type=conv, default=default, help=f"{f.metadata['help']} (default: {default})")
    return p


# ---------------------------------------------------------------------------------------------- steps
def _sample_news(cfg: DemoConfig) -> list[tuple[str, str, str]]:
    """(id, text, held-back label) for ``cfg.records`` seeded random lines of the news file."""
    from classifier.data import read_examples
    from classifier.paths import shared_dir

    path = Path(cfg.data) if cfg.data else shared_dir() / "data" / "cfsc" / "train.txt"
    data = read_examples(path, require_labels=False)
    if not data.examples:
        raise ConfigError(f"data: {path} holds no usable line")
    rng = random.Random(cfg.seed)
    picked = rng.sample(data.examples, min(cfg.records, len(data.examples)))
    return [(f"news-{e.line}", e.text, e.label) for e in picked]


def _demo_model(cfg: DemoConfig) -> Path:
    if cfg.model:
        return Path(cfg.model)
    from classifier.paths import default_base_model

    if cfg.tiny:
        key = "tiny"
        base = None
    else:
        base = default_base_model(cfg.base_model)
        key = "base-" + base.name
    cached = Path(cfg.cache_dir).expanduser() / f"demo-model-{key}"
    if (cached / "model.safetensors").is_file() and not cfg.retrain:
        print(f"[demo] using the cached demo model {cached} (--retrain to build a new one)")
        return cached
    return _finetune_demo_model(cfg, base, cached)


def _finetune_demo_model(cfg: DemoConfig, base: Path | None, target: Path) -> Path:
    import shutil

    import training
    from classifier.config import load_config
    from training.config import FinetuneConfig
    from training.finetune import run_finetune

    work = Path(cfg.out) / "train"
    overrides = [f"output_dir={work / 'model'}", f"storage_path={(work / 'ray').resolve()}", "overwrite=true"]
    if cfg.tiny:
        from classifier.testing import make_tiny_base_dir

        tiny = make_tiny_base_dir(work / "tiny-base")
        overrides += [f"base_model={tiny}", "max_train_examples=400", "max_len=64", "lr=1e-3", "model_name=demo-tiny"]
        expect = "under a minute"
    else:
        overrides += [f"base_model={base}"]
        expect = "about 2 minutes on 2 idle cores, longer under load"
    ft = load_config(FinetuneConfig, Path(training.__file__).parent / "configs" / "demo.yaml", overrides)
    print(f"[demo] no cached demo model: fine-tuning one on Ray Train with a short budget "
          f"({ft.max_train_examples} examples, {ft.epochs} epoch; expect {expect})")
    started = time.monotonic()
    result = run_finetune(ft)
    print(f"[demo] fine-tuned in {time.monotonic() - started:.0f} s -> {result.model_dir}")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(result.model_dir, target)
    return target


def _deploy(cfg: DemoConfig, model_dir: Path) -> str:
    from ray import serve

    from serving.app import build_app
    from serving.config import make_config
    from stream.broker import free_port

    port = free_port()
    quantize = cfg.quantize
    if quantize == "auto":
        import torch

        quantize = "none" if torch.cuda.is_available() else "int8"
    scfg = make_config(model_dir=str(model_dir), min_replicas=cfg.min_replicas, max_replicas=cfg.max_replicas,
                       num_cpus=cfg.replica_cpus, port=port, host="127.0.0.1", app_name="finsent-demo",
                       quantize=quantize)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    started = time.monotonic()
    serve.run(build_app(scfg), name=scfg.app_name, route_prefix=scfg.route_prefix)
    print(f"[demo] Serve app {scfg.app_name!r} up in {time.monotonic() - started:.0f} s at http://127.0.0.1:{port} "
          f"(replicas {cfg.min_replicas}..{cfg.max_replicas})")
    return scfg.app_name


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def _replay(bootstrap: str, topic: str, news: list[tuple[str, str, str]], rate: float,
            sent_at: dict[str, float], stop: threading.Event) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=[bootstrap], acks="all", enable_idempotence=True, linger_ms=5,
                             client_id="finsent-demo-replay")
    try:
        start = time.monotonic()
        for i, (nid, text, _) in enumerate(news):
            if stop.is_set():
                break
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            value = json.dumps({"id": nid, "title": "", "content": text, "source": "demo"}, ensure_ascii=False)
            sent_at[nid] = time.time()
            producer.send(topic, key=nid.encode(), value=value.encode("utf-8"))
        producer.flush()
    finally:
        producer.close()


def _watch(cfg: DemoConfig, bootstrap: str, topics: dict[str, str], news: list[tuple[str, str, str]],
           sent_at: dict[str, float]) -> dict[str, Any]:
    """Read the sentiment and DLQ topics until every record is accounted for (or the timeout)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], client_id="finsent-demo-watch", enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=500)
    parts = [TopicPartition(t, p) for t in (topics["output"], topics["dlq"]) for p in range(cfg.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    wanted = {nid for nid, _, _ in news}
    out: dict[str, dict[str, Any]] = {}
    dlq: dict[str, str] = {}
    latency_ms: dict[str, float] = {}
    deadline = time.monotonic() + cfg.timeout_s
    if not cfg.quiet:
        print(f"{'latency':>8}  {'label':<4} {'score':>6}  text")
    try:
        while len(out) + len(dlq) < len(wanted) and time.monotonic() < deadline:
            for msg in consumer:
                key = (msg.key or b"").decode("utf-8", "replace")
                if key not in wanted or key in out or key in dlq:
                    continue
                now = time.time()
                if msg.topic == topics["dlq"]:
                    headers = dict(msg.headers or [])
                    dlq[key] = (headers.get("finsent.error") or headers.get("error") or b"?").decode("utf-8", "replace")
                    if not cfg.quiet:
                        print(f"{'':>8}  DLQ  {'':>6}  {key}: {dlq[key]}")
                    continue
                rec = json.loads(msg.value)
                out[key] = rec
                if key in sent_at:
                    latency_ms[key] = (now - sent_at[key]) * 1000
                if not cfg.quiet:
                    s = rec["sentiment"]
                    text = str(rec.get("content", ""))[:36]
                    print(f"{latency_ms.get(key, float('nan')):>6.0f}ms  {s['label']:<4} {s['score']:>+6.2f}  {text}")
                if len(out) + len(dlq) >= len(wanted):
                    break
    finally:
        consumer.close()
    return {"out": out, "dlq": dlq, "latency_ms": latency_ms}


def _summary(news: list[tuple[str, str, str]], seen: dict[str, Any], sent_at: dict[str, float],
             wall_s: float, model_dir: Path) -> dict[str, Any]:
    from classifier.metrics import compute_metrics
    from classifier.predict import Predictor

    out, dlq, lat = seen["out"], seen["dlq"], list(seen["latency_ms"].values())
    truth = {nid: label for nid, _, label in news}
    labelled = [(truth[k], v["sentiment"]["label"]) for k, v in out.items() if truth.get(k)]
    labels = list(Predictor.from_dir(model_dir, device="cpu").labels) if labelled else []
    metrics = compute_metrics([t for t, _ in labelled], [p for _, p in labelled], labels) if labelled else None
    first = min(sent_at.values()) if sent_at else time.time()
    last_read = max((sent_at.get(k, first) + lat_ms / 1000 for k, lat_ms in seen["latency_ms"].items()), default=first)
    span = max(1e-9, last_read - first)
    versions = Counter(v["sentiment"]["model_version"] for v in out.values())
    return {
        "records_in": len(sent_at),
        "records_out": len(out),
        "dlq": len(dlq),
        "dlq_reasons": dict(Counter(dlq.values())),
        "missing": len(sent_at) - len(out) - len(dlq),
        "throughput_per_s": len(out) / span,
        "latency_ms_p50": _percentile(lat, 50),
        "latency_ms_p99": _percentile(lat, 99),
        "label_distribution": dict(Counter(v["sentiment"]["label"] for v in out.values())),
        "accuracy": metrics["accuracy"] if metrics else None,
        "macro_f1": metrics["macro_f1"] if metrics else None,
        "scored_against_held_back_labels": len(labelled),
        "model_version": versions.most_common(1)[0][0] if versions else None,
        "wall_time_s": wall_s,
    }


def print_summary(s: dict[str, Any]) -> None:
    acc = "n/a" if s["accuracy"] is None else f"{s['accuracy']:.3f} (macro-F1 {s['macro_f1']:.3f}, " \
                                              f"{s['scored_against_held_back_labels']} labelled)"
    print("\n== finsent demo summary ==")
    print(f"records in {s['records_in']}  out {s['records_out']}  DLQ {s['dlq']}  missing {s['missing']}")
    print(f"throughput {s['throughput_per_s']:.1f} records/s   end-to-end latency p50 {s['latency_ms_p50']:.0f} ms  "
          f"p99 {s['latency_ms_p99']:.0f} ms")
    print(f"labels {s['label_distribution']}   accuracy vs held-back labels {acc}")
    print(f"model {s['model_version']}   wall time {s['wall_time_s']:.0f} s")


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    import ray
    from ray import serve

    from stream.broker import EmbeddedBroker
    from stream.classify import build_classify
    from stream.config import StreamConfig
    from stream.runner import StreamRunner

    started = time.monotonic()
    news = _sample_news(cfg)
    broker = None
    runner: StreamRunner | None = None
    thread: threading.Thread | None = None
    stop = threading.Event()
    try:
        if cfg.bootstrap_servers:
            bootstrap = cfg.bootstrap_servers
        else:
            broker = EmbeddedBroker().start()
            bootstrap = broker.bootstrap
            print(f"[demo] embedded broker at {bootstrap}")
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(4, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
        model_dir = _demo_model(cfg)
        app = _deploy(cfg, model_dir)
        topics = {"input": f"{cfg.topic_prefix}.news", "output": f"{cfg.topic_prefix}.news.sentiment",
                  "dlq": f"{cfg.topic_prefix}.news.dlq"}
        scfg = StreamConfig(bootstrap_servers=bootstrap, input_topic=topics["input"], output_topic=topics["output"],
                            dlq_topic=topics["dlq"], partitions=cfg.partitions, group_id=f"{cfg.topic_prefix}-stream",
                            serve_app=app, session_timeout_ms=6000, heartbeat_interval_ms=2000)
        runner = StreamRunner(scfg, build_classify(scfg))
        runner.setup()
        thread = threading.Thread(target=runner.run, name="stream-runner", daemon=True)
        thread.start()
        sent_at: dict[str, float] = {}
        print(f"[demo] replaying {len(news)} news records into {topics['input']} at {cfg.rate:g}/s")
        producer = threading.Thread(target=_replay, args=(bootstrap, topics["input"], news, cfg.rate, sent_at, stop),
                                    name="replay", daemon=True)
        producer.start()
        seen = _watch(cfg, bootstrap, topics, news, sent_at)
        producer.join(timeout=30)
        summary = _summary(news, seen, sent_at, time.monotonic() - started, model_dir)
        summary["records_in"] = len(sent_at)
        summary["missing"] = summary["records_in"] - summary["records_out"] - summary["dlq"]
        if runner is not None:
            summary["stream"] = dataclasses.asdict(runner.summary) if dataclasses.is_dataclass(runner.summary) else {}
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        session = ray._private.worker._global_node.get_session_dir_path() if ray.is_initialized() else None
        summary["ray_session_dir"] = session
        summary["broker_pid"] = broker.pid if broker else None
        truth = {nid: label for nid, _, label in news}
        with open(out / "records.jsonl", "w", encoding="utf-8") as f:
            for nid, rec in seen["out"].items():
                s = rec["sentiment"]
                f.write(json.dumps({"id": nid, "true": truth.get(nid) or None, "pred": s["label"], "score": s["score"],
                                    "latency_ms": seen["latency_ms"].get(nid)}, ensure_ascii=False) + "\n")
            for nid, reason in seen["dlq"].items():
                f.write(json.dumps({"id": nid, "true": truth.get(nid) or None, "dlq": reason}, ensure_ascii=False) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2, default=str),
                                          encoding="utf-8")
        return summary
    finally:
        stop.set()
        if runner is not None:
            runner.stop()
        if thread is not None:
            thread.join(timeout=60)
        if runner is not None:
            runner.cleanup()
        if ray.is_initialized():
            try:
                serve.shutdown()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.debug("serve.shutdown failed", exc_info=True)
            ray.shutdown()
        if broker is not None:
            broker.stop()
        print("[demo] stopped: stream, Serve, Ray and broker shut down")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("finsent").setLevel(logging.INFO)
    cfg = DemoConfig(**vars(args))
    try:
        summary = run_demo(cfg)
    except KeyboardInterrupt:
        print("\n[demo] interrupted: everything was shut down")
        return 130
    except FinsentError:
        raise
    print_summary(summary)
    print(f"[demo] summary written to {Path(cfg.out) / 'summary.json'}")
    return 0 if summary["missing"] == 0 else 1
