"""Fine-tuning quality on the dev set, side by side: the default recipe with FGM, without FGM, and a TF-IDF
char 1-3-gram + class-balanced LogisticRegression baseline trained on the same files.

    # inside a private network namespace on this machine (see the README, "Fine-tuning on Ray Train")
    python bench/finetune_quality.py                      # trains both variants (~1-2 h on 2 CPU cores)
    python bench/finetune_quality.py --reuse              # reuse runs/quality/{fgm,nofgm} if already exported
    python bench/finetune_quality.py --only tfidf         # just the baseline (seconds)
    python bench/finetune_quality.py --perturb 0.05 0.1   # also score character-noised dev copies
    python bench/finetune_quality.py epochs=1 max_train_examples=2000   # key=value go to every fine-tune run

Prints a Markdown table (accuracy, macro-F1, per-class F1, wall time) and writes ``<out>/quality.json``.
Select models on dev only: this script never reads a test set.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from classifier.config import load_config  # noqa: E402
from classifier.data import read_examples  # noqa: E402
from classifier.metrics import compute_metrics  # noqa: E402
from classifier.perturb import perturb_texts  # noqa: E402
from training.config import FinetuneConfig, resolve_paths  # noqa: E402

VARIANTS = {"fgm": ["adversarial=fgm"], "nofgm": ["adversarial=none"]}


def tfidf_baseline(train_files: list[str], dev_file: str, labels: list[str], rates: list[float]) -> dict[str, Any]:
    """TF-IDF of character 1-3-grams + LogisticRegression(class_weight=balanced) — the reference linear model."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train = read_examples(train_files, labels)
    dev = read_examples(dev_file, labels)
    t0 = time.perf_counter()
    # scikit-learn defaults otherwise: nothing here is tuned (on dev or anything else)
    pipe = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 3)),
                         LogisticRegression(class_weight="balanced", max_iter=3000))
    pipe.fit(train.texts, train.labels)
    wall = time.perf_counter() - t0
    out = {"name": "tfidf", "dev": compute_metrics(dev.labels, list(pipe.predict(dev.texts)), labels),
           "wall_time_s": wall, "train_examples": len(train), "train_files": train_files}
    for rate in rates:
        noisy = perturb_texts(dev.texts, rate=rate, seed=0)
        out[f"perturb_{rate}"] = compute_metrics(dev.labels, list(pipe.predict(noisy)), labels)
    return out


def finetune_variant(name: str, base: FinetuneConfig, config_path: str, overrides: list[str], out_dir: Path,
                     reuse: bool, rates: list[float]) -> dict[str, Any]:
    model_dir = out_dir / name
    report_path = model_dir / "training_report.json"
    if not (reuse and report_path.is_file()):
        from training.finetune import run_finetune

        cfg = load_config(FinetuneConfig, config_path,
                          [*overrides, *VARIANTS[name], f"output_dir={model_dir}", "overwrite=true"])
        run_finetune(cfg)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    out = {"name": name, "dev": report["dev_metrics"], "wall_time_s": report["wall_time_s"],
           "train_time_s": report["train_time_s"], "best_epoch": report["best_epoch"],
           "train_examples": report["data"]["train_examples"], "model_dir": str(model_dir),
           "machine": report["machine"], "epochs": report["epochs"]}
    if rates:
        from classifier.predict import Predictor

        predictor = Predictor.from_dir(model_dir, device="cpu", batch_size=64)
        dev = read_examples(base.dev_file, base.labels)
        for rate in rates:
            noisy = perturb_texts(dev.texts, rate=rate, seed=0)
            preds = [predictor.labels[i] for i in predictor.predict_proba(noisy).argmax(-1).tolist()]
            out[f"perturb_{rate}"] = compute_metrics(dev.labels, preds, list(predictor.labels))
    return out


def table(rows: list[dict[str, Any]], labels: list[str], rates: list[float]) -> str:
    head = ["model", "dev acc", "dev macro-F1", *[f"F1 {lab}" for lab in labels], "train wall time"]
    head += [f"macro-F1 @ noise {r}" for r in rates]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r["dev"]
        cells = [r["name"], f"{d['accuracy']:.4f}", f"{d['macro_f1']:.4f}",
                 *[f"{d['per_class'][lab]['f1']:.4f}" for lab in labels],
                 f"{r['wall_time_s'] / 60:.1f} min" if r["wall_time_s"] > 60 else f"{r['wall_time_s']:.1f} s"]
        for rate in rates:
            p = r.get(f"perturb_{rate}")
            cells.append(f"{p['macro_f1']:.4f} ({p['macro_f1'] - d['macro_f1']:+.4f})" if p else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "training" / "configs" / "finetune.yaml"),
                    help="fine-tuning recipe (YAML) shared by all variants")
    ap.add_argument("--out", default=str(REPO / "runs" / "quality"), help="where the variants' models are exported")
    ap.add_argument("--only", default="fgm,nofgm,tfidf", help="comma-separated subset of fgm,nofgm,tfidf")
    ap.add_argument("--reuse", action="store_true", help="reuse an exported variant instead of training it again")
    ap.add_argument("--perturb", nargs="*", type=float, default=[], metavar="RATE",
                    help="also score dev copies with character noise at these rates (classifier.perturb)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="FinetuneConfig overrides for every variant")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = resolve_paths(load_config(FinetuneConfig, args.config, args.overrides))
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    out_dir = Path(args.out).absolute()
    rows = []
    for name in wanted:
        if name == "tfidf":
            rows.append(tfidf_baseline([*base.train_files, *base.extra_train_files], base.dev_file, base.labels,
                                       args.perturb))
        elif name in VARIANTS:
            rows.append(finetune_variant(name, base, args.config, args.overrides, out_dir, args.reuse, args.perturb))
        else:
            ap.error(f"--only: unknown variant {name!r}; choose from fgm, nofgm, tfidf")
    print(f"\ndev set: {base.dev_file}\ntrain: {[*base.train_files, *base.extra_train_files]}")
    print(table(rows, base.labels, args.perturb))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1, default=str),
                                          encoding="utf-8")
    print(f"wrote {out_dir / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
