"""The embedded broker wrapper and the command-line tools (broker, produce, tail)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stream_helpers import new_topics, read_topic

from stream.broker import EmbeddedBroker, tansu_binary
from stream.cli import main
from stream.errors import BrokerError
from stream.tools import display_width, fit, format_row, read_news_file, tail_row

REPO = Path(__file__).resolve().parents[2]


def test_broker_is_up_on_loopback_with_its_own_cluster_id(broker):
    from kafka import KafkaAdminClient

    host, port = broker.bootstrap.split(":")
    assert host == "127.0.0.1" and int(port) == broker.port and broker.running
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        assert admin.describe_cluster()["cluster_id"] == broker.cluster_id
    finally:
        admin.close()


def test_a_taken_port_is_detected_not_mistaken_for_our_broker(broker):
    other = EmbeddedBroker(port=broker.port, stop_timeout_s=1)
    with pytest.raises(BrokerError, match="served by another broker"):
        other.start()
    assert not other.running and other.pid is None  # the losing process was killed
    assert broker.running


def test_start_stop_and_context_manager():
    with EmbeddedBroker(stop_timeout_s=5) as b:
        pid = b.pid
        assert b.running and repr(b) == f"EmbeddedBroker(127.0.0.1:{b.port})"
    assert not b.running and repr(b) == "EmbeddedBroker(stopped)"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(BrokerError, match="not running"):
        _ = b.bootstrap


def test_tansu_binary_is_found_in_the_package():
    path = tansu_binary()
    assert path.name == "tansu" and os.access(path, os.X_OK)


def test_broker_command_prints_bootstrap_and_stops_on_ctrl_c(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "broker", "--port", "0", "--topics", "a,b", "--partitions", "2"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "Kafka-protocol broker (Tansu, in-memory) at 127.0.0.1:" in line, proc.stderr.read()
        bootstrap = line.rsplit(" at ", 1)[1].strip()
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        assert {"a", "b"} <= consumer.topics() and consumer.partitions_for_topic("a") == {0, 1}
        consumer.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


# ---------------------------------------------------------------------------------------------- produce
def test_read_news_file_formats(tmp_path):
    labelled = tmp_path / "news.txt"
    labelled.write_text("利多|||公司业绩大增\n\n没有标签的一行\n", encoding="utf-8")
    recs = list(read_news_file(labelled))
    assert [r.key for r in recs] == [b"news-1", b"news-3"]  # stable ids from file stem and line number
    assert json.loads(recs[0].value) == {"id": "news-1", "content": "公司业绩大增", "gold_label": "利多"}
    assert json.loads(recs[1].value) == {"id": "news-3", "content": "没有标签的一行"}

    jsonl = tmp_path / "news.jsonl"
    jsonl.write_bytes('{"id": 7, "title": "央行降准"}\n{"id": "x", \n'.encode())
    recs = list(read_news_file(jsonl))
    assert recs[0].key == b"7" and json.loads(recs[0].value) == {"id": 7, "title": "央行降准"}
    assert recs[1].key is None and recs[1].value == b'{"id": "x", '  # sent as is: the DLQ will say why


def test_produce_then_tail_through_the_cli(broker, request, tmp_path, capsys):
    topics = new_topics(broker, request.node.name, partitions=1)
    path = tmp_path / "feed.txt"
    path.write_text("".join(f"利多|||第{i}条新闻\n" for i in range(20)), encoding="utf-8")
    started = time.monotonic()
    assert main(["produce", "--file", str(path), "--topic", topics.input, "--bootstrap-servers", broker.bootstrap,
                 "--rate", "100", "--limit", "15"]) == 0
    assert time.monotonic() - started >= 0.13  # 15 records at 100/s: paced
    assert "produced 15 records" in capsys.readouterr().out
    got = read_topic(broker.bootstrap, topics.input, min_count=15)
    assert [r.key for r in got] == [f"feed-{i}".encode() for i in range(1, 16)]

    # a labelled record as the stream writes it, then tail shows it as a table row
    value = {"id": "n1", "title": "央行降准", "content": "释放流动性", "sentiment": {"label": "利多", "score": 0.25}}
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    producer.send(topics.output, key=b"n1", value=json.dumps(value, ensure_ascii=False).encode())
    producer.flush()
    producer.close()
    assert main(["tail", "--topic", topics.output, "--bootstrap-servers", broker.bootstrap, "--limit", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["where", "key", "label", "score", "text"]
    assert lines[2].split() == [f"{r}" for r in ("0:0", "n1", "利多", "+0.250", "央行降准", "释放流动性")]


def test_table_cells_fit_cjk_widths():
    assert display_width("利多ab") == 6
    assert fit("利多ab", 8) == "利多ab  "
    cut = fit("央行宣布全面降准", 9)
    assert cut == "央行宣布…" and display_width(cut) == 9
    row = format_row(tail_row(1, 42, b"k", b"not json"))
    assert row.split() == ["1:42", "k", "-", "-", "not", "json"]
