"""Command-line tools around the stream: ``produce`` (file → topic), ``tail`` (labelled records as a live
table), ``replay-dlq`` (dead letters → input topic, after a fix).

Each takes ``common``: kafka-python settings shared by every client (``bootstrap_servers`` plus any
security settings), as ``StreamConfig.kafka_common()`` builds them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from stream.codec import (
    HEADER_ERROR,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    header,
    strip_dlq_headers,
)
from stream.errors import StreamError

log = logging.getLogger(__name__)

#: separator of the labelled text format (``label|||text``), as in classifier.data
SEPARATOR = "|||"
#: header a replayed record carries: where in the DLQ it came from
HEADER_REPLAYED_FROM = "finsent-replayed-from"


# ---------------------------------------------------------------------------------------------- produce
@dataclass(frozen=True)
class FileRecord:
    key: bytes | None
    value: bytes


def read_news_file(path: str | Path) -> Iterator[FileRecord]:
    """Records of a news file, in file order.

    ``.jsonl``: one JSON object per line, sent byte for byte (a line that is not valid JSON is sent as well —
    the stream puts it in the DLQ); key = its ``id``. Anything else is the labelled text format
    ``label|||text``: each line becomes ``{"id": "<file stem>-<line>", "content": text, "gold_label": label}``
    (a line without ``|||`` is all text). Keys are stable, so producing a file twice overwrites, not adds.
    """
    p = Path(path)
    if not p.is_file():
        raise StreamError(f"news file {p} not found: pass an existing .jsonl or label|||text file with --file")
    is_jsonl = p.suffix.lower() in (".jsonl", ".ndjson")
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            if is_jsonl:
                yield FileRecord(key=_json_id(line), value=line)
                continue
            text = line.decode("utf-8", errors="replace")
            label, sep, rest = text.partition(SEPARATOR)
            obj: dict[str, Any] = {"id": f"{p.stem}-{lineno}", "content": rest if sep else text}
            if sep:
                obj["gold_label"] = label.strip()
            yield FileRecord(
                key=obj["id"].encode(), value=json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
            )


def _json_id(line: bytes) -> bytes | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) and not isinstance(obj.get("id"), bool):
        return str(obj["id"]).encode()
    return None


def produce_file(
    common: Mapping[str, Any],
    path: str | Path,
    topic: str,
    *,
    rate: float | None = None,
    limit: int | None = None,
    partitions: int | None = None,
) -> int:
    """Send a news file to ``topic`` (acks=all), at most ``rate`` records/s; returns the count sent."""
    from kafka import KafkaProducer

    if rate is not None and rate <= 0:
        raise StreamError(f"rate={rate} must be > 0 records/s (leave it out for full speed)")
    if partitions is not None:
        from stream.admin import ensure_topics

        ensure_topics(common, [topic], partitions=partitions)
    producer = KafkaProducer(client_id="finsent-produce", acks="all", enable_idempotence=True, linger_ms=5, **common)
    sent = 0
    started = time.monotonic()
    try:
        for rec in read_news_file(path):
            if limit is not None and sent >= limit:
                break
            if rate is not None:
                wait = started + sent / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            producer.send(topic, key=rec.key, value=rec.value)
            sent += 1
        producer.flush()
    finally:
        producer.close()
    log.info("produced %d records from %s to %s in %.1f s", sent, path, topic, time.monotonic() - started)
    return sent


# ---------------------------------------------------------------------------------------------- reading
def _assign_all(consumer: Any, topic: str, timeout_s: float = 10.0) -> list[Any]:
    from kafka.structs import TopicPartition

    deadline = time.monotonic() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            return tps
        if time.monotonic() > deadline:
            raise StreamError(f"topic {topic} does not exist (or has no partitions): check --topic")
        time.sleep(0.2)


def _caught_up(consumer: Any, tps: list[Any]) -> bool:
    """Every partition read up to its high watermark (as reported by the last fetch).

    The high watermark comes from fetch responses: Tansu's ListOffsets(latest) answer is not reliable."""
    for tp in tps:
        hw = consumer.highwater(tp)
        if hw is None or consumer.position(tp) < hw:
            return False
    return True


# ---------------------------------------------------------------------------------------------- tail
def _char_width(c: str) -> int:
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes (CJK characters take two)."""
    return sum(_char_width(c) for c in text)


def fit(text: str, width: int) -> str:
    """``text`` on one line, cut (with …) or padded to exactly ``width`` terminal columns."""
    text = " ".join(text.split())
    used = display_width(text)
    if used <= width:
        return text + " " * (width - used)
    out, used = [], 0
    for c in text:
        if used + _char_width(c) > width - 1:
            break
        out.append(c)
        used += _char_width(c)
    return "".join(out) + "…" + " " * (width - 1 - used)


TAIL_COLUMNS = (("where", 12), ("key", 16), ("label", 6), ("score", 7), ("text", 60))


def format_row(values: list[str]) -> str:
    return " ".join(fit(v, w) for v, (_, w) in zip(values, TAIL_COLUMNS, strict=True)).rstrip()


def tail_row(partition: int, offset: int, key: bytes | None, value: bytes | None) -> list[str]:
    """One table row of a labelled record (or of whatever else the topic holds)."""
    key_s = key.decode("utf-8", errors="replace") if key is not None else "-"
    try:
        obj = json.loads(value or b"")
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        s = obj.get("sentiment") if isinstance(obj.get("sentiment"), dict) else {}
        text = "\n".join(str(obj[k]) for k in ("title", "content") if obj.get(k))
        score = s.get("score")
        return [f"{partition}:{offset}", key_s, str(s.get("label", "-")),
                f"{score:+.3f}" if isinstance(score, (int, float)) else "-", text]
    return [f"{partition}:{offset}", key_s, "-", "-", (value or b"").decode("utf-8", errors="replace")]


def tail(
    common: Mapping[str, Any],
    topic: str,
    *,
    from_beginning: bool = True,
    limit: int | None = None,
    idle_exit_s: float | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print records of ``topic`` as a table (or raw JSON lines) as they arrive; returns the count printed.

    Reads without a consumer group (nothing committed, no join delay). Stops after ``limit`` records, after
    ``idle_exit_s`` seconds without new records, or on Ctrl-C."""
    from kafka import KafkaConsumer

    out = out if out is not None else sys.stdout
    consumer = KafkaConsumer(client_id="finsent-tail", group_id=None, enable_auto_commit=False, **common)
    printed = 0
    try:
        tps = _assign_all(consumer, topic)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        if not as_json:
            out.write(format_row([name for name, _ in TAIL_COLUMNS]) + "\n")
            out.write(format_row(["-" * w for _, w in TAIL_COLUMNS]) + "\n")
            out.flush()
        last = time.monotonic()
        while limit is None or printed < limit:
            polled = consumer.poll(timeout_ms=500)
            recs = sorted((r for batch in polled.values() for r in batch), key=lambda r: r.timestamp)
            for r in recs:
                if limit is not None and printed >= limit:
                    break
                if as_json:
                    out.write((r.value or b"null").decode("utf-8", errors="replace") + "\n")
                else:
                    out.write(format_row(tail_row(r.partition, r.offset, r.key, r.value)) + "\n")
                printed += 1
            if recs:
                out.flush()
                last = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close(autocommit=False)
    return printed


# ---------------------------------------------------------------------------------------------- replay
def replay_dlq(
    common: Mapping[str, Any],
    dlq_topic: str,
    *,
    to_topic: str | None = None,
    error: str | None = None,
    group_id: str = "finsent-replay-dlq",
    from_beginning: bool = False,
    idle_timeout_s: float = 10.0,
) -> dict[str, int]:
    """Send dead letters back to their source topic (or ``to_topic``) with their original key, value and
    headers, then commit the cursor (consumer group ``group_id``) so the next replay starts after them.

    ``error`` replays only records with that ``finsent-error`` code; the others are passed over, and the
    cursor still moves past them (``from_beginning`` reads the whole DLQ again). Returns counts."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(
        client_id="finsent-replay-dlq", group_id=group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", **common,
    )
    producer = KafkaProducer(client_id="finsent-replay-dlq", acks="all", enable_idempotence=True, **common)
    counts = {"read": 0, "replayed": 0, "skipped": 0}
    try:
        tps = _assign_all(consumer, dlq_topic)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        last = time.monotonic()
        positions: dict[Any, int] = {}
        while not _caught_up(consumer, tps) and time.monotonic() - last < idle_timeout_s:
            polled = consumer.poll(timeout_ms=500)
            for tp, recs in polled.items():
                for r in recs:
                    counts["read"] += 1
                    headers = list(r.headers or [])
                    target = to_topic or header(headers, HEADER_SOURCE_TOPIC)
                    if (error is not None and header(headers, HEADER_ERROR) != error) or not target:
                        counts["skipped"] += 1
                        continue
                    origin = f"{dlq_topic}[{r.partition}]@{r.offset}"
                    src = f"{header(headers, HEADER_SOURCE_TOPIC)}[{header(headers, HEADER_SOURCE_PARTITION)}]" \
                          f"@{header(headers, HEADER_SOURCE_OFFSET)}"
                    log.debug("replaying %s (from %s) to %s", origin, src, target)
                    replay_headers = [(k, v) for k, v in strip_dlq_headers(headers) if k != HEADER_REPLAYED_FROM]
                    replay_headers.append((HEADER_REPLAYED_FROM, origin.encode()))
                    producer.send(target, key=r.key, value=r.value, headers=replay_headers)
                    counts["replayed"] += 1
                if recs:
                    positions[tp] = recs[-1].offset + 1
                    last = time.monotonic()
        producer.flush()
        if positions:
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in positions.items()})
    finally:
        producer.close()
        consumer.close(autocommit=False)
    log.info("replay-dlq %s: read %d, replayed %d, skipped %d", dlq_topic, counts["read"], counts["replayed"],
             counts["skipped"])
    return counts
