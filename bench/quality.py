"""The whole quality table in one run: linear baselines and the encoder recipe with each technique on and off,
scored on the held-out TEST split per source and per length bucket, with dev, ECE, wall times and the machine.

    python bench/quality.py                          # everything (trains what is missing: hours on 2 CPU cores)
    python bench/quality.py --variants default,no-fgm --report-only   # score what is already trained
    python bench/quality.py --write-docs docs/results.md              # regenerate the README/docs results table
    python bench/quality.py --reuse --report-only ...                 # score only what is new since quality.json

Protocol: the split of ``finsent split`` (runs/split: FinFE forum posts train/dev/test, CFSC news
train/dev/test, constructed long news dev_long/test_long). Everything is selected on dev — baseline
regularisation, checkpoints, temperature, blend, the long-text strategy — and test is only reported: no
number computed on test feeds back into any choice. Variants train once and are reused from ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from classifier.data import read_examples  # noqa: E402
from classifier.evaluation import score, score_by_bucket  # noqa: E402
from classifier.host import host_info, host_line  # noqa: E402

log = logging.getLogger("bench.quality")

SOURCES = ("finfe", "cfsc")
SOURCE_NAMES = {"finfe": "FinFE forum posts", "cfsc": "CFSC news", "cfsc_long": "long news (constructed)"}
#: variant -> (FinetuneConfig overrides on top of training/configs/finetune.yaml, what it is, compared with)
VARIANTS: dict[str, tuple[list[str], str, str | None]] = {
    "default": ([], "default recipe (FGM, EMA, companion blend, temperature)", None),
    "no-fgm": (["adversarial=none"], "default without FGM", "default"),
    "rdrop": (["adversarial=none", "rdrop=1.0"], "R-Drop (alpha 1.0) instead of FGM", "no-fgm"),
    "no-fgm-seed-2": (["adversarial=none", "seed=2"], "default without FGM, seed 2", None),
    "no-fgm-seed-3": (["adversarial=none", "seed=3"], "default without FGM, seed 3", None),
    "l1-1e-3": (["adversarial=none", "l1=1e-3"], "no-FGM recipe + L1 1e-3 on the output layer", "no-fgm"),
    "l1-1e-2": (["adversarial=none", "l1=1e-2"], "no-FGM recipe + L1 1e-2 on the output layer", "no-fgm"),
}
#: The technique ablation at ONE epoch (the 3-epoch recipe costs 45-120 min per variant on 2 CPU cores, FGM and
#: R-Drop twice as much): every technique on vs off at the same reduced scale, and three seeds of the base so that
#: a difference can be read against the seed-to-seed spread. Its rows say "1 epoch"; they are not the shipped model.
ABLATION: dict[str, tuple[list[str], str, str | None]] = {
    "1ep-no-fgm": (["adversarial=none"], "1-epoch recipe without FGM (the ablation base)", None),
    "1ep-fgm": ([], "1-epoch recipe with FGM", "1ep-no-fgm"),
    "1ep-l1-1e-2": (["adversarial=none", "l1=1e-2"], "1-epoch base + L1 1e-2 on the output layer", "1ep-no-fgm"),
    "1ep-rdrop": (["adversarial=none", "rdrop=1.0"], "1-epoch base + R-Drop (alpha 1.0)", "1ep-no-fgm"),
    "1ep-no-fgm-seed-2": (["adversarial=none", "seed=2"], "1-epoch base, seed 2", None),
    "1ep-no-fgm-seed-3": (["adversarial=none", "seed=3"], "1-epoch base, seed 3", None),
    "1ep-l1-1e-3": (["adversarial=none", "l1=1e-3"], "1-epoch base + L1 1e-3 on the output layer", "1ep-no-fgm"),
}
ABLATION_OVERRIDES = ["epochs=1"]
VARIANTS.update({k: ([*ABLATION_OVERRIDES, *v[0]], v[1], v[2]) for k, v in ABLATION.items()})
SEED_SETS = {"3-epoch": ("no-fgm", "no-fgm-seed-2", "no-fgm-seed-3"),
             "1-epoch": ("1ep-no-fgm", "1ep-no-fgm-seed-2", "1ep-no-fgm-seed-3")}
#: students of `finsent distill` (training/configs/distill-*.yaml), scored when their directory exists in --out
STUDENTS: dict[str, str] = {"distill-6": "6-layer student of the default model (finsent distill)",
                            "distill-4": "4-layer student of the default model (finsent distill)"}
LONG_STRATEGIES: tuple[tuple[str, str], ...] = (("head_tail", "mean"), ("sliding_window", "mean"),
                                                ("sliding_window", "max_polar"), ("sentences", "mean"),
                                                ("sentences", "max_polar"))


# ================================================================================================ machine
# ================================================================================================ data
def split_files(split: Path) -> dict[str, dict[str, Path]]:
    files = {s: {k: split / s / f"{k}.txt" for k in ("train", "dev", "test")} for s in SOURCES}
    files["cfsc_long"] = {"dev": split / "cfsc" / "dev_long.txt", "test": split / "cfsc" / "test_long.txt"}
    return files


def load(files: dict[str, dict[str, Path]], labels: list[str]) -> dict[str, dict[str, Any]]:
    return {src: {k: read_examples(p, labels, on_error="raise") for k, p in parts.items()}
            for src, parts in files.items()}


# ================================================================================================ baselines
def _fit_select(make: Any, data: dict[str, dict[str, Any]], labels: list[str], grid: tuple[float, ...]
                ) -> tuple[Any, float, dict[float, float]]:
    """Fit ``make(C)`` on train for each C, keep the best mean dev macro-F1 over the sources (dev only)."""
    train_x = [t for s in SOURCES for t in data[s]["train"].texts]
    train_y = [t for s in SOURCES for t in data[s]["train"].labels]
    best, best_c, dev_scores = None, None, {}
    for c in grid:
        model = make(c).fit(train_x, train_y)
        f1 = statistics.mean(score(_proba(model, data[s]["dev"].texts, labels), data[s]["dev"].labels,
                                   labels)["macro_f1"] for s in SOURCES)
        dev_scores[c] = f1
        if best is None or f1 > dev_scores[best_c]:
            best, best_c = model, c
    return best, best_c, dev_scores


def _proba(model: Any, texts: list[str], labels: list[str]) -> Any:
    import numpy as np
    import torch

    p = model.predict_proba(texts)
    cols = [list(model.classes_).index(lab) for lab in labels]
    return torch.from_numpy(np.asarray(p)[:, cols]).float()


def tfidf_pipeline(c: float) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2),
                         LogisticRegression(C=c, class_weight="balanced", max_iter=3000))


def lexicon_pipeline(lexicon: Path) -> Any:
    """jieba words (finance lexicon as user words) TF-IDF + counts of positive / negative lexicon words → LR."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from classifier.companion import LexiconCounter, read_polar_lexicon

    counter = LexiconCounter(*read_polar_lexicon(lexicon))

    def make(c: float) -> Any:
        words = TfidfVectorizer(tokenizer=counter.segmenter.cut, token_pattern=None, lowercase=False,
                                sublinear_tf=True, min_df=2)
        feats = FeatureUnion([("words", words), ("lexicon", FunctionTransformer(counter.features))])
        return make_pipeline(feats, LogisticRegression(C=c, class_weight="balanced", max_iter=3000))

    return make


def evaluate_probs(name: str, proba: Any, data: dict[str, dict[str, Any]], labels: list[str],
                   pieces: Any = None, decide: Any = None) -> dict[str, Any]:
    """Dev and test scores per source (and per length bucket when ``pieces(texts)`` is given) of the labels
    ``decide(probs)`` names (default: the argmax)."""
    out: dict[str, Any] = {"name": name}
    for src, parts in data.items():
        for split in ("dev", "test"):
            if split not in parts:
                continue
            ds = parts[split]
            p = proba(ds.texts)
            m = score(p, ds.labels, labels, decide)
            row = {k: m[k] for k in ("accuracy", "macro_f1", "ece", "nll")}
            row["n"] = m["n"]
            row["per_class_f1"] = {lab: m["per_class"][lab]["f1"] for lab in labels}
            if pieces is not None:
                row["by_length"] = score_by_bucket(p, ds.labels, pieces(ds.texts), labels, decide)
            out[f"{split}/{src}"] = row
    return out


def run_baselines(data: dict[str, dict[str, Any]], labels: list[str], lexicon: Path, pieces: Any
                  ) -> list[dict[str, Any]]:
    rows = []
    for name, make in (("TF-IDF char 1-3 + LR", tfidf_pipeline), ("jieba words + lexicon counts + LR",
                                                                   lexicon_pipeline(lexicon))):
        t0 = time.perf_counter()
        model, c, grid = _fit_select(make, data, labels, (0.5, 1.0, 2.0, 4.0, 8.0))
        wall = time.perf_counter() - t0
        row = evaluate_probs(name, lambda texts, m=model: _proba(m, texts, labels), data, labels, pieces)
        row.update({"kind": "baseline", "selected_C": c, "dev_grid": grid, "wall_time_s": wall})
        rows.append(row)
        log.info("%s: C=%s selected on dev (%s), test FinFE %.4f, CFSC %.4f", name, c, grid,
                 row["test/finfe"]["macro_f1"], row["test/cfsc"]["macro_f1"])
    return rows


# ================================================================================================ encoder
def is_trained(model_dir: Path) -> bool:
    """A finished run: its report exists and, where the run fits a calibration or companion on dev, says that
    it did (the report is first written before that fitting, so a run stopped there is not finished)."""
    path = model_dir / "training_report.json"
    if not path.is_file():
        return False
    report = json.loads(path.read_text(encoding="utf-8"))
    cfg = report.get("config", {})
    return "postprocessing" in report or not any(cfg.get(k) for k in ("calibrate", "companion", "decision_offsets"))


def train_variant(name: str, out: Path, config: Path, extra: list[str]) -> Path:
    model_dir = out / name
    if is_trained(model_dir):
        log.info("%s: reusing %s", name, model_dir)
        return model_dir
    from classifier.config import load_config
    from training.config import FinetuneConfig
    from training.finetune import run_finetune

    overrides = [*VARIANTS[name][0], *extra, f"output_dir={model_dir}", "overwrite=true", "export_variants=true",
                 f"storage_path={out / 'ray'}"]
    log.info("%s: training (%s)", name, " ".join(overrides))
    run_finetune(load_config(FinetuneConfig, config, overrides))
    return model_dir


def evaluate_model(name: str, model_dir: Path, data: dict[str, dict[str, Any]], labels: list[str],
                   full: bool = True) -> list[dict]:
    """Rows for one trained variant: as shipped, encoder alone (no blend), uncalibrated, raw vs EMA weights,
    and the long-text strategies (selected on dev_long). ``full=False`` (the ablation variants): as shipped and
    the encoder alone only."""
    import dataclasses

    from classifier.calibration import Calibration
    from classifier.predict import Predictor

    report = json.loads((model_dir / "training_report.json").read_text(encoding="utf-8"))
    base = {"variant": name, "wall_time_s": report["wall_time_s"], "best_epoch": report["best_epoch"],
            "weights": report["best_metric"].get("weights", "raw"), "kind": "encoder",
            "run_name": report.get("run_name")}
    predictor = Predictor.from_dir(model_dir, device="cpu", batch_size=64)

    def pieces(texts: list[str]) -> list[int]:
        return [len(ids) for ids in predictor.tokenizer.encode(texts)]

    short = {k: v for k, v in data.items() if k != "cfsc_long"}
    rows = [{**base, **evaluate_probs(f"{name}: as shipped", predictor.predict_proba, short, labels, pieces,
                                      predictor.decide), "setting": "shipped"}]
    cal = predictor.calibration
    if full and cal is not None and cal.decision_offsets is not None:
        rows.append({**base, **evaluate_probs(f"{name}: argmax label (no decision offsets)", predictor.predict_proba,
                                              short, labels, pieces), "setting": "no_offsets"})
    if cal is not None and cal.blend is not None:
        predictor.calibration = Calibration(cal.encoder_temperature)
        rows.append({**base, **evaluate_probs(f"{name}: encoder alone (no companion blend, argmax)",
                                              predictor.predict_proba, short, labels, pieces),
                     "setting": "no_companion"})
    if not full:
        return rows
    predictor.calibration = None
    rows.append({**base, **evaluate_probs(f"{name}: uncalibrated encoder (argmax)", predictor.predict_proba, short,
                                          labels, pieces), "setting": "uncalibrated"})
    predictor.calibration = cal
    for wname in ("raw", "ema"):
        vdir = model_dir / "variants" / wname
        if vdir.is_dir():
            vp = Predictor.from_dir(vdir, device="cpu", batch_size=64)
            rows.append({**base, **evaluate_probs(f"{name}: {wname} weights of the best epoch", vp.predict_proba,
                                                  short, labels, pieces, vp.decide), "setting": f"weights_{wname}"})
    # long news: each truncation strategy x pooling, selected on dev_long, reported on test_long
    long_rows = []
    trunc = predictor.tokenizer.truncation
    for strategy, pooling in LONG_STRATEGIES:
        predictor.tokenizer.truncation = dataclasses.replace(trunc, strategy=strategy, pooling=pooling)
        r = evaluate_probs(f"{name}: long news, {strategy}/{pooling}", predictor.predict_proba,
                           {"cfsc_long": data["cfsc_long"]}, labels, pieces, predictor.decide)
        long_rows.append({**base, **r, "setting": f"long_{strategy}_{pooling}", "strategy": strategy,
                          "pooling": pooling})
    predictor.tokenizer.truncation = trunc
    best_long = max(long_rows, key=lambda r: r["dev/cfsc_long"]["macro_f1"])
    best_long["selected_on_dev"] = True
    return rows + long_rows


def reusable_rows(old: dict[str, Any] | None, variant: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of ``variant`` in an earlier result, when they were scored from the same training run (its run
    name; for rows written before run names were kept, the same wall time and best epoch) — else ``[]``."""
    mine = [r for r in (old or {}).get("rows", []) if r.get("variant") == variant]
    if not mine:
        return []
    r = mine[0]
    if r.get("run_name") is not None:
        same = r["run_name"] == report.get("run_name")
    else:
        same = r.get("wall_time_s") == report.get("wall_time_s") and r.get("best_epoch") == report.get("best_epoch")
    return mine if same else []


# ================================================================================================ tables
def _f(x: float) -> str:
    return f"{x:.4f}"


def _cell(row: dict[str, Any], key: str) -> str:
    m = row.get(key)
    return f"{m['macro_f1']:.4f} ({m['accuracy']:.3f})" if m else "–"


def _reused_note(result: dict[str, Any]) -> str:
    reused = result.get("reused")
    if not reused:
        return ""
    by_date: dict[str, list[str]] = {}
    for what, date in reused["scored"].items():
        by_date.setdefault(date, []).append(what)
    when = "; ".join(f"{', '.join(whats)} on {date}" for date, whats in sorted(by_date.items()))
    return f" Rows reused from earlier scoring of the same trained models and split (`--reuse`): {when}."


def scored_dates(old: dict[str, Any], reused: list[str]) -> dict[str, str]:
    """When each reused group of rows was first scored: its own earlier note, else the earlier file's date."""
    earlier = (old.get("reused") or {}).get("scored") or {}
    if not isinstance(earlier, dict):  # a file written before dates were kept per group
        earlier = dict.fromkeys((old.get("reused") or {}).get("rows_of", []), earlier)
    return {what: earlier.get(what, old["machine"]["date"]) for what in reused}


def markdown(result: dict[str, Any]) -> str:
    rows, mach = result["rows"], result["machine"]
    lines = [f"Measured {mach['date']} on {host_line(mach)} (load average at start of scoring "
             f"{', '.join(f'{x:.1f}' for x in result['load_start'])}; training wall times are from each run's "
             "report, and other jobs shared the machine during them). "
             f"Split: `finsent split` seed {result['split']['seed']}; test sizes FinFE "
             f"{result['sizes']['test/finfe']}, CFSC {result['sizes']['test/cfsc']}, constructed long news "
             f"{result['sizes']['test/cfsc_long']}. Macro-F1 (accuracy) on **test**; dev = mean of the two "
             "sources' dev macro-F1 (what selected the checkpoint)." + _reused_note(result), "",
             "| model | FinFE test | CFSC news test | long news test (>512 pieces) | ECE FinFE / CFSC | dev | "
             "train wall |", "|---|---|---|---|---|---|---|"]
    shipped = [r for r in rows if r.get("setting") in (None, "shipped") and r.get("variant") not in ABLATION]
    for r in shipped:
        long = next((x for x in rows if x.get("variant") == r.get("variant") and x.get("selected_on_dev")), None)
        dev = statistics.mean(r[f"dev/{s}"]["macro_f1"] for s in SOURCES)
        ece = f"{r['test/finfe']['ece']:.3f} / {r['test/cfsc']['ece']:.3f}"
        wall = r.get("wall_time_s", 0)
        long_cell = _cell(long, "test/cfsc_long") if long else _cell(r, "test/cfsc_long")
        wall_cell = f"{wall / 60:.1f} min" if wall > 60 else f"{wall:.0f} s"
        lines.append(f"| {r['name']} | {_cell(r, 'test/finfe')} | {_cell(r, 'test/cfsc')} | {long_cell} | {ece} | "
                     f"{dev:.4f} | {wall_cell} |")
    lines += ["", "Each technique, on vs off (test macro-F1; Δ = on − off):", "",
              "| technique | FinFE on / off (Δ) | CFSC on / off (Δ) | kept? |", "|---|---|---|---|"]
    for t in result.get("techniques", []):
        if "finfe_on" not in t:
            lines.append(f"| {t['technique']} | – | – | {t['kept']} |")
            continue
        lines.append(f"| {t['technique']} | {t['finfe_on']:.4f} / {t['finfe_off']:.4f} ({t['finfe_on'] - t['finfe_off']:+.4f})"
                     f" | {t['cfsc_on']:.4f} / {t['cfsc_off']:.4f} ({t['cfsc_on'] - t['cfsc_off']:+.4f}) | {t['kept']} |")
    ablation = [r for r in rows if r.get("variant") in ABLATION and r.get("setting") in ("shipped", "no_companion")]
    if ablation:
        lines += ["", f"The 1-epoch ablation ({' '.join(ABLATION_OVERRIDES)} on top of the recipe, everything else as "
                  "shipped; test macro-F1 (accuracy)):", "",
                  "| variant | setting | FinFE test | CFSC news test | dev | train wall |", "|---|---|---|---|---|---|"]
        for r in sorted(ablation, key=lambda r: (list(ABLATION).index(r["variant"]), r["setting"] != "shipped")):
            dev = statistics.mean(r[f"dev/{s}"]["macro_f1"] for s in SOURCES)
            setting = "as shipped" if r["setting"] == "shipped" else "encoder alone"
            lines.append(f"| {ABLATION[r['variant']][1]} | {setting} | {_cell(r, 'test/finfe')} | "
                         f"{_cell(r, 'test/cfsc')} | {dev:.4f} | {r.get('wall_time_s', 0) / 60:.1f} min |")
    long_rows = [r for r in rows if str(r.get("setting", "")).startswith("long_") and r.get("variant") == "default"]
    if long_rows:
        lines += ["", "Long news (constructed from held-out CFSC sentences; > 512 pieces), default model:", "",
                  "| strategy / pooling | dev_long macro-F1 | test_long macro-F1 (acc) |", "|---|---|---|"]
        for r in long_rows:
            mark = " (selected on dev)" if r.get("selected_on_dev") else ""
            lines.append(f"| {r['strategy']} / {r['pooling']}{mark} | {r['dev/cfsc_long']['macro_f1']:.4f} | "
                         f"{_cell(r, 'test/cfsc_long')} |")
    for scale, seeds in (result.get("seeds") or {}).items():
        lines += ["", f"Seeds of the {scale} no-FGM recipe ({', '.join(seeds['variants'])}): test macro-F1 FinFE "
                  f"{seeds['finfe_mean']:.4f} ± {seeds['finfe_std']:.4f}, CFSC {seeds['cfsc_mean']:.4f} ± "
                  f"{seeds['cfsc_std']:.4f} (mean ± sd; max − min {seeds['finfe_range']:.4f} / "
                  f"{seeds['cfsc_range']:.4f}). A technique's Δ within that range is not distinguishable from a "
                  "change of seed."]
    return "\n".join(lines)


def brief(result: dict[str, Any]) -> str:
    """The README's short table: test macro-F1 of every shipped model and baseline (long news: the strategy
    selected on dev), with the machine in one line."""
    rows, mach = result["rows"], result["machine"]
    lines = ["| model | FinFE forum posts | CFSC news | long news (constructed) |", "|---|---|---|---|"]
    for r in (r for r in rows if r.get("setting") in (None, "shipped") and r.get("variant") not in ABLATION):
        long = next((x for x in rows if x.get("variant") == r.get("variant") and x.get("selected_on_dev")), r)
        lines.append(f"| {r['name']} | {_cell(r, 'test/finfe')} | {_cell(r, 'test/cfsc')} | "
                     f"{_cell(long, 'test/cfsc_long')} |")
    lines += ["", f"Test macro-F1 (accuracy), {mach['date']}, {host_line(mach)}; generated by `bench/quality.py`, "
              "details and every technique on/off in [docs/results.md](docs/results.md)."]
    return "\n".join(lines)


def write_readme(path: Path, md: str) -> None:
    """Replace the README's ``results:begin``/``results:end`` section."""
    text = path.read_text(encoding="utf-8")
    new = re.sub(r"<!-- results:begin -->.*<!-- results:end -->",
                 lambda _: f"<!-- results:begin -->\n{md}\n<!-- results:end -->", text, flags=re.S)
    path.write_text(new, encoding="utf-8")


def techniques(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def get(variant: str, setting: str) -> dict[str, Any] | None:
        return next((r for r in rows if r.get("variant") == variant and r.get("setting") == setting), None)

    out = []

    spread = seed_spread(rows)

    def add(name: str, on: dict | None, off: dict | None, by_ece: bool = False, scale: str | None = None,
            encoder: tuple[dict | None, dict | None] = (None, None)) -> None:
        if not (on and off):  # a variant that was not trained: the row says so instead of vanishing
            out.append({"technique": name, "kept": "not measured (its variant is not trained)"})
        else:
            d = {"technique": name, "finfe_on": on["test/finfe"]["macro_f1"], "finfe_off": off["test/finfe"]["macro_f1"],
                 "cfsc_on": on["test/cfsc"]["macro_f1"], "cfsc_off": off["test/cfsc"]["macro_f1"]}
            gain = (d["finfe_on"] - d["finfe_off"]) + (d["cfsc_on"] - d["cfsc_off"])
            d["kept"] = "yes" if gain > 0 else "no"
            seeds = spread.get(scale) if scale else None
            if seeds and all(abs(d[f"{s}_on"] - d[f"{s}_off"]) <= seeds[f"{s}_range"] for s in SOURCES):
                d["kept"] += (f" (both Δ within what a change of seed alone moved: {seeds['finfe_range']:.4f} / "
                              f"{seeds['cfsc_range']:.4f})")
            if all(encoder):  # the same pair without the companion blend: what the technique does to the encoder
                e_on, e_off = encoder
                d["encoder_delta"] = [e_on[f"test/{s}"]["macro_f1"] - e_off[f"test/{s}"]["macro_f1"] for s in SOURCES]
                d["kept"] += "; encoder alone Δ " + " / ".join(f"{x:+.4f}" for x in d["encoder_delta"])
            if by_ece:  # labels do not change: judged by test ECE, FinFE / CFSC
                eces = [(off[f"test/{s}"]["ece"], on[f"test/{s}"]["ece"]) for s in ("finfe", "cfsc")]
                better = sum(b for b, _ in eces) > sum(a for _, a in eces)
                d["kept"] = ("yes" if better else "no") + ": test ECE " + ", ".join(
                    f"{b:.3f} → {a:.3f}" for b, a in eces)
            out.append(d)

    add("companion blend (stacking; labels by argmax)", get("default", "no_offsets"), get("default", "no_companion"))
    add("macro-F1 decision offsets (fitted on dev)", get("default", "shipped"), get("default", "no_offsets"))
    add("temperature scaling (labels unchanged; see ECE)", get("default", "no_companion"),
        get("default", "uncalibrated"), by_ece=True)
    add("EMA weight averaging", get("default", "weights_ema"), get("default", "weights_raw"))
    # trained techniques: the 3-epoch pair where it was trained, the 1-epoch ablation pair where that was; a
    # technique with neither says "not measured"
    for name, (on3, off3), (on1, off1) in (
            ("FGM", ("default", "no-fgm"), ("1ep-fgm", "1ep-no-fgm")),
            ("R-Drop (no FGM)", ("rdrop", "no-fgm"), ("1ep-rdrop", "1ep-no-fgm")),
            ("L1 1e-3 on the output layer", ("l1-1e-3", "no-fgm"), ("1ep-l1-1e-3", "1ep-no-fgm")),
            ("L1 1e-2 on the output layer", ("l1-1e-2", "no-fgm"), ("1ep-l1-1e-2", "1ep-no-fgm"))):
        full, short = [(get(a, "shipped"), get(b, "shipped")) for a, b in ((on3, off3), (on1, off1))]
        if all(full) or not all(short):
            add(name, *full, scale="3-epoch", encoder=(get(on3, "no_companion"), get(off3, "no_companion")))
        if all(short):
            add(f"{name}, 1-epoch ablation", *short, scale="1-epoch",
                encoder=(get(on1, "no_companion"), get(off1, "no_companion")))
    return out


def seed_spread(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and sd of test macro-F1 over the seeds of each scale's base recipe (two seeds at least)."""
    out = {}
    for scale, variants in SEED_SETS.items():
        seed_rows = [r for r in rows if r.get("setting") == "shipped" and r.get("variant") in variants]
        if len(seed_rows) < 2:
            continue
        f = [r["test/finfe"]["macro_f1"] for r in seed_rows]
        c = [r["test/cfsc"]["macro_f1"] for r in seed_rows]
        out[scale] = {"variants": [r["variant"] for r in seed_rows], "finfe_mean": statistics.mean(f),
                      "finfe_std": statistics.stdev(f), "cfsc_mean": statistics.mean(c),
                      "cfsc_std": statistics.stdev(c), "finfe_range": max(f) - min(f), "cfsc_range": max(c) - min(c)}
    return out


def write_docs(path: Path, md: str) -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n\n<!-- quality:begin -->\n<!-- quality:end -->\n"
    new = re.sub(r"<!-- quality:begin -->.*<!-- quality:end -->",
                 lambda _: f"<!-- quality:begin -->\n<!-- generated by bench/quality.py; do not edit by hand -->\n{md}\n"
                           "<!-- quality:end -->", text, flags=re.S)
    path.write_text(new, encoding="utf-8")


# ================================================================================================ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "training" / "configs" / "finetune.yaml"))
    ap.add_argument("--split", default="runs/split", help="the split of `finsent split` (written if missing)")
    ap.add_argument("--out", default="runs/quality", help="where variants are trained and results written")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    ap.add_argument("--train-only", action="store_true", help="train the missing variants, do not score")
    ap.add_argument("--report-only", action="store_true", help="score what is trained, train nothing")
    ap.add_argument("--write-docs", default=None, help="replace the generated section of this Markdown file")
    ap.add_argument("--readme", default=str(REPO / "README.md"),
                    help="with --write-docs: also replace this README's short results table (\"\" = leave it)")
    ap.add_argument("--tables-only", action="store_true",
                    help="rebuild the tables (and --write-docs) from --out/quality.json, scoring nothing")
    ap.add_argument("--no-baselines", action="store_true", help="skip the linear baselines (a quick re-score)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the rows of --out/quality.json for the baselines and every variant scored from the "
                         "same training run on the same split; score only what is new")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="FinetuneConfig overrides for every variant")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from classifier.labels import DEFAULT_LABELS
    from classifier.paths import default_lexicon
    from classifier.splits import MANIFEST, SplitConfig, make_split

    labels = list(DEFAULT_LABELS)
    split = Path(args.split).absolute()
    if not (split / MANIFEST).is_file():
        make_split(SplitConfig(out_dir=str(split)))
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if args.tables_only:
        result = json.loads((out / "quality.json").read_text(encoding="utf-8"))
        result["techniques"] = techniques(result["rows"])
        result["seeds"] = seed_spread(result["rows"])
        return _write_tables(result, out, args)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    if not args.report_only:
        for v in wanted:
            train_variant(v, out, Path(args.config), args.overrides)
    if args.train_only:
        return 0
    data = load(split_files(split), labels)
    from classifier.tokenization import FinsentTokenizer

    default_tok = None

    def pieces(texts: list[str]) -> list[int]:
        nonlocal default_tok
        if default_tok is None:
            from classifier.paths import default_base_model

            default_tok = FinsentTokenizer.from_base(default_base_model(None), [default_lexicon()])
        return [len(ids) for ids in default_tok.encode(texts)]

    manifest = json.loads((split / MANIFEST).read_text(encoding="utf-8"))
    old = None
    if args.reuse and (out / "quality.json").is_file():
        old = json.loads((out / "quality.json").read_text(encoding="utf-8"))
        if old.get("split") != manifest:
            log.warning("--reuse: %s was scored on another split; scoring everything", out / "quality.json")
            old = None
    reused: list[str] = []
    old_baselines = [r for r in (old or {}).get("rows", []) if r.get("kind") == "baseline"]
    if args.no_baselines:
        rows = []
    elif old_baselines:
        rows, reused = old_baselines, ["baselines"]
    else:
        rows = run_baselines(data, labels, Path(default_lexicon()), pieces)
    for v in [*wanted, *STUDENTS]:
        report_path = out / v / "training_report.json"
        if report_path.is_file() and not is_trained(out / v):
            log.warning("%s: its run has not finished (no calibration in its report yet): not scored", v)
        elif report_path.is_file():
            kept = reusable_rows(old, v, json.loads(report_path.read_text(encoding="utf-8")))
            if kept:
                rows += kept
                reused.append(v)
            else:
                rows += evaluate_model(v, out / v, data, labels, full=v not in ABLATION)
    if reused:
        log.info("reused the rows of %s from %s", ", ".join(reused), out / "quality.json")
    result: dict[str, Any] = {"machine": host_info(), "load_start": list(load_start),
                              "reused": {"rows_of": reused, "scored": scored_dates(old, reused)} if reused else None,
                              "split": manifest,
                              "sizes": {f"{k}/{s}": len(d[k]) for s, d in data.items() for k in ("dev", "test")
                                        if k in d},
                              "rows": rows, "techniques": techniques(rows),
                              "scoring_wall_time_s": time.perf_counter() - t_start}
    result["seeds"] = seed_spread(rows)
    return _write_tables(result, out, args)


def _write_tables(result: dict[str, Any], out: Path, args: argparse.Namespace) -> int:
    md = markdown(result)
    (out / "quality.json").write_text(json.dumps(result, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    (out / "quality.md").write_text(md + "\n", encoding="utf-8")
    print(md)
    if args.write_docs:
        write_docs(Path(args.write_docs), md)
        print(f"updated {args.write_docs}")
        if args.readme:
            write_readme(Path(args.readme), brief(result))
            print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
