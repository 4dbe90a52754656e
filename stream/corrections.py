"""Corrections: people's labels for news the stream labelled (pure per-record logic, thin Kafka wiring).

A labelling tool (or a person) posts one record per correction to the corrections topic (default
``<output_topic>.corrections``)::

    key:   the news id (recommended: one id's corrections then share a partition and stay in order, and a
           compacted topic keeps the latest correction of every id)
    value: {"id": "<news id>", "label": "利空"}      # more fields ("user", "note", ...) are kept as they are

``finsent learn`` reads the whole topic (the corrections are the labelled set the loop grows) and joins each
correction with the text the stream classified: the record of the output topic (or the review topic) whose key
is the news id (:mod:`stream.codec` keys every output by the news ``id``), title and content joined by a newline
as the stream joined them.

Bad corrections go to the corrections DLQ (default ``<corrections topic>.dlq``) with the stream's DLQ headers
(``finsent-error`` = the code below, ``finsent-error-message``, source topic/partition/offset, failed-at):

=================  ==================================================================================
``bad_json``       the value is not a JSON object (not UTF-8, not JSON, or JSON that is no object)
``bad_correction`` a JSON object without a usable ``"id"`` (string or integer) or ``"label"`` (string)
``unknown_label``  the label is not one of the live model's labels
``unknown_id``     no record of the output or review topic has that id (a typo, or a record past retention)
=================  ==================================================================================

Later corrections of an id win: the valid correction with the latest (timestamp, partition, offset) is used, the
earlier ones count as ``superseded``. Every record is checked on every run, but only records after the
``group_id``'s committed position go to the DLQ, and the position moves to the end of what was read once the dead
letters are acknowledged: each bad correction reaches the DLQ once (at least once, after a crash).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.codec import HEADER_MODEL_VERSION, SENTIMENT_FIELD, TEXT_FIELDS, InputRecord, encode_dlq, header
from stream.errors import BadJsonError, RecordError, StreamError

log = logging.getLogger(__name__)

CORRECTION_FIELDS: tuple[str, ...] = ("id", "label")


class BadCorrectionError(RecordError):
    """A JSON object that lacks a usable ``id`` or ``label``."""

    code = "bad_correction"


class UnknownLabelError(RecordError):
    """The correction's label is not one of the live model's labels."""

    code = "unknown_label"


class UnknownIdError(RecordError):
    """No labelled record (output or review topic) has the correction's id."""

    code = "unknown_id"


#: every error code a correction can go to the DLQ with, in the order docs/feedback-loop.md lists them
CORRECTION_ERROR_CODES: tuple[str, ...] = ("bad_json", BadCorrectionError.code, UnknownLabelError.code,
                                           UnknownIdError.code)

_SEND = 'post {"id": "<news id>", "label": "<label>"}'


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Correction:
    """One parsed correction (not yet joined with its text)."""

    id: str
    label: str
    record: InputRecord
    #: the other fields of the value (who corrected, a note, ...), passed through to the snapshot
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> tuple[int, int, int]:
        """What "later" means between two corrections of an id: timestamp, then partition and offset."""
        r = self.record
        return (r.timestamp_ms if r.timestamp_ms is not None else -1, r.partition, r.offset)


@dataclass(frozen=True)
class NewsText:
    """A labelled record of the output (or review) topic: the text the stream classified, and its label."""

    id: str
    text: str
    predicted_label: str | None = None
    model_version: str | None = None
    where: str = ""


@dataclass(frozen=True)
class LabelledCorrection:
    """A valid correction joined with its text: one labelled example of the loop."""

    id: str
    label: str
    text: str
    predicted_label: str | None
    model_version: str | None
    where: str
    corrected_at_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "text": self.text, "predicted_label": self.predicted_label,
                "model_version": self.model_version, "where": self.where, "corrected_at_ms": self.corrected_at_ms,
                **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LabelledCorrection:
        return cls(id=str(obj["id"]), label=str(obj["label"]), text=str(obj["text"]),
                   predicted_label=obj.get("predicted_label"), model_version=obj.get("model_version"),
                   where=str(obj.get("where", "")), corrected_at_ms=obj.get("corrected_at_ms"),
                   extra=dict(obj.get("extra") or {}))


@dataclass
class Triage:
    """What a pass over the corrections found: the latest valid correction of every id, and the dead ones."""

    corrections: list[LabelledCorrection] = field(default_factory=list)
    dead: list[tuple[InputRecord, RecordError]] = field(default_factory=list)
    #: valid corrections replaced by a later correction of the same id
    superseded: int = 0
    read: int = 0

    def dead_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, e in self.dead:
            out[e.code] = out.get(e.code, 0) + 1
        return out


# ---------------------------------------------------------------------------------------------- pure logic
def parse_correction(record: InputRecord, labels: Sequence[str]) -> Correction:
    """Bytes → :class:`Correction`, or the ``RecordError`` that sends it to the DLQ (the id is not looked up
    here: see :func:`triage`)."""
    raw = record.value
    if raw is None or not raw.strip():
        raise BadJsonError(f"correction is empty (or a tombstone): {_SEND}")
    try:
        obj = json.loads(raw.decode("utf-8").lstrip("\ufeff"))
    except UnicodeDecodeError as e:
        raise BadJsonError(f"correction is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                           f"{_SEND} as UTF-8 JSON") from None
    except (ValueError, RecursionError) as e:
        raise BadJsonError(f"correction is not JSON ({str(e)[:80]}): {_SEND}") from None
    if not isinstance(obj, dict):
        raise BadJsonError(f"correction is a JSON {type(obj).__name__}, not an object: {_SEND}")
    news_id = obj.get("id")
    if isinstance(news_id, bool) or not isinstance(news_id, (str, int)) or not str(news_id).strip():
        raise BadCorrectionError(f'correction has no usable "id" (got {news_id!r}): give the id of the news '
                                 "record to correct (the key of its output record), as a string or an integer")
    label = obj.get("label")
    if not isinstance(label, str) or not label.strip():
        raise BadCorrectionError(f'correction of id {news_id!r} has no usable "label" (got {label!r}): give one of '
                                 f"{list(labels)}")
    label = label.strip()
    if label not in labels:
        raise UnknownLabelError(f"correction of id {news_id!r} has label {label!r}, which the model does not "
                                f"know: use one of {list(labels)}")
    extra = {k: v for k, v in obj.items() if k not in CORRECTION_FIELDS}
    return Correction(id=str(news_id).strip(), label=label, record=record, extra=extra)


def news_text(record: InputRecord) -> NewsText | None:
    """The id, text and label of an output/review record; ``None`` for a record that is not one (no key, not
    a JSON object, no text)."""
    if record.key is None or record.value is None:
        return None
    try:
        news_id = record.key.decode("utf-8")
        obj = json.loads(record.value)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    parts = [obj[name].strip() for name in TEXT_FIELDS if isinstance(obj.get(name), str)]
    text = "\n".join(p for p in parts if p)  # as stream.codec joins title and content for the classifier
    if not text:
        return None
    sentiment = obj.get(SENTIMENT_FIELD) if isinstance(obj.get(SENTIMENT_FIELD), dict) else {}
    version = sentiment.get("model_version") or header(record.headers, HEADER_MODEL_VERSION)
    label = sentiment.get("label")
    return NewsText(id=news_id, text=text, predicted_label=label if isinstance(label, str) else None,
                    model_version=version if isinstance(version, str) else None, where=record.where)


def index_texts(records: Iterable[InputRecord]) -> dict[str, NewsText]:
    """id → the latest labelled record of that id (by offset within its partition; the last topic given wins
    a tie, so pass the output topic last)."""
    out: dict[str, NewsText] = {}
    for r in records:
        t = news_text(r)
        if t is not None:
            out[t.id] = t
    return out


def triage(records: Iterable[InputRecord], texts: Mapping[str, NewsText], labels: Sequence[str]) -> Triage:
    """Parse every correction, join it with its text, keep the latest valid one of each id."""
    result = Triage()
    latest: dict[str, tuple[Correction, NewsText]] = {}
    valid = 0
    for record in records:
        result.read += 1
        try:
            c = parse_correction(record, labels)
            text = texts.get(c.id)
            if text is None:
                raise UnknownIdError(f"no labelled record has id {c.id!r} (searched the output and review "
                                     "topics): correct a record the stream labelled, by its id (the key of its "
                                     "output record)")
        except RecordError as e:
            result.dead.append((record, e))
            continue
        valid += 1
        if c.id not in latest or c.order > latest[c.id][0].order:
            latest[c.id] = (c, text)
    result.superseded = valid - len(latest)
    for c, t in sorted(latest.values(), key=lambda ct: ct[0].order):
        result.corrections.append(LabelledCorrection(
            id=c.id, label=c.label, text=t.text, predicted_label=t.predicted_label, model_version=t.model_version,
            where=c.record.where, corrected_at_ms=c.record.timestamp_ms, extra=c.extra))
    return result


# ---------------------------------------------------------------------------------------------- Kafka
@dataclass
class TopicSnapshot:
    """Every record of a topic up to its end at the time of reading, and those ends (offset per partition)."""

    topic: str
    records: list[InputRecord]
    end_offsets: dict[int, int]


def read_topic(common: Mapping[str, Any], topic: str, *, timeout_s: float = 30.0,
               missing_ok: bool = False) -> TopicSnapshot:
    """Read ``topic`` from the beginning up to the high watermark of every partition (no consumer group).

    A topic that does not exist is an empty snapshot with ``missing_ok``, else a ``StreamError``."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(client_id="finsent-learn", group_id=None, enable_auto_commit=False, **common)
    try:
        found = time.monotonic() + min(10.0, timeout_s)
        while not (parts := consumer.partitions_for_topic(topic)):
            if topic not in consumer.topics() or time.monotonic() > found:
                if missing_ok:
                    return TopicSnapshot(topic, [], {})
                raise StreamError(f"topic {topic} does not exist: check the topic settings (is the stream running "
                                  "with this output_topic?)")
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[InputRecord] = []
        deadline = time.monotonic() + timeout_s
        while True:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(InputRecord.from_consumer_record(r) for r in batch)
            # high watermarks come from fetch responses (Tansu's ListOffsets(latest) is not reliable)
            if all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                   for tp in tps):
                break
            if time.monotonic() > deadline:
                raise StreamError(f"reading {topic} did not reach its end within {timeout_s:g} s: raise "
                                  "read_timeout_s, or check the broker")
        ends = {tp.partition: consumer.position(tp) for tp in tps}
        return TopicSnapshot(topic, records, ends)
    finally:
        consumer.close(autocommit=False)


@dataclass
class CorrectionsSnapshot:
    """The result of :func:`collect_corrections`."""

    triage: Triage
    corrections_topic: str
    end_offsets: dict[int, int]
    #: dead letters sent to the DLQ by this run (records after the committed position)
    dlq_sent: int
    #: dead records at or before the committed position (sent to the DLQ by an earlier run)
    dlq_known: int
    text_records: dict[str, int]

    def summary(self) -> dict[str, Any]:
        return {"corrections_topic": self.corrections_topic, "read": self.triage.read,
                "usable": len(self.triage.corrections), "superseded": self.triage.superseded,
                "dead": self.triage.dead_counts(), "dlq_sent": self.dlq_sent, "dlq_known": self.dlq_known,
                "end_offsets": {str(k): v for k, v in sorted(self.end_offsets.items())},
                "text_records": self.text_records}


def committed_positions(common: Mapping[str, Any], group_id: str, topic: str, partitions: Iterable[int]
                        ) -> dict[int, int]:
    """The committed offset of ``group_id`` on each partition (0 where nothing is committed)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(client_id="finsent-learn", group_id=group_id, enable_auto_commit=False, **common)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in partitions}
    finally:
        consumer.close(autocommit=False)


def commit_positions(common: Mapping[str, Any], group_id: str, topic: str, positions: Mapping[int, int]) -> None:
    """Commit ``positions`` (partition → next offset) for ``group_id`` without joining the group."""
    from kafka import KafkaConsumer
    from kafka.structs import OffsetAndMetadata, TopicPartition

    if not positions:
        return
    consumer = KafkaConsumer(client_id="finsent-learn", group_id=group_id, enable_auto_commit=False, **common)
    try:
        tps = [TopicPartition(topic, p) for p in positions]
        consumer.assign(tps)
        consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in positions.items()})
    finally:
        consumer.close(autocommit=False)


def collect_corrections(
    common: Mapping[str, Any],
    *,
    corrections_topic: str,
    dlq_topic: str,
    text_topics: Sequence[str],
    labels: Sequence[str],
    group_id: str,
    timeout_s: float = 30.0,
    create_topics: bool = True,
    partitions: int = 4,
) -> CorrectionsSnapshot:
    """Read the corrections and the labelled records, triage, send new dead letters to ``dlq_topic``
    (acks=all) and then commit the position of ``group_id`` at the end of what was read.

    ``text_topics``: where texts are looked up, in order (a later topic's record of an id wins); a missing
    topic is skipped (e.g. the review topic when review is off), but at least one must exist."""
    from kafka import KafkaProducer

    if create_topics:
        from stream.admin import ensure_topics

        ensure_topics(common, [corrections_topic, dlq_topic], partitions=partitions)
    snap = read_topic(common, corrections_topic, timeout_s=timeout_s, missing_ok=True)
    text_records: dict[str, int] = {}
    texts: list[InputRecord] = []
    for topic in text_topics:
        t = read_topic(common, topic, timeout_s=timeout_s, missing_ok=True)
        if t.end_offsets:
            text_records[topic] = len(t.records)
            texts.extend(t.records)
    if not text_records:
        raise StreamError(f"none of the text topics {list(text_topics)} exists: point output_topic (or "
                          "text_topics) at the topics the stream writes")
    result = triage(snap.records, index_texts(texts), labels)
    cursor = committed_positions(common, group_id, corrections_topic, snap.end_offsets)
    new_dead = [(r, e) for r, e in result.dead if r.offset >= cursor.get(r.partition, 0)]
    if new_dead:
        producer = KafkaProducer(client_id="finsent-learn-dlq", acks="all", enable_idempotence=True, linger_ms=5,
                                 **common)
        try:
            now = time.time()
            futures = []
            for record, error in new_dead:
                out = encode_dlq(record, error, failed_at=now)
                futures.append(producer.send(dlq_topic, key=out.key, value=out.value, headers=out.headers))
                log.warning("%s: %s: %s", record.where, error.code, error)
            producer.flush()
            for f in futures:
                f.get(timeout=30)
        finally:
            producer.close()
    commit_positions(common, group_id, corrections_topic, snap.end_offsets)
    log.info("corrections in %s: %d read, %d usable (%d superseded), %d dead (%d new → %s)", corrections_topic,
             result.read, len(result.corrections), result.superseded, len(result.dead), len(new_dead), dlq_topic)
    return CorrectionsSnapshot(triage=result, corrections_topic=corrections_topic, end_offsets=snap.end_offsets,
                               dlq_sent=len(new_dead), dlq_known=len(result.dead) - len(new_dead),
                               text_records=text_records)
