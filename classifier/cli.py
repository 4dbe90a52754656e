"""``finsent evaluate`` and ``finsent predict``: thin commands over :class:`classifier.predict.Predictor`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="finsent model directory (as exported by `finsent finetune`)")
    p.add_argument("--data", nargs="+", required=True, help="labelled files: label|||text (.txt), .jsonl or .csv")
    p.add_argument("--out", default=None, help="where report.json and confusion PNGs go (default: <model>/eval)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: dynamic int8 Linear layers on CPU, as serving's quantize=int8 (measure its cost here)")
    p.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="bad data lines: skip and count them (default) or stop at the first")
    p.add_argument("--perturb", nargs="*", type=float, default=None, metavar="RATE",
                   help="also evaluate on deterministically perturbed copies of the data (character noise at "
                        "each RATE, e.g. --perturb 0.05 0.1) and report the metric drop")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations")


def evaluate(args: argparse.Namespace) -> int:
    from classifier.data import read_examples
    from classifier.metrics import compute_metrics, format_report, plot_confusion, save_report
    from classifier.predict import Predictor

    predictor = Predictor.from_dir(args.model, device=args.device, batch_size=args.batch_size,
                                   quantize=args.quantize)
    out_dir = Path(args.out) if args.out else Path(args.model) / "eval"
    report: dict = {"model_version": predictor.model_version, "files": {}}
    for path in args.data:
        data = read_examples(path, predictor.labels, on_error=args.on_error)
        if data.bad:
            print(f"{path}: skipped {len(data.bad)} bad line(s); first: {data.bad[0]}", file=sys.stderr)
        preds = [predictor.labels[i] for i in predictor.predict_proba(data.texts).argmax(-1).tolist()]
        m = compute_metrics(data.labels, preds, predictor.labels)
        m["skipped_lines"] = len(data.bad)
        print(format_report(m, title=f"== {path} ({predictor.model_version})"))
        entry = {"clean": m}
        stem = Path(path).stem if Path(path).stem not in report["files"] else Path(path).as_posix().replace("/", "_")
        plot_confusion(m, out_dir / f"confusion_{stem}.png")
        if args.perturb:
            from classifier.perturb import perturb_texts

            for rate in args.perturb:
                noisy = perturb_texts(data.texts, rate=rate, seed=args.seed)
                npreds = [predictor.labels[i] for i in predictor.predict_proba(noisy).argmax(-1).tolist()]
                nm = compute_metrics(data.labels, npreds, predictor.labels)
                entry[f"perturb_{rate}"] = nm
                print(f"   perturb rate {rate}: accuracy {nm['accuracy']:.4f} ({nm['accuracy'] - m['accuracy']:+.4f})"
                      f"  macro-F1 {nm['macro_f1']:.4f} ({nm['macro_f1'] - m['macro_f1']:+.4f})")
        report["files"][path] = entry
    save_report(report, out_dir / "report.json")
    print(f"wrote {out_dir / 'report.json'}")
    return 0


def add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="finsent model directory")
    p.add_argument("texts", nargs="*", help="texts to classify; none → read one text a line from stdin")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="int8: dynamic int8 Linear layers on CPU, as serving's quantize=int8 (measure its cost here)")


def predict(args: argparse.Namespace) -> int:
    from classifier.predict import Predictor

    texts = list(args.texts)
    if not texts:
        texts = [line.rstrip("\n") for line in sys.stdin]
    texts = [t for t in texts if t.strip()]
    if not texts:
        print("no text given: pass texts as arguments or one a line on stdin", file=sys.stderr)
        return 2
    predictor = Predictor.from_dir(args.model, device=args.device, batch_size=args.batch_size,
                                   quantize=args.quantize)
    for text, pred in zip(texts, predictor.predict(texts), strict=True):
        print(json.dumps({"text": text, **pred}, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classifier", description="finsent classifier core commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_args(sub.add_parser("evaluate", help="score a model directory on labelled files"))
    add_predict_args(sub.add_parser("predict", help="classify texts, print JSON lines"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return {"evaluate": evaluate, "predict": predict}[args.command](args)
