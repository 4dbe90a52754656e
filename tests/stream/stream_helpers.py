"""Helpers of the stream tests: topics, producing, reading a topic back, committed offsets, news texts."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from classifier.paths import shared_dir
from stream.broker import EmbeddedBroker
from stream.config import StreamConfig
from stream.runner import StreamRunner

#: consumer group settings that make a join take ~3 s instead of ~23 s (see notes/kafka-broker.md)
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}


@dataclass(frozen=True)
class Topics:
    bootstrap: str
    input: str
    output: str
    dlq: str
    group: str

    def config(self, model_dir: Path | str | None, **overrides: Any) -> StreamConfig:
        values: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "input_topic": self.input,
            "output_topic": self.output,
            "dlq_topic": self.dlq,
            "group_id": self.group,
            "model_dir": str(model_dir) if model_dir is not None else None,
            "poll_timeout_ms": 200,
            "partitions": 4,
            **FAST_GROUP,
        }
        values.update(overrides)
        return StreamConfig(**values)

    def cli_args(self, model_dir: Path | str) -> list[str]:
        return [
            "--bootstrap-servers", self.bootstrap, "--input-topic", self.input, "--output-topic", self.output,
            "--dlq-topic", self.dlq, "--group-id", self.group, "--model-dir", str(model_dir),
            "--poll-timeout-ms", "200", "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "2000",
        ]


def new_topics(broker: EmbeddedBroker, name: str, partitions: int = 4) -> Topics:
    tag = re.sub(r"[^a-zA-Z0-9]+", "-", name).strip("-")[:40] + "-" + uuid.uuid4().hex[:6]
    t = Topics(broker.bootstrap, f"in-{tag}", f"out-{tag}", f"in-{tag}.dlq", f"group-{tag}")
    broker.create_topics([t.input, t.output, t.dlq], partitions=partitions)
    return t


def news_texts(n: int) -> list[str]:
    """``n`` real financial news sentences (CFSC), cycled if needed."""
    path = shared_dir() / "data" / "cfsc" / "train.txt"
    lines = [ln.split("|||", 1)[1] for ln in path.read_text(encoding="utf-8").splitlines() if "|||" in ln]
    return [lines[i % len(lines)] for i in range(n)]


def news_records(n: int, prefix: str = "n") -> list[tuple[bytes, bytes]]:
    """(key, JSON value) pairs with ids ``<prefix>-<i>``, title + content + a pass-through field."""
    out = []
    for i, text in enumerate(news_texts(n)):
        obj = {"id": f"{prefix}-{i}", "title": f"快讯{i}", "content": text, "source": "test", "extra": {"i": i}}
        out.append((obj["id"].encode(), json.dumps(obj, ensure_ascii=False).encode()))
    return out


def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    *,
    partition: int | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    try:
        for i, (key, value) in enumerate(records):
            part = partition if partition is not None else i % 4
            producer.send(topic, key=key, value=value, partition=part, headers=headers or [])
        producer.flush()
    finally:
        producer.close()


def read_topic(bootstrap: str, topic: str, *, min_count: int, timeout_s: float = 60.0, settle_s: float = 0.5) -> list:
    """Every record of ``topic``: reads until ``min_count`` arrived and every partition is read up to its high
    watermark, then ``settle_s`` more seconds for late extras (duplicates would show up there)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        deadline = time.monotonic() + timeout_s
        settle_until = None
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
            caught_up = all(
                consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp) for tp in tps
            )
            if len(records) >= min_count and caught_up:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
        return records
    finally:
        consumer.close(autocommit=False)


def count_topic(bootstrap: str, topic: str) -> int:
    """Records in ``topic`` now."""
    return len(read_topic(bootstrap, topic, min_count=0, timeout_s=10.0, settle_s=0.0))


def committed(bootstrap: str, group: str, topic: str, partitions: int = 4) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        consumer.close(autocommit=False)


def sentiment_without_time(value: bytes) -> dict:
    """An output value with ``classified_at`` removed: what must be equal between duplicates."""
    obj = json.loads(value)
    obj["sentiment"] = {k: v for k, v in obj["sentiment"].items() if k != "classified_at"}
    return obj


def run_until(runner: StreamRunner, done=None, timeout_s: float = 120.0) -> None:
    """Run ``runner`` in a thread until ``done(runner)`` holds, then stop it and wait for it to close.
    ``done=None``: wait for the runner to stop by itself (``idle_exit_s``); fail after ``timeout_s``."""
    stopped_by_itself = done is None
    if done is None:
        def done(r: StreamRunner) -> bool:
            return not thread.is_alive()

    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as e:  # surfaced in the test thread below
            errors.append(e)

    thread = threading.Thread(target=target, name="stream-runner", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not done(runner) and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
    finally:
        runner.stop()
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    assert not thread.is_alive(), "runner did not stop"
    if stopped_by_itself:
        assert time.monotonic() < deadline, f"runner did not stop by itself within {timeout_s} s"
    else:
        assert done(runner), f"timed out: {runner.summary}"
