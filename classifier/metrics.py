"""Accuracy, macro/micro precision/recall/F1, per-class scores and the confusion matrix (scikit-learn),
as a dict, a readable report, a JSON file and a PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: ASCII names for plots (the default matplotlib fonts have no CJK glyphs)
PLOT_NAMES = {"其他": "neutral", "利多": "bullish", "利空": "bearish"}


def compute_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """All metrics for label-name sequences. Labels absent from both count with zero support."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(labels)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    out: dict[str, Any] = {"n": len(y_true), "labels": labels}
    if not y_true:
        raise ValueError("no examples to score")
    out["accuracy"] = float(accuracy_score(y_true, y_pred))
    for avg in ("macro", "micro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out["per_class"] = {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return out


def format_report(m: dict[str, Any], title: str = "") -> str:
    """A fixed-width text report: headline metrics, per-class table, confusion matrix (rows = true)."""
    labels = m["labels"]
    w = max(8, *(len(lab) * 2 for lab in labels))
    lines = [title] if title else []
    lines.append(
        f"n={m['n']}  accuracy={m['accuracy']:.4f}  macro P/R/F1={m['macro_precision']:.4f}/"
        f"{m['macro_recall']:.4f}/{m['macro_f1']:.4f}  micro P/R/F1={m['micro_precision']:.4f}/"
        f"{m['micro_recall']:.4f}/{m['micro_f1']:.4f}"
    )
    lines.append(f"{'class':<{w}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for lab in labels:
        c = m["per_class"][lab]
        lines.append(f"{lab:<{w - len(lab)}} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>8d}")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines.append(" " * w + "".join(f"{lab:>{8 - len(lab)}}" for lab in labels))
    for lab, row in zip(labels, m["confusion_matrix"], strict=True):
        lines.append(f"{lab:<{w - len(lab)}}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)


def save_report(m: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(m, ensure_ascii=False, indent=2), encoding="utf-8")
    return p


def plot_confusion(m: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Confusion-matrix heat map with counts and row-normalised recall, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(m["confusion_matrix"], dtype=float)
    names = [PLOT_NAMES.get(lab, lab) for lab in m["labels"]]
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=120)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}\n{frac[i, j]:.0%}", ha="center", va="center",
                    color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"acc {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}", fontsize=9)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p
