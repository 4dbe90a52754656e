"""Scoring a model on labelled files: per source (file), per length bucket, and calibration (ECE, NLL).

Every results table of the project reports these numbers: accuracy and macro-F1 per file (one file per
source: forum posts, news, constructed long news) and per length bucket of the text in model pieces
(≤ 128, 128–512, > 512 — where head+tail truncation starts to hide text), the expected calibration error
(15 bins) of the final probabilities, and a reliability diagram.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from classifier.calibration import ECE_BINS, expected_calibration_error, nll, plot_reliability
from classifier.metrics import compute_metrics

log = logging.getLogger(__name__)

#: (name, lowest pieces exclusive, highest pieces inclusive) of a text, [CLS]/[SEP] not counted
LENGTH_BUCKETS: tuple[tuple[str, int, float], ...] = (("<=128", -1, 128), ("128-512", 128, 512),
                                                      (">512", 512, float("inf")))


def length_bucket(pieces: int) -> str:
    for name, lo, hi in LENGTH_BUCKETS:
        if lo < pieces <= hi:
            return name
    raise ValueError(pieces)  # pragma: no cover


def score(probs: torch.Tensor, gold: Sequence[str], label_names: Sequence[str],
          decide: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """Metrics report (:func:`classifier.metrics.compute_metrics`) of the labels ``decide(probs)`` names
    (default: the argmax), plus ``ece`` and ``nll`` of the probabilities."""
    names = list(label_names)
    ids = decide(probs) if decide is not None else probs.argmax(-1)
    preds = [names[i] for i in ids.tolist()]
    m = compute_metrics(list(gold), preds, names)
    y = [names.index(g) for g in gold]
    m["ece"] = expected_calibration_error(probs, y, ECE_BINS) if gold else float("nan")
    m["nll"] = nll(probs, y)
    return m


def score_by_bucket(probs: torch.Tensor, gold: Sequence[str], pieces: Sequence[int], label_names: Sequence[str],
                    decide: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, dict[str, Any]]:
    """``{bucket: {"examples", "accuracy", "macro_f1"}}`` for the buckets that hold examples."""
    out: dict[str, dict[str, Any]] = {}
    buckets = [length_bucket(n) for n in pieces]
    ids = (decide(probs) if decide is not None else probs.argmax(-1)).tolist()
    for name, _, _ in LENGTH_BUCKETS:
        idx = [i for i, b in enumerate(buckets) if b == name]
        if not idx:
            continue
        m = compute_metrics([gold[i] for i in idx], [label_names[ids[j]] for j in idx], list(label_names))
        out[name] = {"examples": len(idx), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    return out


def evaluate_texts(predictor: Any, texts: Sequence[str], gold: Sequence[str]) -> dict[str, Any]:
    """Scores of a :class:`classifier.predict.Predictor` on labelled texts (the probabilities it serves)."""
    probs = predictor.predict_proba(list(texts))
    pieces = [len(ids) for ids in predictor.tokenizer.encode(list(texts))]
    report = score(probs, gold, predictor.labels, predictor.decide)
    report["by_length"] = score_by_bucket(probs, gold, pieces, predictor.labels, predictor.decide)
    report["_probs"] = probs
    return report


def format_scores(name: str, m: dict[str, Any]) -> str:
    """One block of lines: the file's accuracy, macro-F1, ECE, then a line per length bucket."""
    lines = [f"{name}: {m['n']} examples  accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
             f"ECE {m['ece']:.4f}  NLL {m['nll']:.4f}"]
    for bucket, b in m.get("by_length", {}).items():
        lines.append(f"    {bucket:>8} pieces: {b['examples']:>6} examples  accuracy {b['accuracy']:.4f}  "
                     f"macro-F1 {b['macro_f1']:.4f}")
    return "\n".join(lines)


def write_plots(m: dict[str, Any], probs: torch.Tensor, gold: Sequence[str], label_names: Sequence[str],
                out_dir: Path, stem: str) -> list[Path]:
    from classifier.metrics import plot_confusion

    y = [list(label_names).index(g) for g in gold]
    return [plot_confusion(m, out_dir / f"confusion_{stem}.png"),
            plot_reliability(probs, y, out_dir / f"reliability_{stem}.png", title=stem)]
