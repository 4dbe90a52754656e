"""The per-record transformation, as pure functions (no Kafka, no model): testable without a broker.

decode → validate → text to classify → output record::

    item = decode(record, max_text_chars=10_000)       # raises a RecordError subclass
    out = encode_output(item, prediction, record.headers, classified_at=time.time())
    dlq = encode_dlq(record, error, failed_at=time.time())

Input value: a JSON object ``{"id", "title", "content", "source", "published_at", ...}`` (unknown fields are
kept and passed through), a JSON string (its text is classified), or plain UTF-8 text. The rule:

- first non-blank character ``{``: must be a valid JSON news object, else ``bad_json``;
- otherwise, valid JSON (RFC 8259: no NaN/Infinity) that is a string: that string is the text;
- otherwise, valid JSON that is null, a number, a boolean or an array: ``bad_json`` (not a news item);
- anything that is not valid JSON is plain text, so ``[快讯] ...`` and ``42只个股涨停`` stay text;
- ``[``/``{`` nested deeper than ``MAX_JSON_DEPTH`` (counted before parsing, outside JSON strings):
  ``bad_json``, never a ``RecursionError``;
- a JSON string anywhere in the value holding an unpaired surrogate escape (``"\\ud800"``): ``bad_json``
  (it cannot be written back as UTF-8).

Output value: the input object plus ``{"sentiment": {"label", "probabilities", "score", "model_version",
"classified_at"}}``; plain text becomes ``{"id": <key>, "content": <text>, "sentiment": ...}``. Output key:
the news ``id``, else the input key, else ``<topic>:<partition>:<offset>`` — always the same for the same
input record, so a redelivered record overwrites rather than adds (at-least-once + idempotent key).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import accumulate
from typing import Any

from classifier.text import normalize
from stream.errors import (
    BadJsonError,
    ClassifierError,
    InvalidUtf8Error,
    NoTextError,
    RecordError,
    TextTooLongError,
)

Headers = list[tuple[str, bytes]]

#: header carrying the model version on every output record
HEADER_MODEL_VERSION = "finsent-model-version"
#: DLQ headers: error code, human message, where the record came from, when it failed
HEADER_ERROR = "finsent-error"
HEADER_ERROR_MESSAGE = "finsent-error-message"
HEADER_SOURCE_TOPIC = "finsent-source-topic"
HEADER_SOURCE_PARTITION = "finsent-source-partition"
HEADER_SOURCE_OFFSET = "finsent-source-offset"
HEADER_FAILED_AT = "finsent-failed-at"
DLQ_HEADERS: tuple[str, ...] = (
    HEADER_ERROR,
    HEADER_ERROR_MESSAGE,
    HEADER_SOURCE_TOPIC,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_OFFSET,
    HEADER_FAILED_AT,
)
#: the error message header is cut to this many characters
MAX_ERROR_MESSAGE_CHARS = 1000
#: fields a JSON input may use for the text; both optional, at least one must hold text
TEXT_FIELDS: tuple[str, ...] = ("title", "content")
SENTIMENT_FIELD = "sentiment"
#: deepest nesting of JSON arrays/objects a value may have (a news object needs 2 or 3); deeper → bad_json
MAX_JSON_DEPTH = 32
PREDICTION_FIELDS: tuple[str, ...] = ("label", "probabilities", "score", "model_version")


@dataclass(frozen=True)
class InputRecord:
    """A consumed record, independent of the Kafka client library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: producer (or broker) timestamp in ms since the epoch; the end-to-end latency is measured from it
    timestamp_ms: int | None = None

    @classmethod
    def from_consumer_record(cls, rec: Any) -> InputRecord:
        """From a ``kafka.consumer.fetcher.ConsumerRecord`` (duck-typed: no Kafka import here)."""
        ts = getattr(rec, "timestamp", None)
        return cls(
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            key=rec.key,
            value=rec.value,
            headers=tuple((k, v if v is not None else b"") for k, v in (rec.headers or ())),
            timestamp_ms=ts if isinstance(ts, int) and ts >= 0 else None,
        )

    @property
    def where(self) -> str:
        """``topic[partition]@offset``, as every log line about a record writes it."""
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class NewsItem:
    """A decoded, validated input: what to classify and what to pass through."""

    key: bytes
    text: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputRecord:
    """A record to produce (to the sentiment topic or the DLQ)."""

    key: bytes | None
    value: bytes | None
    headers: Headers


# ---------------------------------------------------------------------------------------------- decode
def decode(record: InputRecord, *, max_text_chars: int) -> NewsItem:
    """Bytes → validated ``NewsItem``, or a ``RecordError`` subclass naming what is wrong."""
    raw = record.value
    if raw is None or not raw.strip():
        raise NoTextError("record value is empty (or a tombstone): send a JSON news object or plain text")
    try:
        text_value = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        raise InvalidUtf8Error(
            f"value is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}): encode news as UTF-8"
        ) from None

    text_value = text_value.strip()
    if text_value.startswith("{"):
        payload = _parse_object(text_value)
        text = _text_of(payload)
        key = _key_of(payload, record)
    else:
        text = _text_of_non_object(text_value)
        key = record.key if record.key is not None else _coordinates(record)
        payload = {"id": _str_or_none(record.key), "content": text}

    norm = normalize(text)
    if not norm:
        raise NoTextError("text is blank after normalisation: send a headline or article body to classify")
    if len(norm) > max_text_chars:
        raise TextTooLongError(
            f"text has {len(norm)} characters, over max_text_chars={max_text_chars}: shorten or split the "
            "article, or raise max_text_chars"
        )
    return NewsItem(key=key, text=text, payload=payload)


_SEND = 'send a news object {"id": ..., "title": ..., "content": ...}, a JSON string, or plain text'
#: a complete JSON string literal (unrolled loop: linear time), removed before counting brackets
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
#: first characters of a JSON value other than an object
_JSON_SCALAR_START = frozenset('["-0123456789tfn')
#: a JSON escape of either half of a surrogate pair (\ud800 to \udfff)
_SURROGATE_ESCAPE = re.compile(r"\\ud[89a-f]", re.IGNORECASE)


class _NotJson(ValueError):
    """The text uses a Python extension of JSON (NaN, Infinity, -Infinity)."""


class _Unsupported(ValueError):
    """Valid JSON this codec cannot carry (a number out of float range, an integer of > 4300 digits)."""


def _constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x):
        raise _Unsupported(f"number out of float range ({s[:40]})")
    return x


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:  # Python's limit on int digits
        raise _Unsupported(f"integer of {len(s)} digits (Python reads at most 4300)") from None


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside JSON strings (exact for valid JSON); linear, no recursion."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _loads(text: str) -> Any:
    """Strict ``json.loads``: RFC 8259 only (no NaN/Infinity), finite numbers, at most ``MAX_JSON_DEPTH``
    levels, strings writable as UTF-8. Raises ``json.JSONDecodeError``/``_NotJson`` for text that is not
    JSON and ``BadJsonError`` for JSON this codec refuses."""
    if text[:1] in "[{":
        depth = _json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise BadJsonError(
                f"value nests [ / {{ {depth} levels deep, over the limit of {MAX_JSON_DEPTH}: {_SEND}"
            )
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except _Unsupported as e:
        raise BadJsonError(f"value JSON holds an unsupported {e}: {_SEND}") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then check every string (pairs are fine, lone ones not)
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadJsonError(
                f"value JSON has an unpaired surrogate escape \\u{ord(e.object[e.start]):04x}: send valid "
                "Unicode (characters outside the BMP as a \\ud83d\\ude00-style pair, or raw UTF-8)"
            ) from None
    return value


def _text_of_non_object(text: str) -> str:
    """A value not starting with ``{``: a JSON string → its text; other JSON → ``BadJsonError``; not JSON →
    the value itself (plain text)."""
    if text[:1] not in _JSON_SCALAR_START:
        return text  # cannot be JSON: skip the parse (most plain-text headlines)
    try:
        value = _loads(text)
    except (json.JSONDecodeError, _NotJson):  # not JSON, so plain text
        return text
    if isinstance(value, str):
        return value.strip()
    raise BadJsonError(f"value is a JSON {_json_kind(value)} ({text[:40]!r}), not a news item: {_SEND}")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else "array"


def _parse_object(text: str) -> dict[str, Any]:
    try:
        obj = _loads(text)
    except (json.JSONDecodeError, _NotJson) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise BadJsonError(f"value starts with '{{' but is not valid JSON ({msg}{where}): {_SEND}") from None
    if not isinstance(obj, dict):  # pragma: no cover - a value starting with '{' that parses is an object
        raise BadJsonError(f"value JSON must be an object, got {type(obj).__name__}")
    for name in TEXT_FIELDS:
        v = obj.get(name)
        if v is not None and not isinstance(v, str):
            raise BadJsonError(f'field "{name}" must be a string or null, got {type(v).__name__}')
    news_id = obj.get("id")
    if news_id is not None and (isinstance(news_id, bool) or not isinstance(news_id, (str, int))):
        raise BadJsonError(f'field "id" must be a string or an integer, got {type(news_id).__name__}')
    if isinstance(news_id, str) and not news_id.strip():
        raise BadJsonError('field "id" is blank: give each news item a unique id, or leave "id" out')
    return obj


def _text_of(payload: Mapping[str, Any]) -> str:
    """Title and content joined by a newline (one of them may be missing)."""
    parts = [payload[name].strip() for name in TEXT_FIELDS if isinstance(payload.get(name), str)]
    text = "\n".join(p for p in parts if p)
    if not text:
        raise NoTextError('JSON object has no text: fill "title" and/or "content"')
    return text


def _key_of(payload: Mapping[str, Any], record: InputRecord) -> bytes:
    news_id = payload.get("id")
    if news_id is not None:
        return str(news_id).encode("utf-8")
    if record.key is not None:
        return record.key
    return _coordinates(record)


def _coordinates(record: InputRecord) -> bytes:
    return f"{record.topic}:{record.partition}:{record.offset}".encode()


def _str_or_none(b: bytes | None) -> str | None:
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------------------------- encode
def format_timestamp(seconds: float) -> str:
    """``2025-01-31T08:00:00.123Z`` (UTC, milliseconds)."""
    dt = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def sentiment_of(prediction: Mapping[str, Any], *, classified_at: float) -> dict[str, Any]:
    """The ``sentiment`` object from a ``Predictor.predict`` (or Serve) result; ``ClassifierError`` if it
    lacks a field or holds a non-finite number."""
    if not isinstance(prediction, Mapping):
        raise ClassifierError(f"classifier returned {type(prediction).__name__}, expected a prediction dict")
    if "error" in prediction:  # the Serve handle's errors="return" answer for a text it rejected
        raise ClassifierError(f"{prediction.get('error_type', 'error')}: {prediction['error']}")
    missing = [k for k in PREDICTION_FIELDS if k not in prediction]
    if missing:
        raise ClassifierError(f"classifier result lacks {missing}: expected {list(PREDICTION_FIELDS)}")
    probs = prediction["probabilities"]
    score = prediction["score"]
    if not isinstance(probs, Mapping) or not all(_finite(p) for p in probs.values()) or not _finite(score):
        raise ClassifierError(f"classifier returned non-numeric or non-finite scores: {prediction!r:.200}")
    return {
        "label": str(prediction["label"]),
        "probabilities": {str(k): float(v) for k, v in probs.items()},
        "score": float(score),
        "model_version": str(prediction["model_version"]),
        "classified_at": format_timestamp(classified_at),
    }


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def encode_output(
    item: NewsItem,
    prediction: Mapping[str, Any],
    headers: Iterable[tuple[str, bytes]],
    *,
    classified_at: float,
) -> OutputRecord:
    """The labelled output record: payload + ``sentiment``, the item's key, input headers + model version."""
    sentiment = sentiment_of(prediction, classified_at=classified_at)
    value = {**item.payload, SENTIMENT_FIELD: sentiment}
    out_headers = [(k, v) for k, v in headers if k != HEADER_MODEL_VERSION and k not in DLQ_HEADERS]
    out_headers.append((HEADER_MODEL_VERSION, sentiment["model_version"].encode("utf-8")))
    return OutputRecord(
        key=item.key,
        value=json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        headers=out_headers,
    )


def encode_dlq(record: InputRecord, error: RecordError, *, failed_at: float) -> OutputRecord:
    """The dead-letter record: original key, bytes and headers, plus headers naming error and source."""
    message = str(error)[:MAX_ERROR_MESSAGE_CHARS]
    headers = strip_dlq_headers(record.headers)
    headers += [
        (HEADER_ERROR, error.code.encode()),
        (HEADER_ERROR_MESSAGE, message.encode("utf-8")),
        (HEADER_SOURCE_TOPIC, record.topic.encode("utf-8")),
        (HEADER_SOURCE_PARTITION, str(record.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(record.offset).encode()),
        (HEADER_FAILED_AT, format_timestamp(failed_at).encode()),
    ]
    return OutputRecord(key=record.key, value=record.value, headers=headers)


def strip_dlq_headers(headers: Iterable[tuple[str, bytes]]) -> Headers:
    """The headers without the ones ``encode_dlq`` adds (what a replay sends back to the input topic)."""
    return [(k, v) for k, v in headers if k not in DLQ_HEADERS]


def header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """The last value of header ``name`` as text, or None."""
    for k, v in reversed(list(headers)):
        if k == name:
            return v.decode("utf-8", errors="replace")
    return None


def as_record_error(exc: BaseException) -> RecordError:
    """Any exception of the classify step as a ``RecordError`` (a ``ClassifierError`` unless it is one)."""
    if isinstance(exc, RecordError):
        return exc
    return ClassifierError(f"{type(exc).__name__}: {exc}")
