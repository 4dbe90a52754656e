import json
from pathlib import Path

import pytest

from classifier.metrics import compute_metrics, format_report, plot_confusion, save_report

LABELS = ["其他", "利多", "利空"]


def test_metrics_match_hand_computation(tmp_path: Path) -> None:
    y_true = ["其他", "利多", "利多", "利空", "利空", "利多"]
    y_pred = ["其他", "利多", "利空", "利空", "利多", "利多"]
    m = compute_metrics(y_true, y_pred, LABELS)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # 其他: P=1 R=1 F1=1; 利多: P=2/3 R=2/3 F1=2/3; 利空: P=1/2 R=1/2 F1=1/2
    assert m["per_class"]["利多"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert m["macro_precision"] == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    assert m["micro_f1"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 2, 1], [0, 1, 1]]
    text = format_report(m, "dev")
    assert "accuracy=0.6667" in text and "macro P/R/F1=0.7222/0.7222/0.7222" in text
    assert json.loads(save_report(m, tmp_path / "r.json").read_text())["confusion_matrix"][1] == [0, 2, 1]
    png = plot_confusion(m, tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_absent_class_scores_zero() -> None:
    m = compute_metrics(["利多", "利多"], ["利多", "其他"], LABELS)
    assert m["per_class"]["利空"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
