"""Corrections: parsing, joining with the labelled records, latest-wins, and the corrections DLQ on the embedded
broker (each bad correction reaches the DLQ once, with its reason); `finsent learn` with too few corrections
stops saying what to do."""

from __future__ import annotations

import json

import pytest
from stream_helpers import produce, read_topic

from classifier.labels import DEFAULT_LABELS
from stream.codec import (
    HEADER_ERROR,
    HEADER_ERROR_MESSAGE,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_TOPIC,
    InputRecord,
    header,
)
from stream.corrections import (
    BadCorrectionError,
    UnknownLabelError,
    collect_corrections,
    news_text,
    parse_correction,
    triage,
)
from stream.errors import BadJsonError

LABELS = DEFAULT_LABELS


def rec(value: bytes | None, offset: int = 0, partition: int = 0, key: bytes | None = None, ts: int | None = None,
        topic: str = "c") -> InputRecord:
    return InputRecord(topic=topic, partition=partition, offset=offset, key=key, value=value, timestamp_ms=ts)


def output_value(news_id: str, title: str, content: str, label: str = "其他", version: str = "tiny@1") -> bytes:
    sentiment = {"label": label, "probabilities": {}, "score": 0.0, "model_version": version}
    return json.dumps({"id": news_id, "title": title, "content": content, "source": "t", "sentiment": sentiment},
                      ensure_ascii=False).encode()


# ---------------------------------------------------------------------------------------------- pure
def test_parse_correction_accepts_ids_and_labels_and_names_each_problem():
    c = parse_correction(rec(b'{"id": 42, "label": " \xe5\x88\xa9\xe7\xa9\xba ", "user": "ann"}'), LABELS)
    assert (c.id, c.label, c.extra) == ("42", "利空", {"user": "ann"})
    cases = {
        b"not json at all": (BadJsonError, "not JSON"),
        b"": (BadJsonError, "empty"),
        b"\xff\xfe{}": (BadJsonError, "not valid UTF-8"),
        b'["n-1", "\xe5\x88\xa9\xe7\xa9\xba"]': (BadJsonError, "JSON list, not an object"),
        b'{"label": "\xe5\x88\xa9\xe7\xa9\xba"}': (BadCorrectionError, 'no usable "id"'),
        b'{"id": true, "label": "x"}': (BadCorrectionError, 'no usable "id"'),
        b'{"id": "n-1"}': (BadCorrectionError, 'no usable "label"'),
        b'{"id": "n-1", "label": "bullish"}': (UnknownLabelError, "label 'bullish'"),
    }
    for value, (cls, words) in cases.items():
        with pytest.raises(cls, match=words.replace("(", r"\(")):
            parse_correction(rec(value), LABELS)
    assert {cls.code for cls, _ in cases.values()} == {"bad_json", "bad_correction", "unknown_label"}


def test_news_text_joins_title_and_content_as_the_stream_classified_them():
    t = news_text(rec(output_value("n-1", " 快讯 ", "公司 发布利好"), key=b"n-1", topic="out"))
    assert (t.id, t.text, t.predicted_label, t.model_version, t.where) == ("n-1", "快讯\n公司 发布利好", "其他",
                                                                         "tiny@1", "out[0]@0")
    assert news_text(rec(b"plain", key=b"k")) is None and news_text(rec(output_value("x", "", ""), key=b"x")) is None


def test_triage_latest_valid_correction_of_an_id_wins_and_unknown_ids_are_dead():
    texts = {i: news_text(rec(output_value(i, "t", f"text {i}"), key=i.encode())) for i in ("a", "b")}
    records = [
        rec(b'{"id": "a", "label": "\xe5\x88\xa9\xe5\xa4\x9a"}', offset=0, ts=100),          # a: 利多
        rec(b'{"id": "b", "label": "\xe5\x85\xb6\xe4\xbb\x96"}', offset=1, ts=101),          # b: 其他
        rec(b'{"id": "a", "label": "\xe5\x88\xa9\xe7\xa9\xba"}', offset=2, ts=102),          # a: 利空 (later)
        rec(b'{"id": "a", "label": "nope"}', offset=3, ts=103),                              # later but invalid
        rec(b'{"id": "zz", "label": "\xe5\x88\xa9\xe7\xa9\xba"}', offset=4, ts=104),         # unknown id
        rec(b'{"id": "b", "label": "\xe5\x88\xa9\xe5\xa4\x9a"}', offset=0, partition=1, ts=50),  # earlier, other part
    ]
    t = triage(records, texts, LABELS)
    assert [(c.id, c.label, c.text) for c in t.corrections] == [("b", "其他", "t\ntext b"), ("a", "利空", "t\ntext a")]
    assert t.superseded == 2 and t.read == 6
    assert t.dead_counts() == {"unknown_label": 1, "unknown_id": 1}
    assert t.corrections[1].predicted_label == "其他" and t.corrections[1].where == "c[0]@2"


# ---------------------------------------------------------------------------------------------- Kafka
def test_bad_corrections_go_to_the_dlq_once_with_their_reason(broker, topics):
    review = f"{topics.output}.review"
    corrections, dlq = f"{topics.output}.corrections", f"{topics.output}.corrections.dlq"
    broker.create_topics([review, corrections, dlq], partitions=2)
    produce(topics.bootstrap, topics.output,
            [(f"n-{i}".encode(), output_value(f"n-{i}", "标题", f"内容{i}")) for i in range(4)])
    produce(topics.bootstrap, review, [(b"r-1", output_value("r-1", "待审", "只在审核主题"))], partition=0)
    posts = [
        (b"n-0", '{"id": "n-0", "label": "利多"}'.encode()),
        (b"r-1", '{"id": "r-1", "label": "利空", "user": "ann"}'.encode()),
        (b"x", b"{oops"),
        (b"n-9", '{"id": "n-9", "label": "利多"}'.encode()),
        (b"n-1", b'{"id": "n-1", "label": "bullish"}'),
    ]
    produce(topics.bootstrap, corrections, posts, partition=0)
    common = {"bootstrap_servers": [topics.bootstrap]}
    kw = dict(corrections_topic=corrections, dlq_topic=dlq, text_topics=[review, topics.output], labels=LABELS,
              group_id=f"{topics.group}-learn", timeout_s=30)

    first = collect_corrections(common, **kw)
    assert [(c.id, c.label, c.text, c.extra) for c in first.triage.corrections] == [
        ("n-0", "利多", "标题\n内容0", {}), ("r-1", "利空", "待审\n只在审核主题", {"user": "ann"})]
    assert (first.dlq_sent, first.dlq_known) == (3, 0)
    assert first.text_records == {review: 1, topics.output: 4}
    dead = read_topic(topics.bootstrap, dlq, min_count=3)
    by_offset = {int(header(r.headers, HEADER_SOURCE_OFFSET)): r for r in dead}
    assert sorted(by_offset) == [2, 3, 4]
    assert [header(by_offset[o].headers, HEADER_ERROR) for o in (2, 3, 4)] == ["bad_json", "unknown_id",
                                                                              "unknown_label"]
    assert "not JSON" in header(by_offset[2].headers, HEADER_ERROR_MESSAGE)
    assert "no labelled record has id 'n-9'" in header(by_offset[3].headers, HEADER_ERROR_MESSAGE)
    assert "label 'bullish'" in header(by_offset[4].headers, HEADER_ERROR_MESSAGE)
    assert all(header(r.headers, HEADER_SOURCE_TOPIC) == corrections for r in dead)
    assert by_offset[2].value == b"{oops" and by_offset[2].key == b"x"  # the original record, as posted

    # a later correction of n-0 wins; the dead letters of the first pass are not sent again
    produce(topics.bootstrap, corrections, [(b"n-0", '{"id": "n-0", "label": "利空"}'.encode()), (b"y", b"[1]")],
            partition=0)
    second = collect_corrections(common, **kw)
    assert [(c.id, c.label) for c in second.triage.corrections] == [("r-1", "利空"), ("n-0", "利空")]
    assert second.triage.superseded == 1 and (second.dlq_sent, second.dlq_known) == (1, 3)
    dead = read_topic(topics.bootstrap, dlq, min_count=4)
    assert sorted((int(header(r.headers, HEADER_SOURCE_OFFSET)), header(r.headers, HEADER_ERROR)) for r in dead) == [
        (2, "bad_json"), (3, "unknown_id"), (4, "unknown_label"), (6, "bad_json")]


def test_learn_with_too_few_corrections_stops_saying_what_to_do(broker, topics, model_dir, tmp_path, capsys):
    from finsent.cli import main

    produce(topics.bootstrap, topics.output, [(b"n-0", output_value("n-0", "标题", "内容"))])
    corrections = f"{topics.output}.corrections"
    broker.create_topics([corrections], partitions=1)
    produce(topics.bootstrap, corrections, [(b"n-0", '{"id": "n-0", "label": "利多"}'.encode())], partition=0)
    code = main(["learn", f"model_dir={model_dir}", f"bootstrap_servers={topics.bootstrap}",
                 f"output_topic={topics.output}", f"work_dir={tmp_path}", "run_name=few", "min_corrections=5",
                 f"group_id={topics.group}-learn"])
    err = capsys.readouterr().err
    assert code == 2
    assert (f"finsent learn: error: only 1 usable correction(s), fewer than min_corrections=5: post corrections "
            f'({{"id": "<news id>", "label": "<label>"}}) to {corrections} and run finsent learn again') in err
    run_dir = tmp_path / "few"
    assert json.loads((run_dir / "corrections.jsonl").read_text(encoding="utf-8"))["id"] == "n-0"
    assert not (run_dir / "model").exists() and not (run_dir / "gate_report.json").exists()
