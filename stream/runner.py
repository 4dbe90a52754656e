"""The stream runner: a consumer-group worker that labels news and never loses a record.

One loop, one batch at a time::

    poll ≤ batch_size records ─► decode (codec) ─► classify (with retries) ─► encode ─► send outputs + DLQ
        ─► flush (acks=all, idempotent producer) ─► commit the batch's offsets ─► poll ...

Within a batch, texts are classified in chunks of ``predict_batch_size`` and each chunk's outputs are sent
at once, so the broker acknowledges them while the next chunk is classified; the commit waits for all.

Drift and review (``classifier.drift``, ``stream.review``): every labelled batch also feeds the drift monitor;
an alert it fires goes to ``<output>.alerts`` (and a WARNING line), and a record whose top probability is
below ``review_threshold`` is also produced to ``<output>.review``. Both are sent with the batch's outputs
and acknowledged before the commit, so they share the batch's delivery guarantee.

Offsets are committed only after every output, review copy, alert and dead letter of the batch is
acknowledged, so a crash at any point re-delivers the uncommitted records: at-least-once, and because the
output key is the news id the duplicates are the same record again. Rebalances: kafka-python runs the
rebalance listener only inside ``poll()``, and a batch is always produced and committed before the next poll,
so at revocation no batch is in flight and nothing produced is uncommitted (a failed commit is reported and
the records come again). If a batch's outputs are not acknowledged the runner rewinds to the batch's start
and stops without committing (``ProduceError``); its drift bookkeeping is not undone (the monitor of a
restarted runner starts afresh anyway).

``exactly_once=True`` instead wraps outputs and offsets in one transaction per batch
(``send_offsets_to_transaction``); that needs a broker with transactions (Apache Kafka). The embedded Tansu
broker accepts the calls but does not isolate aborted records, so only at-least-once is tested here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classifier.drift import DriftMonitor, alert_json, resolve_reference
from stream.classify import Classify
from stream.codec import (
    InputRecord,
    NewsItem,
    OutputRecord,
    as_record_error,
    decode,
    encode_dlq,
    encode_output,
)
from stream.config import StreamConfig
from stream.errors import ClassifierError, CommitError, ProduceError, RecordError, StreamError
from stream.metrics import StreamMetrics
from stream.review import needs_review, review_record

log = logging.getLogger(__name__)

#: the one error callback: every error of the runner (bad records, produce, commit) goes through it, with
#: the record it concerns (None for errors that concern the whole batch)
ErrorCallback = Callable[[StreamError, "InputRecord | None"], None]


def log_error(error: StreamError, record: InputRecord | None) -> None:
    """Default error callback: one warning naming topic, partition, offset and the error code."""
    where = record.where if record is not None else "batch"
    log.warning("%s: %s: %s", where, error.code, error)


@dataclass
class Transformed:
    """A batch after decode → classify → encode: outputs (with their labels) and dead letters."""

    outputs: list[OutputRecord] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    #: the classifier's prediction of each output (what the drift monitor reads)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    #: review copies of the outputs whose top probability is below review_threshold
    review: list[OutputRecord] = field(default_factory=list)
    dead: list[tuple[InputRecord, RecordError, OutputRecord]] = field(default_factory=list)


@dataclass
class BatchResult:
    """What one ``process()`` did (also logged as the per-batch line)."""

    records: int
    labelled: int
    dlq: int
    latency_s: float
    lag: int | None
    review: int = 0
    alerts: int = 0


@dataclass
class RunSummary:
    """Totals of one ``run()`` (what a test or benchmark checks)."""

    batches: int = 0
    records: int = 0
    labelled: int = 0
    dlq: int = 0
    review: int = 0
    alerts: int = 0
    commit_failures: int = 0
    assignments: list[list[tuple[str, int]]] = field(default_factory=list)


class StreamRunner:
    """A consumer-group worker: ``setup() → run() → cleanup()``; ``stop()`` asks it to finish (any thread).

    ``classify`` is the classifier seam (``stream.classify.build_classify`` builds the usual ones);
    ``on_error`` receives every error with its record; ``worker`` only names this worker in logs.
    """

    def __init__(
        self,
        config: StreamConfig,
        classify: Classify,
        *,
        on_error: ErrorCallback = log_error,
        worker: int = 0,
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.config = config
        self.classify = classify
        self.on_error = on_error
        self.worker = worker
        self.metrics = metrics if metrics is not None else StreamMetrics()
        self.summary = RunSummary()
        self.review_topic = config.review_topic or f"{config.output_topic}.review"
        self.alerts_topic = config.drift.alerts_topic or f"{config.output_topic}.alerts"
        #: the drift monitor of this worker's predictions (None when drift.enabled=false)
        self.drift: DriftMonitor | None = None
        if config.drift.enabled:
            drift = config.drift
            if drift.reference_file and config.workers > 1:  # each worker learns from its own partitions
                path = Path(drift.reference_file)
                drift = drift.model_copy(update={"reference_file": str(path.with_name(
                    f"{path.stem}.{worker}{path.suffix}"))})
            self.drift = DriftMonitor(drift, resolve_reference(drift, config.model_dir))
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._consumer: Any = None
        self._producer: Any = None
        self._assigned: set[tuple[str, int]] = set()
        self._assigned_at: float | None = None
        self._last_record_at: float | None = None
        self._lag_complete = False

    # ------------------------------------------------------------------------------------------ lifecycle
    def setup(self) -> None:
        """Create missing topics, the producer, the consumer (subscribed), and the metrics server."""
        from kafka import KafkaConsumer, KafkaProducer

        cfg = self.config
        common = cfg.kafka_common()
        if cfg.create_topics:
            from stream.admin import ensure_topics

            ensure_topics(
                common, [cfg.input_topic, cfg.output_topic, str(cfg.dlq_topic)]
                + ([self.review_topic] if cfg.review_threshold else []),
                partitions=cfg.partitions, replication_factor=cfg.replication_factor,
            )
            if self.drift is not None:  # one partition: alerts stay in the order they fired
                ensure_topics(common, [self.alerts_topic], partitions=1, replication_factor=cfg.replication_factor)
        producer_opts: dict[str, Any] = {
            "client_id": f"{cfg.client_id}-producer",
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": cfg.linger_ms,
            "compression_type": None if cfg.compression_type == "none" else cfg.compression_type,
        }
        if cfg.exactly_once:
            producer_opts["transactional_id"] = cfg.transactional_id
        self._producer = KafkaProducer(**common, **producer_opts)
        if cfg.exactly_once:
            self._producer.init_transactions()
        self._consumer = KafkaConsumer(
            **common,
            client_id=cfg.client_id,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            max_poll_records=cfg.batch_size,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            isolation_level="read_committed" if cfg.exactly_once else "read_uncommitted",
        )
        self._consumer.subscribe([cfg.input_topic], listener=_RebalanceListener(self))
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
        log.info(
            "worker %d: %s → %s (dlq %s), group %s, batch %d%s; review %s; drift alarm %s",
            self.worker, cfg.input_topic, cfg.output_topic, cfg.dlq_topic, cfg.group_id, cfg.batch_size,
            ", exactly-once" if cfg.exactly_once else "",
            f"top probability < {cfg.review_threshold:g} → {self.review_topic}" if cfg.review_threshold else "off",
            f"→ {self.alerts_topic}" if self.drift is not None else "off",
        )

    def run(self) -> RunSummary:
        """Poll and process batches until ``stop()`` (or ``idle_exit_s``); always cleans up."""
        if self._consumer is None:
            self.setup()
        try:
            while not self._stop.is_set():
                records = self.poll()
                if records:
                    self.process(records)
                elif self._idle_done():
                    log.info("worker %d: idle for %.1f s and caught up: stopping", self.worker,
                             self.config.idle_exit_s)
                    break
        finally:
            self.cleanup()
        return self.summary

    def stop(self) -> None:
        """Finish the current batch (produce, flush, commit), then leave the group and close."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def cleanup(self) -> None:
        """Leave the group (partitions move on at once) and close the clients. Commits nothing."""
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception:  # closing must not hide the error that brought us here
                log.warning("worker %d: closing the consumer failed", self.worker, exc_info=True)
        if producer is not None:
            try:
                producer.flush(timeout=self.config.flush_timeout_s)
                producer.close(timeout=self.config.flush_timeout_s)
            except Exception:
                log.warning("worker %d: closing the producer failed", self.worker, exc_info=True)
        self.metrics.close()
        log.info(
            "worker %d: closed after %d records (%d labelled, %d dlq) in %d batches",
            self.worker, self.summary.records, self.summary.labelled, self.summary.dlq, self.summary.batches,
        )

    # ------------------------------------------------------------------------------------------ steps
    def poll(self) -> list[InputRecord]:
        polled = self._consumer.poll(timeout_ms=self.config.poll_timeout_ms, max_records=self.config.batch_size)
        records = [InputRecord.from_consumer_record(r) for batch in polled.values() for r in batch]
        if records:
            self._last_record_at = time.monotonic()
        return records

    def process(self, records: list[InputRecord]) -> BatchResult:
        """Label one polled batch, produce it, and commit its offsets (the whole at-least-once step).

        The batch is classified in chunks and each chunk's outputs are sent as soon as they are labelled, so
        the broker acknowledges chunk k while chunk k+1 is classified; the commit still waits for all."""
        started = time.monotonic()
        batch = Transformed()
        futures: list[Any] = []
        producer = self._producer
        if self.config.exactly_once:
            producer.begin_transaction()
        cfg = self.config
        try:
            for outputs, review in self._label_chunks(records, batch):
                futures += [producer.send(cfg.output_topic, key=o.key, value=o.value, headers=o.headers)
                            for o in outputs]
                futures += [producer.send(self.review_topic, key=o.key, value=o.value, headers=o.headers)
                            for o in review]
            alerts = self._watch_drift(batch)
            futures += [producer.send(self.alerts_topic, key=key, value=value) for key, value in alerts]
            classified = time.monotonic()
            futures += [producer.send(str(cfg.dlq_topic), key=o.key, value=o.value, headers=o.headers)
                        for _, _, o in batch.dead]
            self._await_acks(records, futures)
        except Exception as e:
            error = self._fail_batch(records, e)
            raise error from e
        except BaseException:  # KeyboardInterrupt (a second signal): abandon the batch, uncommitted
            self._fail_batch(records, None)
            raise
        acked = time.time()
        delivered = time.monotonic()
        self.commit(records)
        latency = time.monotonic() - started
        lag = self._update_lag()
        self._count(records, batch, latency, acked, len(alerts))
        result = BatchResult(len(records), len(batch.outputs), len(batch.dead), latency, lag, len(batch.review),
                             len(alerts))
        log.info(
            "worker %d batch %d: %d records → %d labelled (%d review), %d dlq in %.0f ms (classify %.0f, "
            "acks %.0f, commit %.0f); lag %s",
            self.worker, self.summary.batches, result.records, result.labelled, result.review, result.dlq,
            1000 * latency,
            1000 * (classified - started), 1000 * (delivered - classified), 1000 * (started + latency - delivered),
            "?" if lag is None else (lag if self._lag_complete else f">={lag}"),
        )
        if latency * 1000 > self.config.max_poll_interval_ms / 2:
            log.warning(
                "worker %d: a batch took %.0f s, over half of max_poll_interval_ms=%d: lower batch_size or "
                "raise max_poll_interval_ms before the group evicts this worker",
                self.worker, latency, self.config.max_poll_interval_ms,
            )
        return result

    def transform(self, records: list[InputRecord]) -> Transformed:
        """decode → classify → encode for a whole batch, without producing anything (nor feeding the drift
        monitor). Bad records never raise: they become dead letters (reported through ``on_error``)."""
        batch = Transformed()
        for _ in self._label_chunks(records, batch):
            pass
        return batch

    def _label_chunks(
        self, records: list[InputRecord], batch: Transformed
    ) -> Iterator[tuple[list[OutputRecord], list[OutputRecord]]]:
        """Fill ``batch``; yield each chunk's outputs and review copies as soon as it is labelled. Texts are
        ordered by length so each chunk pads little; with a Serve app the whole batch is one chunk (the
        handle adapter spreads it over concurrent calls itself)."""
        threshold = self.config.review_threshold
        items: list[tuple[InputRecord, NewsItem]] = []
        failed: list[tuple[InputRecord, RecordError]] = []
        for rec in records:
            try:
                items.append((rec, decode(rec, max_text_chars=self.config.max_text_chars)))
            except RecordError as e:
                failed.append((rec, e))
        items.sort(key=lambda pair: len(pair[1].text))
        size = max(1, len(items)) if self.config.serve_app else self.config.predict_batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            predictions = self.classify_texts([item.text for _, item in chunk])
            now = time.time()
            outputs: list[OutputRecord] = []
            review: list[OutputRecord] = []
            for (rec, item), pred in zip(chunk, predictions, strict=True):
                if isinstance(pred, RecordError):
                    failed.append((rec, pred))
                    continue
                try:
                    output = encode_output(item, pred, rec.headers, classified_at=now)
                except RecordError as e:
                    failed.append((rec, e))
                    continue
                outputs.append(output)
                batch.labels.append(str(pred["label"]))
                batch.predictions.append(pred)
                if threshold and needs_review(pred, threshold):
                    review.append(review_record(output, threshold))
            batch.outputs += outputs
            batch.review += review
            yield outputs, review
        now = time.time()
        for rec, err in sorted(failed, key=lambda f: (f[0].partition, f[0].offset)):
            self.on_error(err, rec)
            batch.dead.append((rec, err, encode_dlq(rec, err, failed_at=now)))

    def classify_texts(self, texts: list[str]) -> list[dict[str, Any] | RecordError]:
        """The batch through the classifier with retries; if it still fails, text by text (once each), so
        one poisonous text only sends itself to the DLQ."""
        if not texts:
            return []
        cfg = self.config
        error: BaseException | None = None
        for attempt in range(cfg.retries + 1):
            if attempt:
                self.metrics.retries.inc()
                time.sleep(cfg.retry_backoff_s * 2 ** (attempt - 1))
            try:
                return self._classify_checked(texts)
            except Exception as e:
                error = e
                log.warning("worker %d: classifier failed on %d texts (attempt %d/%d): %s: %s", self.worker,
                            len(texts), attempt + 1, cfg.retries + 1, type(e).__name__, e)
                if _is_input_error(e):
                    break  # a bad text, not a flaky classifier: retrying the batch cannot help
        if len(texts) == 1:
            return [as_record_error(error)] if error is not None else []
        out: list[dict[str, Any] | RecordError] = []
        for text in texts:
            try:
                out.append(self._classify_checked([text])[0])
            except Exception as e:
                out.append(as_record_error(e))
        return out

    def _watch_drift(self, batch: Transformed) -> list[tuple[bytes, bytes]]:
        """Feed the batch's predictions to the drift monitor; each alert it fires becomes a WARNING line and
        an alert record (key ``<client_id>:<window kind>``, so one worker's alerts of one window stay in
        order). A fault in the monitor is logged, never costs the batch."""
        if self.drift is None or not batch.predictions:
            return []
        cfg = self.config
        try:
            alerts = self.drift.update(batch.predictions)
        except Exception:
            log.exception("worker %d: the drift monitor failed on a batch; labelling goes on", self.worker)
            return []
        self.metrics.set_drift(self.drift.gauges(), self.drift.window_records())
        out: list[tuple[bytes, bytes]] = []
        for alert in alerts:
            alert["source"] = {"worker": cfg.client_id, "group": cfg.group_id, "input_topic": cfg.input_topic,
                               "output_topic": cfg.output_topic, "partitions": sorted(
                                   p for t, p in self._assigned if t == cfg.input_topic)}
            window, top = alert["window"], alert["top_shifted_label"]
            log.warning(
                "worker %d: DRIFT ALERT %s window (last %g %s; %d in it): %s = %.3f crossed %g (also %s); label %s "
                "share %.1f%% → %.1f%%; mean confidence %.3f (reference %.3f); model %s",
                self.worker, window["kind"], window["size"], window["unit"], window["records"], alert["statistic"],
                alert["value"], alert["threshold"], ", ".join(alert["crossed"][1:]) or "nothing else", top["label"],
                100 * top["reference_share"], 100 * top["window_share"], alert["mean_confidence"],
                alert["reference"]["mean_confidence"], alert["model_version"],
            )
            self.metrics.drift_alerts.labels(window=window["kind"], statistic=alert["statistic"]).inc()
            out.append((f"{cfg.client_id}:{window['kind']}".encode(), alert_json(alert)))
        return out

    def _classify_checked(self, texts: list[str]) -> list[dict[str, Any]]:
        preds = list(self.classify(texts))
        if len(preds) != len(texts):
            raise ClassifierError(f"classifier returned {len(preds)} results for {len(texts)} texts")
        return preds

    def _await_acks(self, records: list[InputRecord], futures: list[Any]) -> None:
        """Wait until the broker acknowledged every send of the batch (acks=all); in exactly-once mode add
        the batch's offsets to the transaction and commit it."""
        cfg, producer = self.config, self._producer
        if cfg.exactly_once:
            from kafka.structs import OffsetAndMetadata, TopicPartition

            offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in _next_offsets(records).items()}
            producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            producer.commit_transaction()
        else:
            producer.flush(timeout=cfg.flush_timeout_s)
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
            raise ProduceError(f"{len(failed)} of {len(futures)} records not acknowledged: {first!r}")

    def _fail_batch(self, records: list[InputRecord], cause: Exception | None) -> StreamError:
        """The batch cannot be completed: abort its transaction and rewind its partitions, so whoever goes
        on polling reads it again (nothing is skipped); nothing is committed. Returns the error to raise."""
        if self.config.exactly_once:
            try:
                self._producer.abort_transaction()
            except Exception:
                log.warning("worker %d: abort_transaction failed", self.worker, exc_info=True)
        self._rewind(records)
        if isinstance(cause, StreamError):
            error = cause
        else:
            error = ProduceError(f"batch not delivered: {type(cause).__name__}: {cause}")
        if cause is not None:
            self.on_error(error, None)
        return error

    def commit(self, records: list[InputRecord]) -> None:
        """Commit ``last offset + 1`` of each partition in the batch (already done by the transaction in
        exactly-once mode). A failure is reported, not raised: the records are simply delivered again."""
        if self.config.exactly_once:
            return
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in _next_offsets(records).items()}
        try:
            self._consumer.commit(offsets)
        except Exception as e:
            self.summary.commit_failures += 1
            self.on_error(CommitError(f"{type(e).__name__}: {e}; these records will be delivered again"), None)

    # ------------------------------------------------------------------------------------------ helpers
    def _rewind(self, records: list[InputRecord]) -> None:
        """Seek each partition of the batch back to the batch's first offset."""
        from kafka.structs import TopicPartition

        for (topic, partition), first in _first_offsets(records).items():
            try:
                self._consumer.seek(TopicPartition(topic, partition), first)
            except Exception:  # the partition may have been revoked meanwhile: its owner starts from the commit
                log.debug("worker %d: cannot rewind %s[%d]", self.worker, topic, partition, exc_info=True)

    def _count(
        self, records: list[InputRecord], batch: Transformed, latency: float, acked: float, alerts: int
    ) -> None:
        s, m = self.summary, self.metrics
        s.batches += 1
        s.records += len(records)
        s.labelled += len(batch.outputs)
        s.dlq += len(batch.dead)
        s.review += len(batch.review)
        s.alerts += alerts
        m.records.labels(topic=self.config.input_topic).inc(len(records))
        if batch.review:
            m.review.inc(len(batch.review))
        m.batch_latency.observe(latency)
        for label in batch.labels:
            m.labels.labels(label=label).inc()
        for _, err, _ in batch.dead:
            m.dlq.labels(error=err.code).inc()
        for rec in records:
            if rec.timestamp_ms is not None:
                m.e2e_latency.observe(max(0.0, acked - rec.timestamp_ms / 1000))

    def _update_lag(self) -> int | None:
        """Lag per assigned partition (high watermark − position) into the gauge; the total of the partitions
        whose high watermark is known (None if none is: it comes with the first fetch response)."""
        from kafka.structs import TopicPartition

        lags: dict[tuple[str, int], int] = {}
        for topic, partition in sorted(self._assigned):
            tp = TopicPartition(topic, partition)
            try:
                hw = self._consumer.highwater(tp)
                pos = self._consumer.position(tp, timeout_ms=1000)
            except Exception:
                continue
            if hw is not None and pos is not None:
                lags[(topic, partition)] = max(0, hw - pos)
        self.metrics.set_lag(lags)
        self._lag_complete = len(lags) == len(self._assigned)
        return sum(lags.values()) if lags else None

    def _idle_done(self) -> bool:
        idle_s = self.config.idle_exit_s
        if idle_s is None or self._assigned_at is None:
            return False
        since = max(self._assigned_at, self._last_record_at or 0.0)
        if time.monotonic() - since < idle_s:
            return False
        return not self._assigned or (self._update_lag() == 0 and self._lag_complete)

    def _on_revoked(self, partitions: set[tuple[str, int]], lost: bool) -> None:
        # Called only from inside poll(): the previous batch was already produced and committed.
        if not partitions:
            return
        log.info("worker %d: partitions %s %s", self.worker, _fmt(partitions), "lost" if lost else "revoked")
        self.metrics.drop_lag(sorted(partitions))
        self._assigned -= partitions

    def _on_assigned(self, partitions: set[tuple[str, int]]) -> None:
        self._assigned = set(partitions)
        self._assigned_at = time.monotonic()
        self.summary.assignments.append(sorted(partitions))
        log.info("worker %d: assigned partitions %s", self.worker, _fmt(partitions))


class _RebalanceListener:
    """Adapter to kafka-python's ``ConsumerRebalanceListener`` (built lazily: no Kafka import at load)."""

    def __new__(cls, runner: StreamRunner) -> Any:
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                runner._on_revoked({(tp.topic, tp.partition) for tp in revoked}, lost=False)

            def on_partitions_lost(self, lost: Any) -> None:
                runner._on_revoked({(tp.topic, tp.partition) for tp in lost}, lost=True)

            def on_partitions_assigned(self, assigned: Any) -> None:
                runner._on_assigned({(tp.topic, tp.partition) for tp in assigned})

        return Listener()


def _next_offsets(records: list[InputRecord]) -> dict[tuple[str, int], int]:
    """``last offset + 1`` per partition: what to commit after the batch was produced."""
    out: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        out[key] = max(out.get(key, 0), r.offset + 1)
    return out


def _first_offsets(records: list[InputRecord]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        out[key] = min(out.get(key, r.offset), r.offset)
    return out


def _is_input_error(e: BaseException) -> bool:
    from classifier.errors import InputError

    return isinstance(e, InputError)


def _fmt(partitions: set[tuple[str, int]]) -> str:
    by_topic: dict[str, list[int]] = {}
    for t, p in sorted(partitions):
        by_topic.setdefault(t, []).append(p)
    return ", ".join(f"{t}{ps}" for t, ps in by_topic.items()) or "[]"
