"""Raw predictor throughput vs the stream end to end (produce → labelled record readable), and the cost of
the drift alarm + review routing, in one run.

    python bench/stream_throughput.py              # tiny random model
    ... bench/stream_throughput.py --model runs/finetune/best --records 2000              # a real model
    ... bench/stream_throughput.py --records 300 --latency-records 50 --drift-rounds 1    # a quick check

Phases:
1. raw: ``Predictor.predict`` on the texts, cut into chunks of ``--batch-size`` (what one poll hands the
   classifier), in this process — before the stream phases and again after them; the ratio uses the mean.
2. stream, throughput: a ``finsent stream`` worker (a separate process, already joined and warmed up) labels
   ``--records`` records produced as fast as possible; throughput = records / (last output read − first
   send). Its latencies include queueing behind the backlog.
3. stream, latency: ``--latency-records`` records produced at ``--latency-load`` × the phase-2 throughput;
   p50/p99 of send → output read.
4. drift + review cost: ``--drift-rounds`` rounds of two fresh workers on fresh topics, one with the drift
   alarm and review routing off, one with them on (order alternating between rounds), ``--records`` records
   each; compared by end-to-end throughput and by worker throughput (records / the worker's summed batch
   time, which leaves out group joins and the producer: the steadier measure on a busy machine). The issue's
   target: on/off >= 0.95.

Phases 2 and 3 run with drift and review ON, as ``finsent stream`` does by default. The review threshold is
the ``--review-share`` quantile of the model's top probabilities on these texts (so about that share of records
is also produced to the review topic, as with a trained model at the default 0.5; the tiny random model is
~37 % sure of everything, so the default threshold would send it all) unless ``--review-threshold`` is given.

Starts an embedded broker unless ``--bootstrap-servers`` is given. Run it inside a network namespace on
shared machines (see docs/development.md). The other load on the machine shows in the numbers: the load average
is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, metavar="DIR", help="finsent model directory (default: tiny random)")
    p.add_argument("--data", default=None, help="label|||text file of texts (default: <shared>/data/cfsc/train.txt)")
    p.add_argument("--records", type=int, default=2000, help="records of the throughput phase")
    p.add_argument("--latency-records", type=int, default=300, help="records of the paced latency phase")
    p.add_argument("--latency-load", type=float, default=0.5, help="pace of the latency phase, × throughput")
    p.add_argument("--batch-size", type=int, default=128, help="stream batch_size (records per poll)")
    p.add_argument("--predict-batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="CPU threads of the predictor, in both phases (default: torch's); 1 is far faster on an "
                        "oversubscribed machine")
    p.add_argument("--bootstrap-servers", default=None, help="use this Kafka instead of an embedded broker")
    p.add_argument("--drift-rounds", type=int, default=2,
                   help="rounds of the drift+review on/off comparison (two workers each); 0 = skip phase 4")
    p.add_argument("--review-share", type=float, default=0.1,
                   help="share of records the review threshold is set to catch (see above)")
    p.add_argument("--review-threshold", type=float, default=None,
                   help="review threshold to use instead of the --review-share quantile")
    return p.parse_args(argv)


def load_texts(path: Path | None, n: int) -> list[str]:
    from classifier.paths import shared_dir

    p = path or shared_dir() / "data" / "cfsc" / "train.txt"
    lines = [ln.split("|||", 1)[-1] for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [lines[i % len(lines)] for i in range(n)]


def raw_throughput(predictor, texts: list[str], batch_size: int) -> float:
    predictor.predict(texts[:batch_size])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        predictor.predict(texts[i : i + batch_size])
    return len(texts) / (time.perf_counter() - started)


class OutputReader(threading.Thread):
    """Reads the output topic (no group) in a background thread, noting when each key first became readable,
    so that reading overlaps producing and the latencies are not inflated by the benchmark itself."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="output-reader", daemon=True)
        from kafka import KafkaConsumer
        from kafka.structs import TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        self.seen: dict[bytes, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for batch in self.consumer.poll(timeout_ms=50).values():
                now = time.time()
                for r in batch:
                    self.seen.setdefault(r.key, now)

    def wait_for(self, keys: set[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not keys <= self.seen.keys():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(keys - self.seen.keys())} outputs missing after {timeout_s:.0f} s")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        self.consumer.close()


def produce(producer, topic: str, texts: list[str], tag: str, rate: float | None) -> dict[bytes, float]:
    """Send one JSON news record per text (at ``rate``/s if given); returns key → send time."""
    sent: dict[bytes, float] = {}
    started = time.monotonic()
    for i, text in enumerate(texts):
        if rate is not None:
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        key = f"{tag}-{i}".encode()
        value = json.dumps({"id": key.decode(), "content": text}, ensure_ascii=False).encode()
        sent[key] = time.time()
        producer.send(topic, key=key, value=value)
        if rate is not None:
            producer.flush()  # paced: each record leaves now, not when the linger batch fills
    producer.flush()
    return sent


def bookkeeping_us(predictions: list[dict], batch_size: int, review_threshold: float, repeat: int = 10) -> float:
    """Microseconds per record of the runner's drift + review work (DriftMonitor.update per batch, the review
    check per record) on these predictions, fed ``repeat`` times at 10 records/s of simulated time."""
    from classifier.drift import DriftConfig, DriftMonitor
    from stream.review import needs_review

    monitor = DriftMonitor(DriftConfig())
    n = 0
    started = time.perf_counter()
    for r in range(repeat):
        for i in range(0, len(predictions), batch_size):
            batch = predictions[i : i + batch_size]
            sum(needs_review(p, review_threshold) for p in batch)
            monitor.update(batch, now=(r * len(predictions) + i) / 10.0)
            n += len(batch)
    return 1e6 * (time.perf_counter() - started) / n


def worker_rate(log_text: str) -> tuple[float, int, int]:
    """(records / summed batch seconds, records, review records) from a worker's per-batch log lines."""
    rows = re.findall(r": (\d+) records → (\d+) labelled \((\d+) review\), \d+ dlq in (\d+) ms", log_text)
    records = sum(int(r[0]) for r in rows)
    busy_ms = sum(int(r[3]) for r in rows)
    return (1000.0 * records / busy_ms if busy_ms else float("nan")), records, sum(int(r[2]) for r in rows)


def worker_time_split(log_text: str) -> dict[str, float]:
    """Share of the worker's batch time in classify / acks / commit, from its per-batch log lines."""
    rows = re.findall(r"in (\d+) ms \(classify (\d+), acks (\d+), commit (\d+)\)", log_text)
    total = sum(int(r[0]) for r in rows)
    if not total:
        return {}
    return {name: sum(int(r[i]) for r in rows) / total for i, name in ((1, "classify"), (2, "acks"), (3, "commit"))}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_worker(bootstrap: str, topic_in: str, topic_out: str, group: str, model_dir: str,
                 args: argparse.Namespace, settings: list[str], log_path: Path) -> subprocess.Popen:
    """A ``finsent stream`` worker process (key=value settings), its output going to ``log_path``."""
    cmd = [
        sys.executable, "-m", "stream", "stream", f"bootstrap_servers={bootstrap}", f"input_topic={topic_in}",
        f"output_topic={topic_out}", f"group_id={group}", f"model_dir={model_dir}",
        f"batch_size={args.batch_size}", f"predict_batch_size={args.predict_batch_size}",
        "session_timeout_ms=6000", "heartbeat_interval_ms=2000", "poll_timeout_ms=100", *settings,
    ]
    if args.torch_threads is not None:
        cmd.append(f"torch_threads={args.torch_threads}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()


def new_topics(bootstrap: str, partitions: int, name: str) -> tuple[str, str, str]:
    from stream.admin import ensure_topics

    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    topic_in, topic_out, group = f"bench-in-{tag}", f"bench-out-{tag}", f"bench-{tag}"
    ensure_topics({"bootstrap_servers": [bootstrap]}, [topic_in, topic_out, topic_in + ".dlq"], partitions=partitions)
    return topic_in, topic_out, group


def drift_run(bootstrap: str, producer, texts: list[str], model_dir: str, args: argparse.Namespace,
              settings: list[str], log_path: Path, name: str) -> dict[str, float]:
    """One worker on fresh topics: end-to-end and worker throughput over ``texts`` (after a warm-up record)."""
    topic_in, topic_out, group = new_topics(bootstrap, args.partitions, name)
    worker = start_worker(bootstrap, topic_in, topic_out, group, model_dir, args, settings, log_path)
    reader = OutputReader(bootstrap, topic_out)
    reader.start()
    try:
        reader.wait_for(set(produce(producer, topic_in, texts[:1], f"warm-{name}", None)), timeout_s=120)
        sent = produce(producer, topic_in, texts, f"{name}", None)
        reader.wait_for(set(sent), timeout_s=600)
        e2e = len(sent) / (max(reader.seen[k] for k in sent) - min(sent.values()))
    finally:
        stop_worker(worker)
        reader.close()
    rate, records, review = worker_rate(log_path.read_text(encoding="utf-8", errors="replace"))
    alerts = log_path.read_text(encoding="utf-8", errors="replace").count("DRIFT ALERT")
    return {"e2e": e2e, "worker": rate, "records": records, "review": review, "alerts": alerts}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from kafka import KafkaProducer

    from stream.broker import EmbeddedBroker

    tmp = Path(tempfile.mkdtemp(prefix="finsent-bench-"))
    model_dir = args.model
    if model_dir is None:
        from classifier.testing import make_tiny_model_dir

        model_dir = str(make_tiny_model_dir(tmp / "tiny"))
    texts = load_texts(Path(args.data) if args.data else None, args.records + args.latency_records)

    print(f"model {model_dir}; {len(texts)} texts, batch_size {args.batch_size}, torch threads "
          f"{args.torch_threads or 'default'}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
          flush=True)
    from classifier.predict import Predictor

    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    predictor = Predictor.from_dir(model_dir, device="cpu", batch_size=args.predict_batch_size)
    raw_before = raw_throughput(predictor, texts[: args.records], args.batch_size)
    print(f"raw predictor: {raw_before:,.0f} texts/s", flush=True)
    review_threshold = args.review_threshold
    if review_threshold is None:
        import numpy as np

        top = [max(p["probabilities"].values()) for p in predictor.predict(texts[: args.records])]
        review_threshold = float(np.quantile(top, args.review_share))
    cost_us = bookkeeping_us(predictor.predict(texts[: args.records]), args.batch_size, review_threshold)
    print(f"drift+review bookkeeping in process: {cost_us:.1f} µs/record = {cost_us * raw_before / 1e6:.1%} of the "
          f"raw predictor's {1e6 / raw_before:,.0f} µs/record", flush=True)
    on = [f"review_threshold={review_threshold!r}"]  # drift alarm: on by default
    off = ["review_threshold=null", "drift.enabled=false"]
    print(f"drift+review on: drift defaults, review_threshold={review_threshold:.6g} "
          f"(~{args.review_share:.0%} of records)", flush=True)

    broker = None if args.bootstrap_servers else EmbeddedBroker().start()
    bootstrap = args.bootstrap_servers or broker.bootstrap  # type: ignore[union-attr]
    topic_in, topic_out, group = new_topics(bootstrap, args.partitions, "main")
    log_path = tmp / "stream.log"
    worker = start_worker(bootstrap, topic_in, topic_out, group, model_dir, args, on, log_path)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    reader = OutputReader(bootstrap, topic_out)
    reader.start()
    tag = uuid.uuid4().hex[:6]
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    try:
        try:
            warm = produce(producer, topic_in, texts[:1], f"warm-{tag}", None)  # joined + model loaded
            reader.wait_for(set(warm), timeout_s=120)

            sent = produce(producer, topic_in, texts[: args.records], f"tp-{tag}", None)
            reader.wait_for(set(sent), timeout_s=600)
            first_send = min(sent.values())
            last_read = max(reader.seen[k] for k in sent)
            e2e = len(sent) / (last_read - first_send)
            backlog_lat = sorted(reader.seen[k] - t for k, t in sent.items())

            rate = args.latency_load * e2e
            paced = produce(producer, topic_in, texts[args.records :], f"lat-{tag}", rate)
            reader.wait_for(set(paced), timeout_s=600)
            lat = sorted(reader.seen[k] - t for k, t in paced.items())
        finally:
            stop_worker(worker)
            reader.close()
        for r in range(args.drift_rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                run = drift_run(bootstrap, producer, texts[: args.records], model_dir, args,
                                on if mode == "on" else off, tmp / f"drift-{r}-{mode}.log", f"{mode}{r}-{tag}")
                runs[mode].append(run)
                print(f"round {r + 1} drift+review {mode:>3}: {run['e2e']:,.0f} records/s end to end, "
                      f"{run['worker']:,.0f} records/s worker; {run['review']} to review, {run['alerts']} alerts",
                      flush=True)
    finally:
        producer.close()
        if broker is not None:
            broker.stop()
    # measured again: on a shared machine the load changes, and the ratio should compare like with like
    raw_after = raw_throughput(predictor, texts[: args.records], args.batch_size)
    raw = (raw_before + raw_after) / 2

    ms = 1000.0
    print(f"raw predictor again: {raw_after:,.0f} texts/s (mean of both: {raw:,.0f})")
    print(f"stream end-to-end: {e2e:,.0f} records/s over {len(sent)} records "
          f"(backlog latency p50 {percentile(backlog_lat, 50) * ms:.0f} ms, p99 {percentile(backlog_lat, 99) * ms:.0f} ms)")
    print(f"stream latency at {rate:,.0f} records/s ({args.latency_load:.0%} of throughput): "
          f"p50 {percentile(lat, 50) * ms:.1f} ms, p99 {percentile(lat, 99) * ms:.1f} ms over {len(lat)} records")
    print(f"ratio end-to-end / raw: {e2e / raw:.2f} (aim >= 0.80)")
    split = worker_time_split(log_path.read_text(encoding="utf-8", errors="replace"))
    if split:
        print("worker time per batch: " + ", ".join(f"{k} {v:.0%}" for k, v in split.items())
              + "  (classify includes decode, encode and send)")
    if args.drift_rounds:
        for measure in ("e2e", "worker"):
            mean_on = statistics.fmean(x[measure] for x in runs["on"])
            mean_off = statistics.fmean(x[measure] for x in runs["off"])
            print(f"drift+review on/off, {'end to end' if measure == 'e2e' else 'worker'}: {mean_on:,.0f} / "
                  f"{mean_off:,.0f} records/s = {mean_on / mean_off:.3f} (target >= 0.95; "
                  f"{args.drift_rounds} round(s) of {args.records} records)")
    print(f"worker logs: {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
