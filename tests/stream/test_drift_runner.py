"""Drift alarm and review topic in the real runner, on the embedded broker with the tiny model: a shifted
stream puts alert records on <output>.alerts, unsure records also go to <output>.review, and every input is
still labelled exactly once."""

from __future__ import annotations

import json
import logging

import numpy as np
from stream_helpers import committed, news_records, produce, read_topic, run_until

from classifier.drift import DriftConfig
from stream.review import HEADER_REVIEW_THRESHOLD
from stream.runner import StreamRunner

#: 300 real news records become the reference; then 300 English market wires (a "broken feed")
NEWS, WIRES = 300, 300


def wire_records(n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        obj = {"id": f"wire-{i}", "title": f"wire {i}", "content": f"market update {i}: stocks, bonds and fx"}
        out.append((obj["id"].encode(), json.dumps(obj).encode()))
    return out


def test_shifted_stream_alerts_unsure_records_go_to_review_and_all_are_labelled_once(
    topics, model_dir, predictor, caplog
):
    records = news_records(NEWS, prefix="news") + wire_records(WIRES)
    texts = [f"{o['title']}\n{o['content']}" for o in (json.loads(v) for _, v in records)]
    # the random tiny model is ~37 % sure of everything: review the less sure half (median of its confidences)
    threshold = float(np.median([max(p["probabilities"].values()) for p in predictor.predict(texts)]))
    # one partition: records are labelled in the order produced, so the news come first and are the reference
    produce(topics.bootstrap, topics.input, records, partition=0)
    drift = DriftConfig(window_records=200, min_window_records=100, check_every=50, reference_records=NEWS)
    cfg = topics.config(model_dir, batch_size=50, review_threshold=threshold, drift=drift)
    runner = StreamRunner(cfg, predictor.predict)
    with caplog.at_level(logging.WARNING, logger="stream.runner"):
        run_until(runner, lambda r: r.summary.records >= len(records))

    # every input labelled exactly once
    outputs = read_topic(topics.bootstrap, topics.output, min_count=len(records))
    assert sorted(r.key for r in outputs) == sorted(k for k, _ in records)
    assert sum(committed(topics.bootstrap, topics.group, topics.input).values()) == len(records)

    # review: exactly the outputs whose top probability is below the threshold, as the same record
    out_by_key = {r.key: r for r in outputs}
    unsure = {k for k, r in out_by_key.items()
              if max(json.loads(r.value)["sentiment"]["probabilities"].values()) < threshold}
    assert 0.3 * len(records) <= len(unsure) <= 0.7 * len(records)
    review = read_topic(cfg.bootstrap_servers, f"{topics.output}.review", min_count=len(unsure))
    assert sorted(r.key for r in review) == sorted(unsure)
    for r in review:
        assert r.value == out_by_key[r.key].value
        assert dict(r.headers)[HEADER_REVIEW_THRESHOLD] == f"{threshold:g}".encode()
    assert runner.summary.review == len(unsure)

    # drift: the count window (200) and the time window (1 h, all 600 records) each fire once on the wires
    alerts = read_topic(topics.bootstrap, f"{topics.output}.alerts", min_count=2)
    assert sorted(r.key for r in alerts) == [f"{cfg.client_id}:count".encode(), f"{cfg.client_id}:time".encode()]
    by_window = {json.loads(r.value)["window"]["kind"]: json.loads(r.value) for r in alerts}
    count = by_window["count"]
    assert count["type"] == "drift_alert" and count["window"]["size"] == 200 and count["window"]["records"] == 200
    assert count["statistic"] in ("confidence_ks", "score_ks") and count["value"] >= 0.2 == count["threshold"]
    assert count["top_shifted_label"]["label"] in predictor.labels
    assert count["model_version"] == predictor.model_version
    assert count["reference"]["source"] == "stream" and count["reference"]["records"] == NEWS
    assert count["source"]["input_topic"] == topics.input and count["source"]["partitions"] == [0, 1, 2, 3]
    assert by_window["time"]["window"] == {**by_window["time"]["window"], "size": 3600.0, "unit": "seconds"}
    assert runner.summary.alerts == 2

    # the alert also shows as a WARNING line and in Prometheus
    assert sum("DRIFT ALERT count window" in m for m in caplog.messages) == 1
    value = runner.metrics.registry.get_sample_value
    assert value("finsent_stream_drift_alerts_total", {"window": "count", "statistic": count["statistic"]}) == 1.0
    assert value("finsent_stream_review_total") == float(len(unsure))
    assert value("finsent_stream_drift_window_records", {"window": "count"}) == 200.0
    assert value("finsent_stream_drift_statistic", {"window": "count", "statistic": count["statistic"]}) >= 0.2


def test_drift_and_review_off_produce_nothing_extra(topics, model_dir, predictor):
    records = news_records(60, prefix="off")
    produce(topics.bootstrap, topics.input, records)
    cfg = topics.config(model_dir, batch_size=30, review_threshold=None, drift=DriftConfig(enabled=False))
    runner = StreamRunner(cfg, predictor.predict)
    assert runner.drift is None
    run_until(runner, lambda r: r.summary.records >= len(records))
    assert len(read_topic(topics.bootstrap, topics.output, min_count=len(records))) == len(records)
    existing = runner_topics(topics.bootstrap)
    assert f"{topics.output}.review" not in existing and f"{topics.output}.alerts" not in existing
    assert (runner.summary.review, runner.summary.alerts) == (0, 0)


def runner_topics(bootstrap: str) -> set[str]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return set(consumer.topics())
    finally:
        consumer.close()
