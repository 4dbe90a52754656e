"""The strict /v1/classify body parser and the OpenAPI schema built from the limits (no Ray): every malformed
body → its status, code and message; every schema-valid body is accepted."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.schemas import (
    CLASSIFY_PATH,
    MAX_BODY_BYTES_KEY,
    Limits,
    RequestError,
    check_content_length,
    not_blank_pattern,
    openapi_with_limits,
    parse_classify_body,
    validate_texts,
)

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


def test_length_limit_counts_characters_as_sent():
    # code points as sent, like JSON Schema's maxLength: spaces count, NFKC expansion does not
    assert validate_texts(["一二三四五 六七八九"], LIMITS) == ["一二三四五 六七八九"]
    assert validate_texts(["\ufdfa"], LIMITS) == ["\ufdfa"]  # one character, 18 once NFKC-normalised
    with pytest.raises(RequestError, match="11 characters, over max_chars_per_text=10") as e:
        validate_texts(["一二三四五 六七八九十"], LIMITS)
    assert (e.value.status, e.value.limit) == (413, "max_chars_per_text")
    with pytest.raises(RequestError, match="12 characters"):
        validate_texts(["  一二三四五六七\u200b  "], LIMITS)  # blanks and zero-width characters count


def test_unpaired_surrogate_is_a_422_not_a_tokenizer_crash():
    with pytest.raises(RequestError) as e:
        parse_classify_body(b'{"texts": ["ok", "a\\ud800b"]}', LIMITS)
    assert (e.value.status, e.value.code) == (422, "invalid_unicode")
    assert "texts[1]" in e.value.message and "\\ud800 at character 1" in e.value.message
    # a pair is one character outside the BMP: fine
    assert parse_classify_body(b'{"texts": ["\\ud83d\\ude00"]}', LIMITS).texts == ["\U0001f600"]


# ---------------------------------------------------------------------------------------------- OpenAPI
@pytest.fixture(scope="module")
def openapi_doc() -> dict:
    """The app's real OpenAPI document with LIMITS, as GET /openapi.json serves it."""
    from serving.deployment import api

    return openapi_with_limits(api.openapi(), LIMITS)


def _body_schema(doc: dict) -> dict:
    return doc["paths"][CLASSIFY_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_openapi_carries_the_configured_limits(openapi_doc):
    op = openapi_doc["paths"][CLASSIFY_PATH]["post"]
    body = _body_schema(openapi_doc)
    texts = body["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, 3)
    item = texts["items"]
    assert (item["type"], item["minLength"], item["maxLength"]) == ("string", 1, 10)
    assert item["pattern"] == not_blank_pattern()
    assert body["if"] == {"properties": {"explain": {"const": True}}, "required": ["explain"]}
    assert body["then"] == {"properties": {"texts": {"maxItems": 1}}}
    assert body["additionalProperties"] is False and body["required"] == ["texts"]
    assert body[MAX_BODY_BYTES_KEY] == op["requestBody"][MAX_BODY_BYTES_KEY] == 200
    assert "at most 200 bytes" in op["requestBody"]["description"] and "413" in op["description"]
    assert "over 200 bytes" in op["responses"]["413"]["description"]
    assert {"200", "400", "413", "422"} <= set(op["responses"])
    other = openapi_with_limits(openapi_doc, Limits(50, 500, 10_000, 5))  # derived from the limits given
    assert _body_schema(other)["properties"]["texts"]["maxItems"] == 50
    assert _body_schema(other)["properties"]["texts"]["items"]["maxLength"] == 500
    assert _body_schema(openapi_doc)["properties"]["texts"]["maxItems"] == 3  # the input is not modified


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"texts": ["利好"]}, True),
        ({"texts": ["  a\u3000"]}, True),
        ({"texts": ["\u0301"]}, True),  # a lone combining mark survives normalisation
        ({"texts": ["一二三四五六七八九十"], "explain": True}, True),
        ({"texts": [""]}, False),  # the case of the issue: schema-valid before, answered 422
        ({"texts": [" \t\n\u3000\u00a0"]}, False),
        ({"texts": ["\u200b\ufeff"]}, False),  # zero-width only
        ({"texts": ["a" * 11]}, False),
        ({"texts": []}, False),
        ({"texts": ["a", "b", "c", "d"]}, False),
        ({"texts": ["a", "b"], "explain": True}, False),
        ({"texts": ["a", "b"], "explain": False}, True),
        ({"texts": ["a"], "explain": None}, False),
        ({"texts": ["a"], "text": ["b"]}, False),
    ],
)
def test_schema_and_parser_agree(openapi_doc, body, valid):
    import jsonschema

    validator = jsonschema.Draft202012Validator(_body_schema(openapi_doc))
    assert validator.is_valid(body) is valid
    raw = json.dumps(body).encode()
    if valid:
        parse_classify_body(raw, LIMITS)
    else:
        with pytest.raises(RequestError) as e:
            parse_classify_body(raw, LIMITS)
        assert e.value.status in (413, 422)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=12))
def test_not_blank_pattern_matches_exactly_what_validate_text_accepts(text):
    from classifier.errors import InputError
    from classifier.text import validate_text

    try:
        validate_text(text)
        accepted = True
    except InputError:
        accepted = False
    assert bool(re.search(not_blank_pattern(), text)) is accepted


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generated_bodies_schema_valid_accepted_invalid_rejected_with_4xx(openapi_doc, mode):
    """schemathesis' generator on the served schema: every schema-valid body within max_body_bytes parses;
    every invalid one gets a RequestError (a 4xx), never another exception."""
    import schemathesis
    from schemathesis import GenerationMode

    op = schemathesis.openapi.from_dict(openapi_doc)[CLASSIFY_PATH]["POST"]
    positive = mode == "positive"
    seen = {"accepted": 0, "rejected": 0}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=GenerationMode.POSITIVE if positive else GenerationMode.NEGATIVE))
    def check(case):
        if not isinstance(case.body, (dict, list, str, int, float, bool, type(None))):
            return  # a non-JSON body (negative mode may send other media types)
        raw = json.dumps(case.body).encode()
        if positive and len(raw) > LIMITS.max_body_bytes:
            return  # the one limit JSON Schema cannot express (x-max-body-bytes)
        try:
            parse_classify_body(raw, LIMITS)
            seen["accepted"] += 1
        except RequestError as e:
            assert not positive, f"schema-valid body rejected: {e.code}: {e.message}: {raw[:200]!r}"
            assert e.status in (400, 413, 422)
            seen["rejected"] += 1

    check()
    assert seen["accepted" if positive else "rejected"] > 50


def test_content_length_header_checked_before_reading():
    check_content_length(None, LIMITS)
    check_content_length("200", LIMITS)
    with pytest.raises(RequestError, match="max_body_bytes=200"):
        check_content_length("201", LIMITS)
    with pytest.raises(RequestError, match="not a number"):
        check_content_length("abc", LIMITS)
