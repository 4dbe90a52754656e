"""Fit a model directory's post-processing on dev: temperature scaling and the blend with the linear companion.

Runs after training (``finsent finetune`` calls it at export; any recipe may) on one process, without Ray:

1. the encoder's logits on every dev example (each model input of a long text, pooled as the model pools them);
2. the temperature T minimising the dev NLL of the pooled probabilities (a 1-D search on log T, so it works
   for every pooling, also ``max_polar``);
3. with ``companion``: the linear companion is trained on the *training* examples and the stacking blend is
   fitted on dev (:func:`classifier.calibration.fit_blend`);
4. the decision offsets: the label is ``argmax(log p + offsets)``, offsets fitted on dev for the mean of the
   dev files' macro-F1 (the probabilities themselves stay calibrated);
5. ``calibration.json`` (and ``companion/``) are written into the model directory, with the dev NLL and ECE
   before and after, so a reader sees what calibration did.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from classifier.calibration import (
    Calibration,
    decide,
    expected_calibration_error,
    fit_blend,
    fit_decision_offsets,
    macro_f1_of,
    nll,
)
from classifier.data import Example
from classifier.modeldir import CALIBRATION_FILE, COMPANION_DIR, write_json

log = logging.getLogger(__name__)


def _search_temperature(nll_at: Any, lo: float = math.log(0.05), hi: float = math.log(20.0), steps: int = 60
                        ) -> float:
    """Golden-section search of log T on [lo, hi] (the NLL is unimodal in T for a fixed set of logits)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll_at(math.exp(c)), nll_at(math.exp(d))
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll_at(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll_at(math.exp(d))
    return math.exp((a + b) / 2)


def fit_postprocessing(model_dir: str | Path, dev: Sequence[Example], train: Sequence[Example] = (), *,
                       calibrate: bool = True, companion: bool = False, lexicon: str | Path | None = None,
                       companion_c: float | None = None, batch_size: int = 64, device: str = "cpu",
                       drift_reference: bool = True, decision_offsets: bool = True) -> dict[str, Any]:
    """Fit and write the post-processing of ``model_dir`` on ``dev``; returns what was fitted (JSON-able).
    With ``drift_reference`` the final dev predictions also become the stream's drift-alarm reference
    (``drift_reference.json``: dev is held out, so its confidence is what new text gets).

    Any calibration already in the directory is ignored while fitting and replaced."""
    from classifier.labels import LabelSet
    from classifier.modeldir import read_meta
    from classifier.predict import Predictor

    d = Path(model_dir)
    (d / CALIBRATION_FILE).unlink(missing_ok=True)
    if not dev:
        raise ValueError("fit_postprocessing needs dev examples")
    predictor = Predictor.from_dir(d, device=device, batch_size=batch_size)
    labels = LabelSet.of(read_meta(d)[1].labels)
    y = torch.tensor([labels.id(e.label) for e in dev])
    texts = [e.text for e in dev]
    with torch.inference_mode():
        seqs, owner = predictor.model_inputs(texts)
        logits = predictor.logits_of(seqs)

    def pooled(t: float) -> torch.Tensor:
        return predictor.pool(torch.softmax(logits / t, dim=-1), owner, len(texts))

    raw = pooled(1.0)
    temperature = _search_temperature(lambda t: nll(pooled(t), y)) if calibrate else 1.0
    p_enc = pooled(temperature)
    summary: dict[str, Any] = {
        "dev_examples": len(dev),
        "dev_files": sorted({e.source for e in dev}),
        "before": {"nll": nll(raw, y), "ece": expected_calibration_error(raw, y)},
        "temperature": temperature,
    }
    blend = None
    if companion:

        if not train:
            raise ValueError("companion=true needs the training examples")
        comp, c_grid = fit_companion(train, dev, labels.names, lexicon, companion_c)
        p_comp = torch.from_numpy(comp.predict_proba(texts)).float()
        summary["companion_c_dev_nll"] = c_grid
        blend = fit_blend(p_enc, p_comp, y)
        comp.save(d / COMPANION_DIR)
        cal = Calibration(temperature, blend)
        final = cal.combine(p_enc, p_comp)
        summary["companion"] = {**comp.settings, "dev_macro_f1": _macro_f1(p_comp, y, labels.names),
                                "dev_nll": nll(p_comp, y)}
        summary["blend"] = blend.to_json()
    else:
        final = p_enc
    summary["after"] = {"nll": nll(final, y), "ece": expected_calibration_error(final, y)}
    summary["dev_macro_f1"] = {"encoder": _macro_f1(raw, y, labels.names), "final": _macro_f1(final, y, labels.names)}
    offsets = None
    if decision_offsets:
        sources = sorted({e.source for e in dev})
        groups = [sources.index(e.source) for e in dev]
        offsets = fit_decision_offsets(final, y, groups)
        pred = decide(final, offsets)
        summary["decision_offsets"] = {
            "offsets": dict(zip(labels.names, offsets, strict=True)),
            "dev_mean_macro_f1": {"argmax": _mean_macro_f1(final.argmax(-1), y, groups, len(labels)),
                                  "offsets": _mean_macro_f1(pred, y, groups, len(labels))}}
        summary["dev_macro_f1"]["final_with_offsets"] = macro_f1_of(pred, y, len(labels))
    if calibrate or companion or decision_offsets:
        write_json(d, CALIBRATION_FILE, Calibration(temperature, blend, offsets, fitted_on=summary).to_json())
    if drift_reference:
        summary["drift_reference"] = write_drift_reference(d, final, labels.names)
    log.info("post-processing fitted on %d dev examples: T=%.3f%s; dev NLL %.4f -> %.4f, ECE %.4f -> %.4f",
             len(dev), temperature, f", blend {blend.to_json()}" if blend else "", summary["before"]["nll"],
             summary["after"]["nll"], summary["before"]["ece"], summary["after"]["ece"])
    return summary


#: the companion's regularisation strengths tried on dev when none is given
COMPANION_C_GRID: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


def fit_companion(train: Sequence[Example], dev: Sequence[Example], labels: Sequence[str],
                  lexicon: str | Path | None, c: float | None) -> tuple[Any, dict[str, float]]:
    """The companion trained on ``train``; with ``c=None`` the C of :data:`COMPANION_C_GRID` with the lowest
    dev log-loss (its probabilities feed the blend, so their quality is what counts). Returns it and
    ``{C: dev NLL}``."""
    from classifier.companion import LinearCompanion

    y = torch.tensor([list(labels).index(e.label) for e in dev])
    best, best_nll, grid = None, float("inf"), {}
    for value in ((c,) if c is not None else COMPANION_C_GRID):
        comp = LinearCompanion.fit([e.text for e in train], [e.label for e in train], labels,
                                   lexicon_path=lexicon or None, C=value)
        grid[str(value)] = nll(torch.from_numpy(comp.predict_proba([e.text for e in dev])), y)
        if grid[str(value)] < best_nll:
            best, best_nll = comp, grid[str(value)]
    return best, grid


def write_drift_reference(model_dir: Path, probs: torch.Tensor, labels: Sequence[str]) -> dict[str, Any]:
    """``drift_reference.json`` from final held-out probabilities, stamped with the directory's model version
    (computed after the calibration is written, since it is part of the version)."""
    from classifier.drift import Reference
    from classifier.labels import LabelSet
    from classifier.modeldir import DRIFT_REFERENCE_FILE, model_version

    labelset = LabelSet.of(labels)
    preds = [{"label": labelset.names[int(row.argmax())],
              "probabilities": dict(zip(labelset.names, row.tolist(), strict=True)),
              "score": labelset.score(row.tolist())} for row in probs]
    ref = Reference.from_predictions(preds, model_version=model_version(model_dir), source="training dev split")
    ref.save(model_dir / DRIFT_REFERENCE_FILE)
    return ref.summary()


def _mean_macro_f1(pred: torch.Tensor, y: torch.Tensor, groups: Sequence[int], k: int) -> float:
    g = torch.tensor(groups)
    ids = sorted(set(groups))
    return sum(macro_f1_of(pred[g == i], y[g == i], k) for i in ids) / len(ids)


def _macro_f1(probs: torch.Tensor, y: torch.Tensor, names: Sequence[str]) -> float:
    from classifier.metrics import compute_metrics

    return float(compute_metrics([names[i] for i in y.tolist()], [names[i] for i in probs.argmax(-1).tolist()],
                                 list(names))["macro_f1"])
