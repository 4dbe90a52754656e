"""Delivery under failure, with real worker processes: SIGKILL mid-run, SIGTERM mid-batch, two workers in one
group. The workers run the real CLI (``python -m stream stream ...``) or tests/stream/slow_worker.py; restarts
run in this process (a runner that drains the topic and exits when idle)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from stream_helpers import (
    committed,
    count_topic,
    news_records,
    produce,
    read_topic,
    run_until,
    sentiment_without_time,
)

from stream.runner import StreamRunner

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def start(args: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout_s: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def labelled_in_log(log_path: Path) -> int:
    """Records the workers logging to ``log_path`` report as labelled (one log line per batch)."""
    return sum(int(n) for n in re.findall(r"records → (\d+) labelled", log_path.read_text(encoding="utf-8")))


def stream_cli(topics, model_dir, *extra: str) -> list[str]:
    return ["-m", "stream", "stream", *topics.cli_args(model_dir), *extra]


def assert_every_input_labelled(outputs, records) -> None:
    """Every input has an output; any duplicate has the same key and the same content."""
    by_key = defaultdict(list)
    for r in outputs:
        by_key[r.key].append(sentiment_without_time(r.value))
    assert set(by_key) == {k for k, _ in records}
    for key, copies in by_key.items():
        assert all(c == copies[0] for c in copies), key


def test_sigkill_mid_run_then_restart_loses_nothing(topics, model_dir, predictor, tmp_path):
    records = news_records(1200, prefix="kill")
    produce(topics.bootstrap, topics.input, records)
    first = start(stream_cli(topics, model_dir, "--batch-size", "8"), tmp_path / "first.log")
    try:
        wait_for(lambda: labelled_in_log(tmp_path / "first.log") >= 300, 90, first, "300 outputs")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    at_kill = count_topic(topics.bootstrap, topics.output)
    done_at_kill = sum(committed(topics.bootstrap, topics.group, topics.input).values())
    assert 300 <= at_kill < 1200, "the kill did not land mid-run"
    assert done_at_kill <= at_kill  # never committed past what was produced

    restart = StreamRunner(topics.config(model_dir, batch_size=64), predictor.predict)
    run_until(restart, lambda r: r.summary.records >= 1200 - done_at_kill)
    assert restart.summary.records == 1200 - done_at_kill
    outputs = read_topic(topics.bootstrap, topics.output, min_count=1200)
    assert_every_input_labelled(outputs, records)
    assert len(outputs) - 1200 == at_kill - done_at_kill  # exactly the uncommitted outputs came again
    assert sum(committed(topics.bootstrap, topics.group, topics.input).values()) == 1200


def test_sigterm_finishes_the_in_flight_batch(topics, model_dir, predictor, tmp_path):
    records = news_records(100, prefix="term")
    produce(topics.bootstrap, topics.input, records, partition=0)
    marker = tmp_path / "batches.txt"
    cfg = topics.config(model_dir, batch_size=40, predict_batch_size=64)  # one classifier call per batch
    fields = {k: getattr(cfg, k) for k in ("bootstrap_servers", "input_topic", "output_topic", "dlq_topic",
                                          "group_id", "model_dir", "batch_size", "predict_batch_size",
                                          "poll_timeout_ms", "session_timeout_ms", "heartbeat_interval_ms")}
    args = [str(HERE / "slow_worker.py"), "--config", json.dumps(fields), "--delay", "2", "--marker", str(marker)]
    worker = start(args, tmp_path / "worker.log")
    wait_for(lambda: marker.is_file() and marker.read_text().strip() != "", 60, worker, "the first batch")
    worker.send_signal(signal.SIGTERM)  # while the first batch is being classified
    assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()
    log = (tmp_path / "worker.log").read_text()
    assert marker.read_text().splitlines() == ["batch 40"]  # finished that batch, started no other
    assert '"records": 40' in log
    assert count_topic(topics.bootstrap, topics.output) == 40  # the in-flight batch was produced...
    assert committed(topics.bootstrap, topics.group, topics.input)[0] == 40  # ...and committed

    restart = StreamRunner(topics.config(model_dir, idle_exit_s=1.5), predictor.predict)
    run_until(restart)  # drains the rest and stops by itself once idle and caught up
    assert restart.summary.records == 60
    outputs = read_topic(topics.bootstrap, topics.output, min_count=100)
    assert len(outputs) == 100 and len({r.key for r in outputs}) == 100  # nothing lost, nothing twice


def test_two_workers_split_four_partitions_and_label_each_record_once(topics, model_dir, tmp_path):
    log_path = tmp_path / "workers.log"
    proc = start(stream_cli(topics, model_dir, "--workers", "2", "--batch-size", "32"), log_path)
    pattern = re.compile(r"worker (\d): assigned partitions " + re.escape(topics.input) + r"\[([\d, ]*)\]")

    def split() -> dict[int, list[int]]:
        latest: dict[int, list[int]] = {}
        for w, parts in pattern.findall(log_path.read_text()):
            latest[int(w)] = [int(p) for p in parts.split(",") if p.strip()]
        return latest

    try:
        wait_for(lambda: sorted(len(v) for v in split().values()) == [2, 2], 90, proc, "a 2+2 assignment")
        assert sorted(split()[0] + split()[1]) == [0, 1, 2, 3]
        records = news_records(1000, prefix="two")
        produce(topics.bootstrap, topics.input, records)
        wait_for(lambda: labelled_in_log(log_path) >= 1000, 90, proc, "1000 outputs")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = log_path.read_text()
    assert code == 0, text
    outputs = read_topic(topics.bootstrap, topics.output, min_count=1000)
    assert len(outputs) == 1000 and {r.key for r in outputs} == {k for k, _ in records}  # each once
    closed = {int(w): int(n) for w, n in re.findall(r"worker (\d): closed after (\d+) records", text)}
    assert set(closed) == {0, 1} and all(n > 0 for n in closed.values()) and sum(closed.values()) == 1000
