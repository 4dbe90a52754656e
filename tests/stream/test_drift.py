"""The drift monitor on synthetic and on real (tiny-model) predictions: a shift fires within a stated number of
records, a stationary stream of 10,000 records never fires at the default thresholds, time windows expire,
one alert per crossing (re-arm on recovery or after the cooldown), the reference survives JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from classifier.drift import (
    DRIFT_REFERENCE_FILE,
    DriftConfig,
    DriftMonitor,
    Reference,
    chi2_p_value,
    ks_p_value,
    ks_statistic,
    label_statistics,
    load_reference,
    resolve_reference,
)
from classifier.errors import ConfigError, ModelDirError
from stream.review import HEADER_REVIEW_THRESHOLD, needs_review, review_record

LABELS = ("其他", "利多", "利空")
PRIOR = (0.5, 0.3, 0.2)
VERSION = "tiny@0123abcd"
#: a strong shift fires the default count window (500 records, checked every 100) within this many records
FIRES_WITHIN = 500


def sample(rng: np.random.Generator, n: int, prior=PRIOR, margin=(0.5, 4.0), version: str = VERSION) -> list[dict]:
    """``n`` predictions shaped like ``Predictor.predict``'s: a true class drawn from ``prior``, logits =
    noise + a margin on the true class drawn from ``margin`` (a smaller margin = a less confident model)."""
    c = rng.choice(3, p=prior, size=n)
    logits = rng.normal(0.0, 1.0, (n, 3))
    logits[np.arange(n), c] += rng.uniform(*margin, n)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    return [
        {"label": LABELS[int(np.argmax(p))], "probabilities": dict(zip(LABELS, map(float, p), strict=True)),
         "score": float(p[1] - p[2]), "model_version": version}
        for p in probs
    ]


def feed(monitor: DriftMonitor, preds: list[dict], *, start_t: float = 0.0, rate: float = 10.0, batch: int = 50,
         offset: int = 0) -> list[tuple[int, dict]]:
    """Feed in batches (as the runner does) at ``rate`` records/s; returns (records fed when it fired, alert)."""
    fired = []
    for i in range(0, len(preds), batch):
        for alert in monitor.update(preds[i : i + batch], now=start_t + (i + batch) / rate):
            fired.append((offset + i + len(preds[i : i + batch]), alert))
    return fired


# ---------------------------------------------------------------------------------------------- statistics
def test_statistics_agree_with_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 700), rng.normal(0.3, 1.2, 400)
    want = stats.ks_2samp(a, b, method="asymp")
    d = ks_statistic(np.sort(a), b)
    assert d == pytest.approx(want.statistic, abs=1e-12)
    assert ks_p_value(d, 400, 700) == pytest.approx(want.pvalue, rel=0.05)

    ref, win = np.array([500.0, 300.0, 200.0]), np.array([100.0, 150.0, 250.0])
    psi, chi2, dof = label_statistics(ref, win)
    table = stats.chi2_contingency(np.vstack([ref, win]), correction=False)
    assert (chi2, dof) == (pytest.approx(table.statistic), 2)
    assert chi2_p_value(chi2, dof) == pytest.approx(table.pvalue)
    r, w = (ref + 0.5) / 1001.5, (win + 0.5) / 501.5
    assert psi == pytest.approx(float(np.sum((w - r) * np.log(w / r))))
    assert psi == pytest.approx(0.547, abs=1e-3)  # 0.5/0.3/0.2 → 0.2/0.3/0.5: a major shift (> 0.25)
    assert label_statistics(ref, ref / 2)[:2] == (pytest.approx(0.0, abs=1e-6), pytest.approx(0.0))  # same shares


# ---------------------------------------------------------------------------------------------- shifts fire
@pytest.mark.parametrize("learned", [True, False], ids=["reference-from-stream", "reference-from-file"])
def test_a_label_shift_fires_one_alert_within_500_records(learned):
    rng = np.random.default_rng(7)
    cfg = DriftConfig(window_seconds=None)
    reference = None if learned else Reference.from_predictions(sample(rng, 5000), source="training")
    monitor = DriftMonitor(cfg, reference)
    assert feed(monitor, sample(rng, 2000)) == []
    assert monitor.reference is not None and monitor.reference.source == ("stream" if learned else "training")
    assert monitor.reference.records == (1000 if learned else 5000)

    shifted = sample(rng, 3000, prior=(0.1, 0.2, 0.7))  # the feed suddenly sends mostly bad news
    fired = feed(monitor, shifted, start_t=200.0, offset=0)
    assert len(fired) == 1, [(n, a["statistic"]) for n, a in fired]  # one alert, not one per batch
    n, alert = fired[0]
    assert n <= FIRES_WITHIN
    assert alert["type"] == "drift_alert" and alert["model_version"] == VERSION
    assert alert["window"]["kind"] == "count" and alert["window"]["size"] == 500
    assert alert["window"]["unit"] == "records" and alert["window"]["records"] == 500
    assert alert["statistic"] in alert["crossed"]
    assert alert["value"] >= alert["threshold"] == cfg.thresholds()[alert["statistic"]]
    top = alert["top_shifted_label"]
    assert top["label"] == "利空"
    assert top["reference_share"] == pytest.approx(0.2, abs=0.04)
    assert top["window_share"] > 0.4 and top["change"] == pytest.approx(top["window_share"] - top["reference_share"])
    assert alert["reference"]["records"] == monitor.reference.records
    assert alert["fired_at"].endswith("Z") and alert["window"]["start"] < alert["window"]["end"]
    assert 0 <= alert["statistics"]["label_chi2_p"] < 1e-6
    json.dumps(alert)  # JSON-ready as it is

    status = monitor.status()
    assert status["alerts"] == 1 and status["windows"]["count"]["firing"] is True
    assert status["windows"]["count"]["statistics"]["label_psi"] > cfg.psi_threshold


def test_a_confidence_drop_fires_within_500_records():
    rng = np.random.default_rng(11)
    monitor = DriftMonitor(DriftConfig(window_seconds=None))
    feed(monitor, sample(rng, 1500))
    fired = feed(monitor, sample(rng, 2000, margin=(0.0, 1.5)))  # same labels, a much less sure model
    assert len(fired) == 1
    n, alert = fired[0]
    assert n <= FIRES_WITHIN
    assert alert["statistic"] in ("confidence_ks", "confidence_drop")
    assert alert["statistics"]["confidence_drop"] > 0.05
    assert alert["mean_confidence"] < alert["reference"]["mean_confidence"] - 0.05


def test_a_new_model_version_gets_its_own_reference_but_int8_keeps_it():
    rng = np.random.default_rng(3)
    ref = Reference.from_predictions(sample(rng, 2000))
    assert ref.model_version == VERSION  # taken from the predictions
    monitor = DriftMonitor(DriftConfig(reference_records=400), ref)
    feed(monitor, sample(rng, 600, version=VERSION + "+int8"))
    assert monitor.reference is ref and monitor.records == 600

    feed(monitor, sample(rng, 300, prior=(0.1, 0.1, 0.8), version="tiny@ffff0000"))
    assert monitor.reference is None  # another model: learning again, windows started over
    assert monitor.status()["reference_progress"] == {"records": 300, "needed": 400}
    assert monitor.window_records() == {"count": 300, "time": 300}
    fired = feed(monitor, sample(rng, 1000, prior=(0.1, 0.1, 0.8), version="tiny@ffff0000"))
    assert fired == []  # its own first records are its normal
    assert monitor.reference.model_version == "tiny@ffff0000" and monitor.reference.source == "stream"
    assert monitor.reference.label_shares()["利空"] > 0.6

    monitor.set_reference(ref)  # what a hot swap does: a given reference, windows start over
    assert monitor.reference is ref and monitor.window_records() == {"count": 0, "time": 0}


# ---------------------------------------------------------------------------------------------- stationary
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_stationary_stream_of_10000_records_never_fires_at_the_defaults(seed):
    rng = np.random.default_rng(100 + seed)
    cfg = DriftConfig()
    monitor = DriftMonitor(cfg)
    worst: dict[tuple[str, str], float] = {}
    preds = sample(rng, 10_000)
    for i in range(0, 10_000, 64):
        assert monitor.update(preds[i : i + 64], now=i / 10.0) == []
        for key, v in monitor.gauges().items():
            worst[key] = max(worst.get(key, -1.0), v)
    assert monitor.records == 10_000 and monitor.alerts == 0
    assert monitor.evaluations >= 90  # the windows really were compared, all along
    shares = monitor.reference.label_shares()  # the first 1,000 records: the stream's shares, give or take
    stream_shares = [sum(p["label"] == k for p in preds) / 10_000 for k in LABELS]
    assert [shares[k] for k in LABELS] == pytest.approx(stream_shares, abs=0.05)
    for (window, name), v in worst.items():
        if name in cfg.thresholds():
            assert v < cfg.thresholds()[name], (window, name, v)


def test_sampled_real_predictions_stationary_10000_records_never_fire(predictor):
    """10,000 records drawn (with replacement) from the tiny model's predictions on 1,500 real news texts."""
    from stream_helpers import news_texts

    preds = predictor.predict(news_texts(1500))
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(DriftConfig())
    picks = rng.integers(0, len(preds), 10_000)
    fired = feed(monitor, [preds[i] for i in picks], batch=64)
    assert fired == [] and monitor.records == 10_000 and monitor.evaluations >= 90
    assert monitor.reference.model_version == predictor.model_version
    # and the same model on other text (English market wires) is a shift it sees at once
    wires = predictor.predict([f"market update {i}: stocks, bonds and fx" for i in range(600)])
    fired = feed(monitor, wires, start_t=2000.0, batch=64)
    assert fired and fired[0][0] <= FIRES_WITHIN
    assert {a["statistic"] for _, a in fired} <= {"confidence_ks", "score_ks"}


# ---------------------------------------------------------------------------------------------- time window
def test_time_window_holds_the_last_seconds_fires_and_recovers():
    rng = np.random.default_rng(21)
    cfg = DriftConfig(window_records=None, window_seconds=60.0, min_window_records=100, check_every=20,
                      reference_records=500, cooldown_s=None)
    monitor = DriftMonitor(cfg)
    assert feed(monitor, sample(rng, 1000), rate=10.0, batch=20) == []  # t = 0 .. 100 s, a batch every 2 s
    assert monitor.window_records() == {"time": 620}  # the batches at t = 40, 42, ..., 100 s: 31 × 20

    fired = feed(monitor, sample(rng, 400, prior=(0.1, 0.1, 0.8)), start_t=100.0, rate=10.0, batch=20)
    assert len(fired) == 1
    alert = fired[0][1]
    assert alert["window"]["kind"] == "time" and alert["window"]["size"] == 60.0
    assert alert["window"]["unit"] == "seconds" and alert["window"]["records"] == 620
    assert fired[0][0] <= 300  # within 30 s of shifted traffic at 10/s

    # ten minutes later, normal traffic at 2/s: the shifted records have left the window
    fired = feed(monitor, sample(rng, 200), start_t=700.0, rate=2.0, batch=20)
    assert fired == []
    status = monitor.status()["windows"]["time"]
    assert status["records"] == 140 and status["firing"] is False  # batches at t = 740 .. 800 s: 7 × 20
    assert status["statistics"]["label_psi"] < cfg.rearm_fraction * cfg.psi_threshold

    fired = feed(monitor, sample(rng, 200, prior=(0.1, 0.8, 0.1)), start_t=800.0, rate=2.0, batch=20)
    assert len(fired) == 1 and fired[0][1]["top_shifted_label"]["label"] == "利多"  # a new crossing, a new alert
    assert monitor.alerts == 2


# ---------------------------------------------------------------------------------------------- re-arm
def test_a_lasting_shift_fires_once_then_again_after_each_cooldown():
    rng = np.random.default_rng(31)
    ref = Reference.from_predictions(sample(rng, 3000))
    shifted = sample(rng, 3000, prior=(0.1, 0.2, 0.7))

    once = DriftMonitor(DriftConfig(window_seconds=None, cooldown_s=None), ref)
    assert len(feed(once, shifted, rate=1.0)) == 1  # 3,000 shifted records over 50 minutes: one alert

    reminded = DriftMonitor(DriftConfig(window_seconds=None, cooldown_s=600.0), ref)
    fired = feed(reminded, shifted, rate=1.0)
    times = [n / 1.0 for n, _ in fired]  # seconds since the shift began
    assert len(fired) == 5  # fires at ~250 s, then 600 s later each time, until 3,000 s
    assert all(b - a >= 600 for a, b in zip(times, times[1:], strict=False))


def test_recovery_rearms_and_the_next_shift_fires_again():
    rng = np.random.default_rng(41)
    monitor = DriftMonitor(DriftConfig(window_seconds=None), Reference.from_predictions(sample(rng, 3000)))
    assert len(feed(monitor, sample(rng, 1000, prior=(0.1, 0.2, 0.7)))) == 1
    assert feed(monitor, sample(rng, 1000), start_t=100.0) == []  # back to normal: no alert, re-armed
    assert monitor.status()["windows"]["count"]["firing"] is False
    fired = feed(monitor, sample(rng, 1000, prior=(0.1, 0.7, 0.2)), start_t=200.0)
    assert len(fired) == 1 and fired[0][1]["top_shifted_label"]["label"] == "利多"


# ---------------------------------------------------------------------------------------------- reference
def test_reference_json_round_trip_file_and_quantile_sample(tmp_path):
    rng = np.random.default_rng(51)
    preds = sample(rng, 10_000)
    ref = Reference.from_predictions(preds, source="training", max_sample=2000)
    assert ref.records == 10_000 and len(ref.confidences) == len(ref.scores) == 2000
    assert ref.labels == list(LABELS) and sum(ref.label_counts.values()) == 10_000
    conf = np.array([max(p["probabilities"].values()) for p in preds])
    assert ref.mean_confidence == pytest.approx(conf.mean())
    assert ks_statistic(np.array(ref.confidences), conf) <= 1 / 1999 + 1e-9  # quantiles keep the distribution

    again = Reference.from_json(ref.to_json())
    assert again == ref and json.loads(again.to_json()) == json.loads(ref.to_json())

    assert load_reference(tmp_path) is None
    ref.save(tmp_path / DRIFT_REFERENCE_FILE)
    assert load_reference(tmp_path) == ref
    assert resolve_reference(DriftConfig(), tmp_path) == ref
    other = Reference.from_predictions(preds[:100], source="file")
    other.save(tmp_path / "mine.json")
    assert resolve_reference(DriftConfig(reference_file=str(tmp_path / "mine.json")), tmp_path) == other

    (tmp_path / DRIFT_REFERENCE_FILE).write_text('{"labels": ["a"]', encoding="utf-8")
    with pytest.raises(ModelDirError, match=f"(?s){DRIFT_REFERENCE_FILE} cannot be read.*delete it"):
        load_reference(tmp_path)


def test_a_learned_reference_is_written_to_reference_file(tmp_path):
    path = tmp_path / "ref" / "learned.json"
    monitor = DriftMonitor(DriftConfig(reference_records=300, reference_file=str(path)))
    feed(monitor, sample(np.random.default_rng(61), 400))
    saved = Reference.from_json(path.read_text(encoding="utf-8"))
    assert saved == monitor.reference and saved.records == 300 and saved.source == "stream"


# ---------------------------------------------------------------------------------------------- config, review
def test_drift_config_errors_name_the_field_and_the_fix():
    with pytest.raises(ConfigError, match=r"window_records: must be >= 1.*\(got 0\)"):
        DriftConfig(window_records=0)
    with pytest.raises(ConfigError, match="min_window_records: is above window_records=100"):
        DriftConfig(window_records=100)
    with pytest.raises(ConfigError, match="both null"):
        DriftConfig(window_records=None, window_seconds=None)
    with pytest.raises(ConfigError, match=r"unknown config key.*did you mean window_seconds"):
        DriftConfig(window_second=60)
    with pytest.raises(ConfigError, match=r"^drift\.ks_threshold: must be <= 1"):
        DriftConfig.parse({"ks_threshold": 2})
    assert DriftConfig(window_records=None, window_seconds=None, enabled=False).enabled is False
    assert DriftConfig().thresholds() == {"label_psi": 0.2, "confidence_ks": 0.2, "score_ks": 0.2,
                                          "confidence_drop": 0.1}


def test_stream_config_holds_drift_and_review_settings(tmp_path):
    from stream.config import StreamConfig

    cfg = StreamConfig(model_dir=str(tmp_path), drift={"window_records": 200, "min_window_records": 100})
    assert isinstance(cfg.drift, DriftConfig) and cfg.drift.window_records == 200
    assert cfg.review_threshold == 0.5 and cfg.review_topic is None
    with pytest.raises(ConfigError, match="drift.min_window_records"):
        StreamConfig(model_dir=str(tmp_path), drift={"window_records": 50})
    with pytest.raises(ConfigError, match="review_topic='finance.news' must differ"):
        StreamConfig(model_dir=str(tmp_path), review_topic="finance.news")
    with pytest.raises(ConfigError, match="review_threshold=1.5 must be a probability"):
        StreamConfig(model_dir=str(tmp_path), review_threshold=1.5)


def test_review_routing():
    from stream.codec import OutputRecord

    sure = {"label": "利多", "probabilities": {"其他": 0.1, "利多": 0.8, "利空": 0.1}, "score": 0.7}
    unsure = {"label": "利多", "probabilities": {"其他": 0.3, "利多": 0.4, "利空": 0.3}, "score": 0.1}
    assert (needs_review(sure, 0.5), needs_review(unsure, 0.5)) == (False, True)
    assert not needs_review(unsure, None) and not needs_review(unsure, 0.0)
    out = OutputRecord(key=b"k1", value=b'{"id":"k1"}', headers=[("trace-id", b"t")])
    copy = review_record(out, 0.5)
    assert (copy.key, copy.value) == (out.key, out.value)
    assert copy.headers == [("trace-id", b"t"), (HEADER_REVIEW_THRESHOLD, b"0.5")]
