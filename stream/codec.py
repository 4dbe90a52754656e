"""The per-record transformation, as pure functions (no Kafka, no model): testable without a broker.

decode → validate → text to classify → output record::

    item = decode(record, max_text_chars=10_000)       # raises a RecordError subclass
    out = encode_output(item, prediction, record.headers, classified_at=time.time())
    dlq = encode_dlq(record, error, failed_at=time.time())

Input value: a JSON object ``{"id", "title", "content", "source", "published_at", ...}`` (unknown fields are
kept and passed through) or plain UTF-8 text. A value whose first non-blank character is ``{`` is read as
JSON; anything else is plain text (so ``[快讯] ...`` headlines stay text).

Output value: the input object plus ``{"sentiment": {"label", "probabilities", "score", "model_version",
"classified_at"}}``; plain text becomes ``{"id": <key>, "content": <text>, "sentiment": ...}``. Output key:
the news ``id``, else the input key, else ``<topic>:<partition>:<offset>`` — always the same for the same
input record, so a redelivered record overwrites rather than adds (at-least-once + idempotent key).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
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

    if text_value.lstrip().startswith("{"):
        payload = _parse_object(text_value)
        text = _text_of(payload)
        key = _key_of(payload, record)
    else:
        text = text_value.strip()
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


def _parse_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadJsonError(
            f"value starts with '{{' but is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
            'send {"id": ..., "title": ..., "content": ...} or plain text'
        ) from None
    except RecursionError:
        raise BadJsonError("value JSON is nested too deeply") from None
    if not isinstance(obj, dict):
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
