"""Drift alarm: compare the live predictions with a reference over sliding windows (pure: no Kafka, no torch).

    monitor = DriftMonitor(DriftConfig(), reference=load_reference(model_dir))   # None: learn from the stream
    alerts = monitor.update(predictor.predict(texts))      # [] or alert dicts (JSON-ready)
    monitor.status()                                        # current statistics of every window

A ``Reference`` holds the predicted-label counts and the distributions (a sorted sample, at most
``reference_sample`` quantiles) of the top probability ("confidence") and of the score P(利多) − P(利空). It
comes from the model directory (``drift_reference.json``, written at training export from held-out
predictions), from ``DriftConfig.reference_file``, or else from the first ``reference_records`` predictions of
the run.

Two windows follow the stream: the last ``window_records`` predictions (count window) and the predictions of
the last ``window_seconds`` seconds (time window). Each window is compared with the reference by:

- ``label_psi``: population stability index of the label shares, Σ (w − r)·ln(w / r) (shares smoothed by
  half a record per label); the rule of thumb reads < 0.1 as stable and > 0.25 as a major shift.
- ``label_chi2`` / ``label_chi2_p``: Pearson's chi-square goodness of fit of the window's label counts to the
  reference shares, and its p-value (alarm off by default: with big windows it flags tiny, harmless shifts).
- ``confidence_ks`` / ``score_ks``: the two-sample Kolmogorov–Smirnov statistic D (largest gap between the
  empirical distribution functions) of the window's and the reference's confidences / scores.
- ``confidence_drop``: reference mean confidence − window mean confidence.

The alarm compares effect sizes (PSI, D, drop), not p-values, so the false-alarm rate does not grow with the
window size. A window fires ONE alert when a statistic crosses its threshold; it re-arms when every statistic is
back below ``rearm_fraction`` × its threshold, or ``cooldown_s`` after it fired (then a shift that persists
fires again, as a reminder). When the model version changes (a hot swap), the windows and alarm states start
over, and a reference that belongs to another model is replaced by one learned from the new model's first
records.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifier.config import Config
from classifier.errors import ConfigError, ModelDirError
from classifier.modeldir import DRIFT_REFERENCE_FILE  # the model directory owns its file names

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: version of the reference JSON layout (``Reference.format``)
REFERENCE_FORMAT = 1
#: additive smoothing (records per label) of label shares in PSI and chi-square: no log(0), no division by 0
LABEL_SMOOTHING = 0.5
WindowKind = Literal["count", "time"]


# ------------------------------------------------------------------------------------------------ config
class DriftConfig(Config):
    """Settings of the drift alarm (``drift.<field>=...`` in a stream config)."""

    enabled: bool = Field(True, description="watch the predictions for drift; false = no monitor, no alerts.")
    window_records: int | None = Field(
        500, description="size of the count window: the last N predictions; null = no count window."
    )
    window_seconds: float | None = Field(
        3600.0,
        description="length of the time window: the predictions of the last T seconds (wall clock at "
        "classification); null = no time window.",
    )
    max_window_records: int = Field(
        50_000, description="most predictions the time window keeps (the oldest go first beyond it)."
    )
    min_window_records: int = Field(
        300,
        description="warm-up: a window is compared with the reference only once it holds this many "
        "predictions (fewer give noisy statistics and false alarms).",
    )
    check_every: int = Field(
        100,
        description="compare a window after this many new predictions, or after a tenth of its size when "
        "that is more (keeps the cost per record small for big time windows).",
    )
    reference_records: int = Field(
        1000,
        description="without a reference file, the first N predictions of the run (of each model version) "
        "become the reference.",
    )
    reference_sample: int = Field(
        2000, description="most confidence and score values a reference keeps (quantiles of all of them)."
    )
    reference_file: str | None = Field(
        None,
        description="JSON reference to use before the model directory's drift_reference.json; a reference "
        "learned from the stream is written here, so a restarted run keeps comparing with it.",
    )
    psi_threshold: float | None = Field(
        0.2, description="alarm when the label PSI reaches this (0.1 moderate, 0.25 major); null = off."
    )
    chi2_p_value: float | None = Field(
        None,
        description="alarm when the label chi-square p-value falls to this (e.g. 1e-6); null = off (reported "
        "only).",
    )
    ks_threshold: float | None = Field(
        0.2,
        description="alarm when the Kolmogorov-Smirnov D of confidences or of scores reaches this; null = off.",
    )
    confidence_drop: float | None = Field(
        0.1,
        description="alarm when the mean top probability falls this much below the reference's; null = off.",
    )
    rearm_fraction: float = Field(
        0.8,
        description="after an alert, a window fires again only once every statistic went back below this "
        "fraction of its threshold (or after cooldown_s).",
    )
    cooldown_s: float | None = Field(
        1800.0,
        description="seconds after which a window that fired re-arms anyway, so a lasting shift is reported "
        "again; null = only when the statistics recover.",
    )
    alerts_topic: str | None = Field(
        None, description="topic of the alert records (stream runner); default <output_topic>.alerts."
    )

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        # messages start with the field name: nested in a command's config they read drift.<field>: ...
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        if self.enabled and self.window_records is None and self.window_seconds is None:
            raise bad("window_records", "and window_seconds are both null: set one (e.g. window_records=500), "
                      "or enabled=false to turn the alarm off")
        for name in ("window_records", "max_window_records", "min_window_records", "check_every",
                     "reference_records", "reference_sample"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad(name, f"must be >= 1; set {name}=N with N >= 1")
        for name in ("window_seconds", "psi_threshold", "ks_threshold", "confidence_drop", "cooldown_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise bad(name, f"must be a number > 0, or null to turn it off; e.g. {name}=0.2")
        if self.ks_threshold is not None and self.ks_threshold > 1:
            raise bad("ks_threshold", "must be <= 1 (D is a difference of two probabilities); e.g. 0.2")
        if self.chi2_p_value is not None and not 0 < self.chi2_p_value < 1:
            raise bad("chi2_p_value", "must be a p-value in (0, 1), e.g. 1e-6, or null")
        if not 0 < self.rearm_fraction <= 1:
            raise bad("rearm_fraction", "must be in (0, 1]; e.g. rearm_fraction=0.8")
        if self.window_records is not None and self.min_window_records > self.window_records:
            raise bad("min_window_records", f"is above window_records={self.window_records}, so the count "
                      "window would never be compared; lower min_window_records")
        if self.min_window_records > self.max_window_records:
            raise bad("min_window_records", f"is above max_window_records={self.max_window_records}; lower it")
        if self.alerts_topic is not None and (not self.alerts_topic.strip() or " " in self.alerts_topic):
            raise bad("alerts_topic", "must be a topic name without spaces, or null for <output_topic>.alerts")
        return self

    @classmethod
    def parse(cls, value: DriftConfig | Mapping[str, Any] | None) -> DriftConfig:
        """``value`` as a ``DriftConfig`` (a mapping is validated; ``ConfigError`` names the field and fix)."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ConfigError(f"drift: expected a mapping of drift settings (got {value!r}); write e.g. "
                              "drift.window_records=500")
        try:
            return cls(**dict(value))
        except ConfigError as e:
            raise ConfigError(f"drift.{e}" if not str(e).startswith(("drift", "unknown")) else str(e)) from None

    def thresholds(self) -> dict[str, float]:
        """The statistics that can fire, with their thresholds (``label_chi2_p`` fires at or BELOW its own)."""
        pairs = {
            "label_psi": self.psi_threshold,
            "label_chi2_p": self.chi2_p_value,
            "confidence_ks": self.ks_threshold,
            "score_ks": self.ks_threshold,
            "confidence_drop": self.confidence_drop,
        }
        return {k: v for k, v in pairs.items() if v is not None}


# ------------------------------------------------------------------------------------------------ reference
class Reference(BaseModel):
    """What "normal" predictions look like: label counts plus confidence and score distributions."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(REFERENCE_FORMAT, description="layout version of this JSON document.")
    labels: list[str] = Field(description="label names in the model's order.")
    label_counts: dict[str, int] = Field(description="predicted-label counts of the reference records.")
    records: int = Field(description="predictions the reference was built from.")
    mean_confidence: float = Field(description="mean top probability over all reference records.")
    mean_score: float = Field(description="mean score over all reference records.")
    confidences: list[float] = Field(description="sorted sample (quantiles) of the top probabilities.")
    scores: list[float] = Field(description="sorted sample (quantiles) of the scores.")
    model_version: str | None = Field(None, description="model version of the predictions (None: unknown).")
    source: str = Field("predictions", description="where it came from: training, stream, file, ...")
    created_at: str = Field(description="UTC time it was built, ISO 8601.")

    @model_validator(mode="after")
    def _check(self) -> Reference:
        import numpy as np

        if self.records < 1 or not self.confidences or not self.scores:
            raise ValueError("a reference needs at least one record with its confidence and score")
        if sum(self.label_counts.values()) != self.records:
            raise ValueError(f"label_counts sum to {sum(self.label_counts.values())}, not records={self.records}")
        values = np.asarray(self.confidences + self.scores, dtype=float)
        if not np.all(np.isfinite(values)):
            raise ValueError("confidences and scores must be finite numbers")
        self.confidences = sorted(self.confidences)
        self.scores = sorted(self.scores)
        return self

    @classmethod
    def from_predictions(
        cls,
        predictions: Iterable[Mapping[str, Any]],
        *,
        model_version: str | None = None,
        source: str = "predictions",
        max_sample: int = 2000,
    ) -> Reference:
        """From ``Predictor.predict`` results (or stream ``sentiment`` objects). Build the training reference
        from HELD-OUT predictions (validation/test split): on its own training texts a model is more confident
        than on new ones, which would look like a confidence drop. ``model_version`` defaults to the most
        common one in the predictions."""
        labels: list[str] = []
        conf: list[float] = []
        score: list[float] = []
        versions: Counter[str] = Counter()
        order: dict[str, None] = {}
        for p in predictions:
            label, c, s, v = _parse(p)
            labels.append(label)
            conf.append(c)
            score.append(s)
            if v is not None:
                versions[v] += 1
            order.update(dict.fromkeys(str(k) for k in p["probabilities"]))
        if model_version is None and versions:
            model_version = versions.most_common(1)[0][0]
        return cls._build(labels, conf, score, list(order), model_version=model_version, source=source,
                          max_sample=max_sample)

    @classmethod
    def _build(
        cls, labels: list[str], conf: list[float], score: list[float], label_order: list[str], *,
        model_version: str | None, source: str, max_sample: int,
    ) -> Reference:
        import numpy as np

        if not labels:
            raise ValueError("a reference needs at least one prediction")
        counts = Counter(labels)
        order = list(dict.fromkeys([*label_order, *sorted(counts)]))
        c_arr, s_arr = np.asarray(conf, dtype=float), np.asarray(score, dtype=float)
        return cls(
            labels=order,
            label_counts={k: counts.get(k, 0) for k in order},
            records=len(labels),
            mean_confidence=float(c_arr.mean()),
            mean_score=float(s_arr.mean()),
            confidences=_quantile_sample(c_arr, max_sample),
            scores=_quantile_sample(s_arr, max_sample),
            model_version=model_version,
            source=source,
            created_at=_iso(time.time()),
        )

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> Reference:
        return cls.model_validate_json(text)

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (a temp file renamed over ``path``): a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def label_shares(self) -> dict[str, float]:
        return {k: v / self.records for k, v in self.label_counts.items()}

    def summary(self) -> dict[str, Any]:
        """The reference without its samples (what status and alerts show)."""
        return {
            "source": self.source,
            "records": self.records,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "label_shares": _rounded(self.label_shares()),
            "mean_confidence": round(self.mean_confidence, 6),
        }


def read_reference(path: str | Path) -> Reference:
    """A reference JSON file, or ``ModelDirError`` saying what is wrong and how to fix it."""
    path = Path(path)
    try:
        return Reference.from_json(path.read_bytes())
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        raise ModelDirError(
            f"drift reference {path} cannot be read ({type(e).__name__}: {str(e)[:300]}): delete it to learn "
            "the reference from the stream, or write it again with Reference.from_predictions(...).save(path)"
        ) from None


def load_reference(model_dir: str | Path | None) -> Reference | None:
    """``<model_dir>/drift_reference.json``, or None when the directory has none."""
    if model_dir is None:
        return None
    path = Path(model_dir) / DRIFT_REFERENCE_FILE
    return read_reference(path) if path.is_file() else None


def resolve_reference(config: DriftConfig, model_dir: str | Path | None) -> Reference | None:
    """The reference a monitor starts with: ``config.reference_file`` if it exists, else the model
    directory's, else None (learned from the stream's first ``reference_records`` predictions)."""
    if config.reference_file and Path(config.reference_file).is_file():
        ref = read_reference(config.reference_file)
        log.info("drift reference: %s (%d records, %s)", config.reference_file, ref.records, ref.source)
        return ref
    ref = load_reference(model_dir)
    if ref is not None:
        log.info("drift reference: %s of the model directory (%d records)", DRIFT_REFERENCE_FILE, ref.records)
    return ref


# ------------------------------------------------------------------------------------------------ statistics
def ks_statistic(reference_sorted: np.ndarray, values: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov D: the largest gap between the two empirical distribution functions
    (the value ``scipy.stats.ks_2samp`` returns, without its p-value machinery: ~20x cheaper)."""
    import numpy as np

    b = np.sort(values)
    both = np.concatenate([reference_sorted, b])
    cdf_a = np.searchsorted(reference_sorted, both, side="right") / len(reference_sorted)
    cdf_b = np.searchsorted(b, both, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic D (as ``ks_2samp(method="asymp")``)."""
    from scipy import stats

    en = n * m / (n + m)
    return float(stats.kstwo.sf(d, max(1, round(en))))


def label_statistics(reference_counts: np.ndarray, window_counts: np.ndarray) -> tuple[float, float, int]:
    """(PSI, chi-square, degrees of freedom) of window label counts against reference counts.

    PSI uses shares smoothed by ``LABEL_SMOOTHING`` records per label. The chi-square is Pearson's test of
    homogeneity of the 2 × k table (reference, window) × labels, so the reference's own sampling noise is
    accounted for (a goodness-of-fit test against the reference shares would grow with the window size even
    on a stationary stream); labels absent from both are left out."""
    import numpy as np

    k = len(reference_counts)
    ref = (reference_counts + LABEL_SMOOTHING) / (reference_counts.sum() + LABEL_SMOOTHING * k)
    win = (window_counts + LABEL_SMOOTHING) / (window_counts.sum() + LABEL_SMOOTHING * k)
    psi = float(np.sum((win - ref) * np.log(win / ref)))
    table = np.vstack([reference_counts, window_counts]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    chi2 = float(np.sum((table - expected) ** 2 / expected))
    return psi, chi2, max(0, table.shape[1] - 1)


def chi2_p_value(chi2: float, dof: int) -> float:
    """p-value of a chi-square statistic with ``dof`` degrees of freedom (1.0 when dof is 0)."""
    from scipy import stats

    return float(stats.chi2.sf(chi2, dof)) if dof > 0 else 1.0


# ------------------------------------------------------------------------------------------------ monitor
class _Window:
    """One sliding window of (time, label, confidence, score), with label counts kept up to date."""

    def __init__(self, kind: WindowKind, max_records: int, seconds: float | None) -> None:
        self.kind = kind
        self.max_records = max_records
        self.seconds = seconds
        self.times: deque[float] = deque()
        self.labels: deque[str] = deque()
        self.conf: deque[float] = deque()
        self.score: deque[float] = deque()
        self.counts: Counter[str] = Counter()
        self.since_check = 0
        self.fired_at: float | None = None
        self.alerts = 0
        self.evaluated_at: float | None = None
        self.statistics: dict[str, float] = {}
        self.chi2_dof = 0
        self.details: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.times)

    def add(self, t: float, label: str, conf: float, score: float) -> None:
        if len(self.times) >= self.max_records:
            self._pop()
        self.times.append(t)
        self.labels.append(label)
        self.conf.append(conf)
        self.score.append(score)
        self.counts[label] += 1
        self.since_check += 1

    def expire(self, now: float) -> None:
        if self.seconds is None:
            return
        cutoff = now - self.seconds
        while self.times and self.times[0] < cutoff:
            self._pop()

    def _pop(self) -> None:
        self.times.popleft()
        self.conf.popleft()
        self.score.popleft()
        label = self.labels.popleft()
        self.counts[label] -= 1
        if not self.counts[label]:
            del self.counts[label]

    def clear(self) -> None:
        for d in (self.times, self.labels, self.conf, self.score):
            d.clear()
        self.counts.clear()
        self.since_check = 0
        self.fired_at = None
        self.evaluated_at = None
        self.statistics = {}
        self.details = {}

    def due(self, check_every: int) -> bool:
        return self.since_check >= max(check_every, len(self) // 10)

    def size(self) -> float | int | None:
        return self.seconds if self.kind == "time" else self.max_records


class DriftMonitor:
    """Compares predictions with a ``Reference`` over a count window and a time window; returns alerts.

    Not thread-safe: one monitor per runner / replica, fed from one thread."""

    def __init__(self, config: DriftConfig | None = None, reference: Reference | None = None) -> None:
        import numpy as np

        self.config = config if config is not None else DriftConfig()
        self.reference: Reference | None = None
        self.model_version: str | None = None
        self.records = 0
        self.alerts = 0
        self.evaluations = 0
        #: the latest alert fired (None before the first)
        self.last_alert: dict[str, Any] | None = None
        self._learning: list[tuple[str, float, float]] = []
        self._learning_labels: dict[str, None] = {}
        self._ref_conf = self._ref_score = np.empty(0)
        self._ref_counts: dict[str, int] = {}
        self.windows: dict[WindowKind, _Window] = {}
        cfg = self.config
        if cfg.window_records is not None:
            self.windows["count"] = _Window("count", cfg.window_records, None)
        if cfg.window_seconds is not None:
            self.windows["time"] = _Window("time", cfg.max_window_records, cfg.window_seconds)
        if reference is not None:
            self._use_reference(reference)

    # ---------------------------------------------------------------------------------------- reference
    def set_reference(self, reference: Reference | None) -> None:
        """Compare with ``reference`` from now on (None: learn one from the next ``reference_records``); the
        windows start over (after a hot swap they would hold the old model's predictions)."""
        for w in self.windows.values():
            w.clear()
        self._use_reference(reference)

    def _use_reference(self, reference: Reference | None) -> None:
        import numpy as np

        self.reference = reference
        self._learning.clear()
        self._learning_labels.clear()
        for w in self.windows.values():
            w.fired_at = None
            w.statistics, w.details, w.evaluated_at = {}, {}, None
        if reference is not None:
            self._ref_conf = np.asarray(reference.confidences, dtype=float)
            self._ref_score = np.asarray(reference.scores, dtype=float)
            self._ref_counts = dict(reference.label_counts)

    def _learn(self, label: str, conf: float, score: float, probability_labels: Iterable[str]) -> None:
        self._learning.append((label, conf, score))
        self._learning_labels.update(dict.fromkeys(probability_labels))
        if len(self._learning) < self.config.reference_records:
            return
        labels, conf, score = (list(x) for x in zip(*self._learning, strict=True))
        ref = Reference._build(labels, conf, score, list(self._learning_labels), model_version=self.model_version,
                               source="stream", max_sample=self.config.reference_sample)
        log.info("drift reference learned from the first %d predictions of %s: label shares %s, mean "
                 "confidence %.3f", ref.records, self.model_version, _rounded(ref.label_shares()),
                 ref.mean_confidence)
        self._use_reference(ref)  # the windows keep these records: they are the reference's own
        if self.config.reference_file:
            try:
                ref.save(self.config.reference_file)
            except OSError as e:
                log.warning("could not write the drift reference to %s: %s", self.config.reference_file, e)

    def _on_model_version(self, version: str | None) -> None:
        """A new model version: start the windows over; keep the reference only if it is this model's."""
        previous, self.model_version = self.model_version, version
        if previous is not None:
            log.info("model version %s -> %s: drift windows start over", previous, version)
        for w in self.windows.values():
            w.clear()
        ref = self.reference
        if ref is not None and ref.model_version is not None and version is not None and (
            _base_version(ref.model_version) != _base_version(version)
        ):
            log.warning("the drift reference (%s, model %s) is not of model %s: learning a new one from the "
                        "next %d predictions", ref.source, ref.model_version, version,
                        self.config.reference_records)
            self._use_reference(None)
        elif ref is None:
            self._use_reference(None)

    # ---------------------------------------------------------------------------------------- update
    def update(self, predictions: Iterable[Mapping[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
        """Add predictions (classified at ``now``, default: the current time); returns the alerts this fired.
        Results that carry an ``error`` (the Serve handle's errors="return") are skipped."""
        now = time.time() if now is None else float(now)
        for p in predictions:
            if "error" in p:
                continue
            label, conf, score, version = _parse(p)
            if version != self.model_version and (version is not None or self.model_version is None):
                self._on_model_version(version)
            self.records += 1
            for w in self.windows.values():
                w.add(now, label, conf, score)
            if self.reference is None:
                self._learn(label, conf, score, p["probabilities"])
        alerts: list[dict[str, Any]] = []
        for w in self.windows.values():
            w.expire(now)
            if self.reference is not None and len(w) >= self.config.min_window_records and w.due(
                self.config.check_every
            ):
                alert = self._evaluate(w, now)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def _evaluate(self, w: _Window, now: float) -> dict[str, Any] | None:
        import numpy as np

        ref = self.reference
        if ref is None:  # callers check; kept for type checkers
            return None
        cfg = self.config
        w.since_check = 0
        w.evaluated_at = now
        self.evaluations += 1
        n = len(w)
        names = list(ref.labels) + sorted(set(w.counts) - set(ref.labels))
        ref_counts = np.array([self._ref_counts.get(k, 0) for k in names], dtype=float)
        win_counts = np.array([w.counts.get(k, 0) for k in names], dtype=float)
        psi, chi2, dof = label_statistics(ref_counts, win_counts)
        conf = np.fromiter(w.conf, dtype=float, count=n)
        score = np.fromiter(w.score, dtype=float, count=n)
        mean_conf = float(conf.mean())
        stats: dict[str, float] = {
            "label_psi": psi,
            "label_chi2": chi2,
            "confidence_ks": ks_statistic(self._ref_conf, conf),
            "score_ks": ks_statistic(self._ref_score, score),
            "confidence_drop": ref.mean_confidence - mean_conf,
        }
        if cfg.chi2_p_value is not None:
            stats["label_chi2_p"] = chi2_p_value(chi2, dof)
        w.statistics = stats
        w.chi2_dof = dof
        ref_shares = ref_counts / ref_counts.sum()
        win_shares = win_counts / n
        top = int(np.argmax(np.abs(win_shares - ref_shares)))
        w.details = {
            "label_shares": {k: round(float(s), 6) for k, s in zip(names, win_shares, strict=True)},
            "mean_confidence": round(mean_conf, 6),
            "top_shifted_label": {
                "label": names[top],
                "reference_share": round(float(ref_shares[top]), 6),
                "window_share": round(float(win_shares[top]), 6),
                "change": round(float(win_shares[top] - ref_shares[top]), 6),
            },
            "first_at": w.times[0],
            "last_at": w.times[-1],
        }
        severity = {name: _severity(name, stats[name], thr) for name, thr in cfg.thresholds().items()
                    if name in stats}
        if w.fired_at is not None:
            recovered = all(s < cfg.rearm_fraction for s in severity.values())
            cooled = cfg.cooldown_s is not None and now - w.fired_at >= cfg.cooldown_s
            if recovered or cooled:
                log.info("drift: %s window re-armed (%s)", w.kind, "statistics recovered" if recovered else
                         f"cooldown of {cfg.cooldown_s:.0f} s over")
                w.fired_at = None
        crossed = sorted((s, name) for name, s in severity.items() if s >= 1.0)
        if w.fired_at is not None or not crossed:
            return None
        w.fired_at = now
        w.alerts += 1
        self.alerts += 1
        statistic = crossed[-1][1]
        self.last_alert = self._alert(w, statistic, [name for _, name in reversed(crossed)], now)
        return self.last_alert

    def _alert(self, w: _Window, statistic: str, crossed: list[str], now: float) -> dict[str, Any]:
        ref = self.reference
        if ref is None:  # pragma: no cover - only called with a reference
            raise RuntimeError("no reference")
        stats = self._with_p_values(w)
        return {
            "type": "drift_alert",
            "statistic": statistic,
            "value": round(stats[statistic], 6),
            "threshold": self.config.thresholds()[statistic],
            "crossed": crossed,
            "window": self._window_info(w),
            "statistics": {k: round(v, 6) for k, v in stats.items()},
            "top_shifted_label": w.details["top_shifted_label"],
            "label_shares": w.details["label_shares"],
            "mean_confidence": w.details["mean_confidence"],
            "model_version": self.model_version,
            "reference": ref.summary(),
            "fired_at": _iso(now),
        }

    def _with_p_values(self, w: _Window) -> dict[str, float]:
        stats = dict(w.statistics)
        ref = self.reference
        if not stats or ref is None:
            return stats
        n = len(w)
        stats.setdefault("label_chi2_p", chi2_p_value(stats["label_chi2"], w.chi2_dof))
        stats["confidence_ks_p"] = ks_p_value(stats["confidence_ks"], n, ref.records)
        stats["score_ks_p"] = ks_p_value(stats["score_ks"], n, ref.records)
        return stats

    def _window_info(self, w: _Window) -> dict[str, Any]:
        return {
            "kind": w.kind,
            "size": w.size(),
            "unit": "seconds" if w.kind == "time" else "records",
            "records": len(w),
            "start": _iso(w.details["first_at"]) if w.details else None,
            "end": _iso(w.details["last_at"]) if w.details else None,
        }

    # ---------------------------------------------------------------------------------------- status
    def gauges(self) -> dict[tuple[str, str], float]:
        """``{(window kind, statistic): value}`` of the last comparison of each window (no p-values: cheap)."""
        return {(kind, name): v for kind, w in self.windows.items() for name, v in w.statistics.items()}

    def window_records(self) -> dict[str, int]:
        """``{window kind: predictions it holds now}``."""
        return {kind: len(w) for kind, w in self.windows.items()}

    def status(self) -> dict[str, Any]:
        """Everything an operator wants to see (``GET /v1/drift``), JSON-ready."""
        thresholds = self.config.thresholds()
        windows = {}
        for kind, w in self.windows.items():
            windows[kind] = {
                **self._window_info(w),
                "evaluated_at": _iso(w.evaluated_at) if w.evaluated_at is not None else None,
                "statistics": {k: round(v, 6) for k, v in self._with_p_values(w).items()},
                "label_shares": w.details.get("label_shares", {}),
                "mean_confidence": w.details.get("mean_confidence"),
                "top_shifted_label": w.details.get("top_shifted_label"),
                "firing": w.fired_at is not None,
                "alerts": w.alerts,
            }
        return {
            "enabled": self.config.enabled,
            "model_version": self.model_version,
            "records": self.records,
            "alerts": self.alerts,
            "reference": self.reference.summary() if self.reference is not None else None,
            "reference_progress": None if self.reference is not None else {
                "records": len(self._learning), "needed": self.config.reference_records,
            },
            "thresholds": thresholds,
            "windows": windows,
            "last_alert": self.last_alert,
        }


# ------------------------------------------------------------------------------------------------ status schema
class WindowStatus(BaseModel):
    """One window in ``DriftMonitor.status()`` (the ``GET /v1/drift`` response)."""

    kind: WindowKind = Field(description="count: the last N predictions; time: those of the last T seconds.")
    size: float | None = Field(description="N (records) or T (seconds).")
    unit: Literal["records", "seconds"]
    records: int = Field(description="predictions in the window now.")
    start: str | None = Field(description="classification time of the window's first record at the last comparison.")
    end: str | None = Field(description="... and of its last record.")
    evaluated_at: str | None = Field(description="when the window was last compared (None: not yet, warm-up).")
    statistics: dict[str, float] = Field(description="statistic name → value at the last comparison.")
    label_shares: dict[str, float] = Field(description="share of each predicted label in the window.")
    mean_confidence: float | None = Field(description="mean top probability in the window.")
    top_shifted_label: dict[str, Any] | None = Field(
        description="the label whose share moved most: label, reference_share, window_share, change."
    )
    firing: bool = Field(description="an alert fired and the window has not re-armed yet.")
    alerts: int = Field(description="alerts this window fired.")


class DriftStatus(BaseModel):
    """``DriftMonitor.status()``: the reference, the thresholds and every window's latest statistics."""

    enabled: bool
    model_version: str | None = Field(description="model version of the latest predictions.")
    records: int = Field(description="predictions seen since start.")
    alerts: int = Field(description="alerts fired since start.")
    reference: dict[str, Any] | None = Field(description="summary of the reference (None while learning it).")
    reference_progress: dict[str, int] | None = Field(description="records / needed while learning the reference.")
    thresholds: dict[str, float] = Field(description="statistics that can fire and their thresholds.")
    windows: dict[str, WindowStatus]
    last_alert: dict[str, Any] | None = Field(description="the latest alert record, if any.")


# ------------------------------------------------------------------------------------------------ helpers
def _parse(p: Mapping[str, Any]) -> tuple[str, float, float, str | None]:
    """(label, confidence, score, model version) of one prediction dict."""
    try:
        label = str(p["label"])
        probs = p["probabilities"]
        conf = float(max(probs.values()))
        score = float(p["score"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(
            f"not a prediction dict ({type(e).__name__}: {e}): expected label, probabilities and score as "
            f"Predictor.predict returns them, got {dict(p)!r:.200}"
        ) from None
    version = p.get("model_version")
    return label, conf, score, None if version is None else str(version)


def _severity(name: str, value: float, threshold: float) -> float:
    """value / threshold (≥ 1 = crossed); for the p-value, threshold / value."""
    if name == "label_chi2_p":
        return threshold / max(value, 1e-300)
    return value / threshold


def _quantile_sample(values: np.ndarray, max_sample: int) -> list[float]:
    import numpy as np

    if len(values) <= max_sample:
        return sorted(float(v) for v in values)
    return [float(v) for v in np.quantile(values, np.linspace(0.0, 1.0, max_sample))]


def _base_version(version: str) -> str:
    """``name@sha`` without a ``+int8``-style suffix: the same weights, quantised, keep their reference."""
    return version.split("+", 1)[0]


def _iso(seconds: float) -> str:
    from stream.codec import format_timestamp

    return format_timestamp(seconds)


def _rounded(d: Mapping[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in d.items()}


def alert_json(alert: Mapping[str, Any]) -> bytes:
    """An alert as the UTF-8 JSON value of an alert record."""
    return json.dumps(alert, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
