"""The strict /v1/classify body parser (no Ray): every malformed body → its status, code and message."""

from __future__ import annotations

import json

import pytest

from serving.schemas import Limits, RequestError, check_content_length, parse_classify_body, validate_texts

LIMITS = Limits(max_texts_per_request=3, max_chars_per_text=10, max_body_bytes=200, max_explain_texts=1)


def test_valid_body_keeps_texts_as_sent():
    req = parse_classify_body(json.dumps({"texts": ["  利好　", "ＡＢＣ"]}).encode(), LIMITS)
    assert req.texts == ["  利好　", "ＡＢＣ"] and req.explain is False  # the Predictor normalises them itself
    assert parse_classify_body(b'{"texts": ["a"], "explain": true}', LIMITS).explain is True


@pytest.mark.parametrize(
    ("body", "status", "code", "limit"),
    [
        (b"\xc3\x28", 400, "invalid_utf8", None),
        (b"{'texts': ['a']}", 400, "invalid_json", None),
        (b"   ", 400, "empty_body", None),
        (b"null", 422, "not_an_object", None),
        (b'{"texts": [null]}', 422, "text_not_a_string", None),
        (b'{"texts": ["a","b","c","d"]}', 413, "too_many_texts", "max_texts_per_request"),
        (b'{"texts": ["a","b"], "explain": true}', 413, "too_many_texts_to_explain", "max_explain_texts"),
        ('{"texts": ["一二三四五六七八九十十"]}'.encode(), 413, "text_too_long", "max_chars_per_text"),
        (json.dumps({"texts": ["a"] * 60}).encode(), 413, "body_too_large", "max_body_bytes"),
    ],
)
def test_bad_bodies(body, status, code, limit):
    with pytest.raises(RequestError) as e:
        parse_classify_body(body, LIMITS)
    assert (e.value.status, e.value.code, e.value.limit) == (status, code, limit)
    assert e.value.body() == {"detail": e.value.message, "error": code, "limit": limit}


def test_deep_nesting_is_a_400_not_a_crash():
    big = Limits(3, 10, 10_000_000, 1)
    with pytest.raises(RequestError) as e:
        parse_classify_body(b"[" * 200_000 + b"]" * 200_000, big)
    assert e.value.status in (400, 422)


def test_length_limit_counts_normalised_characters():
    # ten characters after NFKC + whitespace trimming pass, although the raw string is longer
    assert validate_texts(["  一二三四五六七八九十\u200b  "], LIMITS) == ["  一二三四五六七八九十\u200b  "]
    with pytest.raises(RequestError, match="11 characters"):
        validate_texts(["一二三四五 六七八九十"], LIMITS)


def test_content_length_header_checked_before_reading():
    check_content_length(None, LIMITS)
    check_content_length("200", LIMITS)
    with pytest.raises(RequestError, match="max_body_bytes=200"):
        check_content_length("201", LIMITS)
    with pytest.raises(RequestError, match="not a number"):
        check_content_length("abc", LIMITS)
