"""Prometheus metrics of one stream worker (own registry, so several runners can live in one process)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

#: end-to-end latency buckets (seconds): from a few ms (idle stream) to minutes (a backlog being drained)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class StreamMetrics:
    """Throughput, end-to-end latency, lag per partition, labels produced, DLQ records, batch latency, review
    records, drift statistics and alerts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._server: Any = None
        r = self.registry
        self.records = Counter(
            "finsent_stream_records", "input records handled (labelled or sent to the DLQ)", ["topic"], registry=r
        )
        self.labels = Counter("finsent_stream_labels", "labelled records produced, by label", ["label"], registry=r)
        self.dlq = Counter("finsent_stream_dlq", "records sent to the dead-letter topic, by error", ["error"], registry=r)
        self.retries = Counter("finsent_stream_classifier_retries", "classifier calls retried", registry=r)
        self.e2e_latency = Histogram(
            "finsent_stream_e2e_latency_seconds",
            "record timestamp → output acknowledged by the broker",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_latency = Histogram(
            "finsent_stream_batch_latency_seconds",
            "poll returned → batch produced, flushed and committed",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "finsent_stream_consumer_lag", "records behind the partition's high watermark", ["topic", "partition"],
            registry=r,
        )

        self.review = Counter(
            "finsent_stream_review", "labelled records also sent to the review topic (top probability below "
            "review_threshold)", registry=r,
        )
        self.drift_statistic = Gauge(
            "finsent_stream_drift_statistic",
            "drift statistic of a window against the reference at its last comparison (label_psi, label_chi2, "
            "confidence_ks, score_ks, confidence_drop)", ["window", "statistic"], registry=r,
        )
        self.drift_window_records = Gauge(
            "finsent_stream_drift_window_records", "predictions in the drift window now", ["window"], registry=r
        )
        self.drift_alerts = Counter(
            "finsent_stream_drift_alerts", "drift alerts fired, by window and statistic", ["window", "statistic"],
            registry=r,
        )

    def set_drift(self, statistics: Mapping[tuple[str, str], float], window_records: Mapping[str, int]) -> None:
        """The drift monitor's latest statistics (``{(window, statistic): value}``) and window sizes."""
        for (window, statistic), value in statistics.items():
            self.drift_statistic.labels(window=window, statistic=statistic).set(value)
        for window, n in window_records.items():
            self.drift_window_records.labels(window=window).set(n)

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic=topic, partition=str(partition)).set(lag)

    def drop_lag(self, partitions: list[tuple[str, int]]) -> None:
        """Forget partitions this worker no longer owns (their lag is another worker's now)."""
        for topic, partition in partitions:
            try:
                self.lag.remove(topic, str(partition))
            except KeyError:
                pass

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose ``/metrics`` on ``host:port`` (port 0 = any free one); returns the bound port."""
        self.close()
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_address[1])
        log.info("metrics at http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        """Stop the metrics server, if one runs (the values stay readable in ``registry``)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
