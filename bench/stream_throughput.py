"""Raw predictor throughput vs the stream end to end (produce → labelled record readable), in one run.

    cd /work/main && mkdir -p /tmp/stream-tmp && unshare -n sh -c 'ip link set lo up && \\
        TMPDIR=/tmp/stream-tmp .venv/bin/python bench/stream_throughput.py'              # tiny random model
    ... bench/stream_throughput.py --model runs/finetune/best --records 2000              # a real model

Phases:
1. raw: ``Predictor.predict`` on the texts, cut into chunks of ``--batch-size`` (what one poll hands the
   classifier), in this process — before the stream phases and again after them; the ratio uses the mean.
2. stream, throughput: a ``finsent stream`` worker (a separate process, already joined and warmed up) labels
   ``--records`` records produced as fast as possible; throughput = records / (last output read − first
   send). Its latencies include queueing behind the backlog.
3. stream, latency: ``--latency-records`` records produced at ``--latency-load`` × the phase-2 throughput;
   p50/p99 of send → output read.

Starts an embedded broker unless ``--bootstrap-servers`` is given. Run it inside a network namespace on
shared machines (see the README, "Stream"). The other load on the machine shows in the numbers: the load average
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


def worker_time_split(log_text: str) -> dict[str, float]:
    """Share of the worker's batch time in classify / acks / commit, from its per-batch log lines."""
    rows = re.findall(r"in (\d+) ms \(classify (\d+), acks (\d+), commit (\d+)\)", log_text)
    total = sum(int(r[0]) for r in rows)
    if not total:
        return {}
    return {name: sum(int(r[i]) for r in rows) / total for i, name in ((1, "classify"), (2, "acks"), (3, "commit"))}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


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

    broker = None if args.bootstrap_servers else EmbeddedBroker().start()
    bootstrap = args.bootstrap_servers or broker.bootstrap  # type: ignore[union-attr]
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out, group = f"bench-in-{tag}", f"bench-out-{tag}", f"bench-{tag}"
    from stream.admin import ensure_topics

    ensure_topics({"bootstrap_servers": [bootstrap]}, [topic_in, topic_out, topic_in + ".dlq"],
                  partitions=args.partitions)
    log_path = tmp / "stream.log"
    cmd = [
        sys.executable, "-m", "stream", "stream", "--bootstrap-servers", bootstrap, "--input-topic", topic_in,
        "--output-topic", topic_out, "--group-id", group, "--model-dir", model_dir,
        "--batch-size", str(args.batch_size), "--predict-batch-size", str(args.predict_batch_size),
        "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "2000", "--poll-timeout-ms", "100",
    ]
    if args.torch_threads is not None:
        cmd += ["--torch-threads", str(args.torch_threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("wb") as log:
        worker = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    reader = OutputReader(bootstrap, topic_out)
    reader.start()
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
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        producer.close()
        reader.close()
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
    print(f"worker log: {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
