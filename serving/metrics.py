"""Custom replica metrics, exported through Ray's Prometheus endpoint next to Serve's built-in ones.

Serve adds the ``deployment``, ``replica``, ``application`` (and ``route``) tags to each metric itself. Ray
prefixes exported names with ``ray_``: e.g. ``ray_finsent_predictions_total{label="利多",...}``.

The same numbers are also kept as plain counters (``ReplicaMetrics.snapshot``) so that tests and the
``stats`` handle method can read them without scraping Prometheus.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)

#: Ray metric names, descriptions and tag values must be ASCII: the default labels are exported under these names, others as label_<i>
LABEL_TAGS: dict[str, str] = {"其他": "neutral", "利多": "bullish", "利空": "bearish"}

#: bucket boundaries of the batch-size histogram (texts per model forward)
BATCH_SIZE_BOUNDARIES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
#: bucket boundaries of the per-batch model latency histogram, milliseconds
BATCH_LATENCY_MS_BOUNDARIES: list[float] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


class ReplicaMetrics:
    """Prometheus metrics (via ``ray.serve.metrics``) plus in-process totals of one replica."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.predictions = metrics.Counter(
            "finsent_predictions_total",
            description="Texts classified, per predicted label (neutral, bullish, bearish; see LABEL_TAGS) and "
            "model version.",
            tag_keys=("label", "model_version"),
        )
        self.batch_size = metrics.Histogram(
            "finsent_batch_size",
            description="Texts per @serve.batch call (each call is one model forward).",
            boundaries=BATCH_SIZE_BOUNDARIES,
        )
        self.batch_latency_ms = metrics.Histogram(
            "finsent_batch_latency_ms",
            description="Model time per batch (tokenize + forward), milliseconds.",
            boundaries=BATCH_LATENCY_MS_BOUNDARIES,
        )
        self.forward_calls = metrics.Counter(
            "finsent_forward_calls_total", description="Model forward passes for predictions (explain passes not counted)."
        )
        self.rejected = metrics.Counter(
            "finsent_rejected_requests_total",
            description="Requests answered with a 4xx, per reason code.",
            tag_keys=("reason",),
        )
        self.model_swaps = metrics.Counter(
            "finsent_model_swaps_total", description="Hot swaps of the model through user_config."
        )
        self.drift_statistic = metrics.Gauge(
            "finsent_drift_statistic",
            description="Drift statistic of this replica's predictions against the reference at the window's "
            "last comparison (label_psi, label_chi2, confidence_ks, score_ks, confidence_drop).",
            tag_keys=("window", "statistic"),
        )
        self.drift_alerts = metrics.Counter(
            "finsent_drift_alerts_total",
            description="Drift alerts fired by this replica's monitor, per window and statistic.",
            tag_keys=("window", "statistic"),
        )
        # plain totals for stats()
        self.n_forward = 0
        self.n_batches = 0
        self.n_texts = 0
        self.n_explained = 0
        self.n_swaps = 0
        self.labels: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self.rejections: Counter[str] = Counter()

    def record_batch(self, size: int, forward_calls: int, latency_ms: float) -> None:
        self.n_batches += 1
        self.batch_sizes[size] += 1
        self._safe(self.batch_size.observe, size)
        self._safe(self.batch_latency_ms.observe, latency_ms)
        self.record_forward(forward_calls)

    def record_forward(self, n: int) -> None:
        if n > 0:
            self.n_forward += n
            self._safe(self.forward_calls.inc, n)

    def record_predictions(self, predictions: list[dict[str, Any]], labels: tuple[str, ...]) -> None:
        for p in predictions:
            self.labels[p["label"]] += 1
        self.n_texts += len(predictions)
        per_label: Counter[str] = Counter(p["label"] for p in predictions)
        version = predictions[0]["model_version"] if predictions else ""
        for name, n in per_label.items():
            tag = LABEL_TAGS.get(name) or f"label_{labels.index(name) if name in labels else 'x'}"
            self._safe(self.predictions.inc, n, tags={"label": tag, "model_version": _ascii(version)})

    def record_rejection(self, reason: str) -> None:
        self.rejections[reason] += 1
        self._safe(self.rejected.inc, tags={"reason": reason})

    def record_drift(self, statistics: dict[tuple[str, str], float], alerts: list[dict[str, Any]]) -> None:
        """The drift monitor's latest statistics (``{(window, statistic): value}``) and the alerts it fired."""
        for (window, statistic), value in statistics.items():
            self._safe(self.drift_statistic.set, value, tags={"window": window, "statistic": statistic})
        for a in alerts:
            self._safe(self.drift_alerts.inc, tags={"window": a["window"]["kind"], "statistic": a["statistic"]})

    def record_swap(self) -> None:
        self.n_swaps += 1
        self._safe(self.model_swaps.inc)

    @staticmethod
    def _safe(fn: Any, *args: Any, **kwargs: Any) -> None:
        """Metrics are best effort: an export problem is logged, never fails a request."""
        try:
            fn(*args, **kwargs)
        except Exception:
            log.warning("recording metric failed", exc_info=True)

    def snapshot(self) -> dict[str, Any]:
        return {
            "forward_calls": self.n_forward,
            "batches": self.n_batches,
            "texts": self.n_texts,
            "explained_texts": self.n_explained,
            "model_swaps": self.n_swaps,
            "labels": dict(self.labels),
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
            "rejections": dict(self.rejections),
        }


def _ascii(value: str) -> str:
    return value.encode("ascii", "backslashreplace").decode("ascii")
