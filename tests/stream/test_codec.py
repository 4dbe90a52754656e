"""The per-record transformation, without a broker: decode, validate, encode output and dead letters."""

from __future__ import annotations

import json
import time

import pytest

from stream.codec import (
    DLQ_HEADERS,
    HEADER_ERROR,
    HEADER_MODEL_VERSION,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    MAX_JSON_DEPTH,
    InputRecord,
    as_record_error,
    decode,
    encode_dlq,
    encode_output,
    format_timestamp,
    header,
    strip_dlq_headers,
)
from stream.errors import (
    RECORD_ERROR_CODES,
    BadJsonError,
    ClassifierError,
    InvalidUtf8Error,
    NoTextError,
    RecordError,
    StreamError,
    TextTooLongError,
)

PREDICTION = {
    "label": "利多",
    "probabilities": {"其他": 0.1, "利多": 0.7, "利空": 0.2},
    "score": 0.5,
    "model_version": "tiny@0123abcd",
}


def rec(value: bytes | None, key: bytes | None = None, headers: tuple = (), offset: int = 7) -> InputRecord:
    return InputRecord("finance.news", 2, offset, key, value, headers, timestamp_ms=1_700_000_000_000)


def obj(**fields) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


# ---------------------------------------------------------------------------------------------- decode
def test_json_object_text_key_and_pass_through():
    value = obj(id="a1", title="央行宣布降准", content="释放长期资金约1万亿元。", source="新华社",
                published_at="2025-01-02T08:00:00+08:00", tags=["宏观"], nested={"x": 1})
    item = decode(rec(value, key=b"ignored"), max_text_chars=1000)
    assert item.key == b"a1"  # the news id wins over the record key
    assert item.text == "央行宣布降准\n释放长期资金约1万亿元。"
    assert item.payload["tags"] == ["宏观"] and item.payload["nested"] == {"x": 1}
    assert item.payload["source"] == "新华社"


@pytest.mark.parametrize(
    ("fields", "key", "expected_key", "expected_text"),
    [
        ({"id": 42, "content": "公司业绩大涨"}, None, b"42", "公司业绩大涨"),  # integer id
        ({"title": "只有标题"}, b"k-9", b"k-9", "只有标题"),  # no id: the input key
        ({"content": "  两端空白  ", "title": None}, None, b"finance.news:2:7", "两端空白"),  # no id, no key
    ],
)
def test_json_key_fallbacks(fields, key, expected_key, expected_text):
    item = decode(rec(obj(**fields), key=key), max_text_chars=1000)
    assert item.key == expected_key
    assert item.text == expected_text


def test_plain_text_value():
    item = decode(rec("[快讯] 某公司股价涨停 ".encode(), key=b"p1"), max_text_chars=1000)
    assert item.text == "[快讯] 某公司股价涨停"  # '[' does not make it JSON
    assert item.key == b"p1"
    assert item.payload == {"id": "p1", "content": "[快讯] 某公司股价涨停"}


def test_plain_text_with_bom_and_binary_key():
    item = decode(rec("\ufeff股市大跌".encode(), key=b"\xff\x00"), max_text_chars=1000)
    assert item.text == "股市大跌"
    assert item.key == b"\xff\x00"
    assert item.payload["id"] is None  # a non-UTF-8 key cannot be a JSON id


@pytest.mark.parametrize(
    ("value", "error", "code"),
    [
        (b"\xff\xfe\x00abc", InvalidUtf8Error, "invalid_utf8"),
        ("利好".encode("gbk"), InvalidUtf8Error, "invalid_utf8"),
        (b'{"id": "x", "title": ', BadJsonError, "bad_json"),
        (b'{"id": "x"} trailing', BadJsonError, "bad_json"),
        (obj(id="x", title=5), BadJsonError, "bad_json"),
        (obj(id=True, title="t"), BadJsonError, "bad_json"),
        (obj(id=" ", title="t"), BadJsonError, "bad_json"),
        (None, NoTextError, "no_text"),
        (b"", NoTextError, "no_text"),
        (b" \n\t ", NoTextError, "no_text"),
        (obj(id="x"), NoTextError, "no_text"),
        (obj(id="x", title="   ", content=None), NoTextError, "no_text"),
        ("\u200b\u200b".encode(), NoTextError, "no_text"),  # only zero-width characters: blank once normalised
    ],
)
def test_bad_values(value, error, code):
    with pytest.raises(error) as info:
        decode(rec(value), max_text_chars=1000)
    assert info.value.code == code
    assert isinstance(info.value, RecordError) and isinstance(info.value, StreamError)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"null", "value is a JSON null ('null'), not a news item"),
        (b"42", "value is a JSON number ('42'), not a news item"),
        (b" -3.5e2 ", "value is a JSON number ('-3.5e2'), not a news item"),
        (b"true", "value is a JSON boolean ('true'), not a news item"),
        (b"false", "value is a JSON boolean ('false'), not a news item"),
        (b'["a", "b"]', "value is a JSON array ('[\"a\", \"b\"]'), not a news item"),
        ('[{"id": "x", "title": "利好"}]'.encode(), "value is a JSON array"),  # a batch of news is not one item
        (b"[]", "value is a JSON array ('[]')"),
        (b"1e400", "unsupported number out of float range (1e400)"),
        (b'{"title": "x", "n": 1e400}', "unsupported number out of float range"),
        (b"7" * 5000, "unsupported integer of 5000 digits"),
        (b'{"title": "x", "n": NaN}', "not valid JSON (NaN is not JSON)"),  # output JSON could not carry it
        (b'{"title": "a\ud800b"}', "unpaired surrogate escape \\ud800"),  # not writable as UTF-8
        (b'"\udc00"', "unpaired surrogate escape \\udc00"),
    ],
)
def test_json_that_is_not_a_news_item_is_bad_json_with_the_reason(value, reason):
    with pytest.raises(BadJsonError) as info:
        decode(rec(value), max_text_chars=1000)
    assert info.value.code == "bad_json"
    assert reason in str(info.value)
    assert "send a news object" in str(info.value) or "send valid Unicode" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"a": ' * 5000 + b"1" + b"}" * 5000,
        b'{"id": "x", "title": "t", "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 200_000,  # not even valid JSON: refused before parsing all the same
    ],
    ids=["arrays", "objects", "inside-a-news-object", "unclosed"],
)
def test_deep_nesting_is_bad_json_not_a_recursion_error_and_fast(value):
    started = time.perf_counter()
    with pytest.raises(BadJsonError, match=f"levels deep, over the limit of {MAX_JSON_DEPTH}") as info:
        decode(rec(value), max_text_chars=1000)
    assert time.perf_counter() - started < 1.0
    assert info.value.code == "bad_json"


def test_nesting_up_to_the_limit_is_fine_and_brackets_in_strings_do_not_count():
    deep = {"id": "d1", "title": "央行降准", "extra": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))}
    assert decode(rec(json.dumps(deep).encode()), max_text_chars=100).payload["extra"] == deep["extra"]
    quoted = obj(id="q", title="[" * 100 + "{" * 100 + '\"[[[')
    assert decode(rec(quoted), max_text_chars=1000).text == "[" * 100 + "{" * 100 + '\"[[['


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ('"央行宣布降准"'.encode(), "央行宣布降准"),  # a JSON string: its text
        ('  " 带空白的 JSON 字符串 "  '.encode(), "带空白的 JSON 字符串"),
        (b'"\u592e\u884c \ud83d\ude00"', "央行 \U0001f600"),  # escapes, a surrogate pair
        ("[快讯] 某公司股价涨停".encode(), "[快讯] 某公司股价涨停"),  # not JSON: plain text
        ("42只个股涨停".encode(), "42只个股涨停"),
        ("-5%！沪指大跌".encode(), "-5%！沪指大跌"),
        ('"国家队"入场，A股大涨'.encode(), '"国家队"入场，A股大涨'),  # starts with a JSON string, then more
        ("[1] 新华社快讯".encode(), "[1] 新华社快讯"),
        ("true story：某公司澄清".encode(), "true story：某公司澄清"),
        (b"NaN", "NaN"),  # not RFC 8259 JSON
        (b"[1, 2", "[1, 2"),
    ],
)
def test_json_strings_and_non_json_text_are_classified(value, text):
    item = decode(rec(value, key=b"k"), max_text_chars=1000)
    assert item.text == text
    assert item.key == b"k" and item.payload == {"id": "k", "content": text}


def test_blank_json_string_is_no_text():
    with pytest.raises(NoTextError):
        decode(rec(b'"  \u3000 "'), max_text_chars=100)


def test_text_over_limit_counts_normalised_characters():
    assert decode(rec(("涨" * 10).encode()), max_text_chars=10).text == "涨" * 10
    with pytest.raises(TextTooLongError, match="11 characters, over max_text_chars=10"):
        decode(rec(("涨" * 11).encode()), max_text_chars=10)
    # full-width ASCII folds to one character each; runs of spaces collapse to one
    assert decode(rec("ＡＢ   ＣＤＥＦＧＨ".encode()), max_text_chars=10).text == "ＡＢ   ＣＤＥＦＧＨ"


def test_error_codes_are_distinct():
    assert RECORD_ERROR_CODES == ("invalid_utf8", "bad_json", "no_text", "text_too_long", "classifier_error")


# ---------------------------------------------------------------------------------------------- encode
def test_encode_output_value_key_headers():
    headers = (("trace-id", b"abc"), (HEADER_MODEL_VERSION, b"old@00000000"))
    r = rec(obj(id="a1", title="标题", content="内容", extra=1), headers=headers)
    item = decode(r, max_text_chars=100)
    out = encode_output(item, PREDICTION, r.headers, classified_at=1_700_000_000.25)
    value = json.loads(out.value)
    assert out.key == b"a1"
    assert value == {
        "id": "a1", "title": "标题", "content": "内容", "extra": 1,
        "sentiment": {
            "label": "利多", "probabilities": {"其他": 0.1, "利多": 0.7, "利空": 0.2}, "score": 0.5,
            "model_version": "tiny@0123abcd", "classified_at": "2023-11-14T22:13:20.250Z",
        },
    }
    # input headers kept, the stale model version replaced by the one that labelled it
    assert out.headers == [("trace-id", b"abc"), (HEADER_MODEL_VERSION, b"tiny@0123abcd")]
    assert "标题" in out.value.decode("utf-8")  # UTF-8, not \\u escapes


def test_encode_output_plain_text():
    r = rec("利空消息".encode(), key=b"k1")
    out = encode_output(decode(r, max_text_chars=100), PREDICTION, r.headers, classified_at=0)
    value = json.loads(out.value)
    assert value["id"] == "k1" and value["content"] == "利空消息"
    assert value["sentiment"]["classified_at"] == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    "prediction",
    [
        {"label": "利多", "probabilities": {"利多": 1.0}, "score": 1.0},  # no model_version
        {**PREDICTION, "score": float("nan")},
        {**PREDICTION, "probabilities": {"利多": "high"}},
        "利多",
        {"error": "texts[3]: text is empty", "error_type": "InputError"},  # Serve's errors="return" answer
    ],
)
def test_encode_output_rejects_malformed_predictions(prediction):
    item = decode(rec(b"text"), max_text_chars=100)
    with pytest.raises(ClassifierError) as info:
        encode_output(item, prediction, (), classified_at=0)
    assert info.value.code == "classifier_error"


def test_encode_dlq_keeps_original_bytes_and_names_error_and_source():
    raw = b'{"id": "x", "title": '
    r = rec(raw, key=b"x", headers=(("trace-id", b"abc"), (HEADER_ERROR, b"stale")), offset=123)
    with pytest.raises(BadJsonError) as info:
        decode(r, max_text_chars=100)
    dlq = encode_dlq(r, info.value, failed_at=86_400.5)
    assert dlq.key == b"x" and dlq.value == raw
    assert dlq.headers[0] == ("trace-id", b"abc")
    assert header(dlq.headers, HEADER_ERROR) == "bad_json"
    assert [k for k, _ in dlq.headers].count(HEADER_ERROR) == 1  # an old error header is replaced
    assert header(dlq.headers, HEADER_SOURCE_TOPIC) == "finance.news"
    assert header(dlq.headers, HEADER_SOURCE_PARTITION) == "2"
    assert header(dlq.headers, HEADER_SOURCE_OFFSET) == "123"
    assert header(dlq.headers, "finsent-failed-at") == "1970-01-02T00:00:00.500Z"
    assert "not valid JSON" in header(dlq.headers, "finsent-error-message")
    assert strip_dlq_headers(dlq.headers) == [("trace-id", b"abc")]
    assert set(DLQ_HEADERS) <= {k for k, _ in dlq.headers}


def test_encode_dlq_of_a_tombstone_keeps_none():
    r = rec(None, key=b"gone")
    dlq = encode_dlq(r, NoTextError("empty"), failed_at=0)
    assert dlq.value is None and dlq.key == b"gone"


def test_as_record_error():
    assert as_record_error(NoTextError("x")).code == "no_text"
    err = as_record_error(RuntimeError("boom"))
    assert isinstance(err, ClassifierError) and str(err) == "RuntimeError: boom"


def test_format_timestamp():
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp(1_735_689_600.999) == "2025-01-01T00:00:00.999Z"


def test_from_consumer_record_duck_typed():
    class Fake:
        topic, partition, offset, key, value = "t", 1, 5, b"k", b"v"
        headers = [("h", b"1"), ("empty", None)]
        timestamp = -1  # no timestamp

    r = InputRecord.from_consumer_record(Fake())
    assert r.headers == (("h", b"1"), ("empty", b""))
    assert r.timestamp_ms is None and r.where == "t[1]@5"
