"""The speed/quality frontier of CPU inference, in one run: model directories (teacher and students) ×
backends torch / ONNX Runtime × fp32 / int8, through the real ``Predictor`` (tokenisation, length-sorted
batches, calibration included):

* texts/s at batch 32 (``predict_proba`` over ``--n-texts`` texts, batches of 32),
* texts/s at batch 1 and single-request p50 / p99 latency (``predict([text])`` one text at a time),
* macro-F1 on a labelled test file (``--test``; ``classifier.data.read_examples``),
* ratios against torch fp32 of the same model in the same run, and which variant ``backend=auto
  quantize=auto`` chose on this host.

It prints the host's CPU model and flags (avx2 / avx512* / vnni / amx), torch and ONNX Runtime versions and the
thread count, and writes ``frontier.json`` and ``frontier.md`` to ``--out``. Speed-ups depend on the CPU
(int8 needs VNNI or AMX to pay off): quote them with the flags printed here, never as universal.

    python bench/inference_frontier.py teacher=runs/teacher s6=runs/student6 s4=runs/student4 \\
        --test ../shared/data/finfe/test.txt --texts ../shared/data/cfsc/train.txt --n-texts 512 --threads 2

    # speed only, on a real-size model with an untrained head (speed does not depend on the head):
    python bench/inference_frontier.py --random-head-from ../shared/models/me5-small-zh-fin --max-len 128 \\
        --texts ../shared/data/cfsc/train.txt --n-texts 512 --threads 2

Variants are measured interleaved (every variant's batch pass, then every variant's single requests), so load
from other jobs hits them alike; ``--rounds`` > 1 reports the median round. ONNX exports are cached in each
model directory (``onnx/``); the first run includes the one-time export in the onnx variants' load time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.inference_frontier")

VARIANTS = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="model directories, optionally named: NAME=DIR (teacher=runs/t)")
    p.add_argument("--random-head-from", type=Path, metavar="BASE",
                   help="also benchmark a model directory built from this base encoder with an untrained head")
    p.add_argument("--tiny", action="store_true", help="also benchmark the tiny random test model (a dry run)")
    p.add_argument("--max-len", type=int, default=128, help="max_len of the --random-head-from / --tiny model")
    p.add_argument("--test", type=Path, help="labelled test file for macro-F1 (label|||text, .jsonl or .csv)")
    p.add_argument("--max-test", type=int, help="score only the first N test examples")
    p.add_argument("--texts", type=Path, help="texts for the speed figures (default: the test file)")
    p.add_argument("--n-texts", type=int, default=512, help="texts per batch-32 pass (the first N)")
    p.add_argument("--single", type=int, default=64, help="single requests per variant (p50/p99, batch-1 texts/s)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of the batched figure")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median reported)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    p.add_argument("--no-auto", action="store_true", help="skip the backend=auto quantize=auto load")
    p.add_argument("--out", type=Path, default=Path("runs/bench/inference_frontier"),
                   help="where frontier.json and frontier.md go")
    args = p.parse_args(argv)
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    if not (args.models or args.random_head_from or args.tiny):
        p.error("give model directories (NAME=DIR ...), --random-head-from BASE or --tiny")
    if args.texts is None and args.test is None:
        p.error("give --texts (speed) and/or --test (macro-F1; also used for speed without --texts)")
    return args


# ------------------------------------------------------------------------------------------------ inputs
def build_models(args: argparse.Namespace, workdir: Path) -> list[tuple[str, Path]]:
    models: list[tuple[str, Path]] = []
    for spec in args.models:
        name, sep, path = spec.partition("=")
        d = Path(path if sep else name)
        models.append((name if sep else d.name, d))
    if args.random_head_from:
        import torch

        from classifier.labels import DEFAULT_LABELS
        from classifier.modeldir import ModelMeta, save_model_dir
        from classifier.modeling import build_classifier
        from classifier.paths import default_lexicon
        from classifier.tokenization import TruncationConfig

        torch.manual_seed(0)
        trunc = TruncationConfig(max_len=args.max_len)
        lexicon = [default_lexicon()] if default_lexicon().is_file() else []
        model, tok = build_classifier(args.random_head_from, DEFAULT_LABELS, lexicon_paths=lexicon, truncation=trunc)
        meta = ModelMeta(labels=tuple(DEFAULT_LABELS), base_model=str(args.random_head_from), truncation=trunc,
                         name="random-head")
        models.append((f"{args.random_head_from.name} (random head)",
                       save_model_dir(workdir / "random-head", model, tok, meta)))
    if args.tiny:
        from classifier.testing import make_tiny_model_dir

        models.append(("tiny", make_tiny_model_dir(workdir / "tiny" / "model", max_len=args.max_len)))
    return models


def read_texts(path: Path, n: int) -> list[str]:
    from classifier.data import read_examples

    texts = read_examples(path, require_labels=False).texts[:n]
    if not texts:
        raise SystemExit(f"no texts in {path}")
    return texts


# ------------------------------------------------------------------------------------------------ measuring
def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def bench_model(name: str, model_dir: Path, args: argparse.Namespace, texts: list[str],
                test: Any) -> dict[str, Any]:
    from classifier.metrics import compute_metrics
    from classifier.modeldir import WEIGHTS_FILE, find_onnx_file, weights_version
    from classifier.predict import Predictor

    variants = args.variants.split(",")
    sha = weights_version(model_dir / WEIGHTS_FILE)
    predictors: dict[str, Predictor] = {}
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        backend, precision = v.split("-")
        cached = backend == "torch" or find_onnx_file(model_dir, sha, precision) is not None
        t0 = time.perf_counter()
        predictors[v] = Predictor.from_dir(model_dir, device="cpu", batch_size=args.batch_size, backend=backend,
                                           quantize="int8" if precision == "int8" else "none", threads=args.threads)
        rows[v] = {"variant": v, "model_version": predictors[v].model_version,
                   "load_s": round(time.perf_counter() - t0, 2), "export_cached": cached,
                   "batch_s": [], "single_latencies_s": []}
        print(f"  loaded {v} in {rows[v]['load_s']:.1f}s" + ("" if cached else " (includes the one-time ONNX export / quantisation)"),
              flush=True)
    singles = texts[: args.single]
    for p in predictors.values():  # warm-up: first calls allocate
        p.predict_proba(texts[: args.batch_size])
        p.predict([singles[0]])
    for r in range(args.rounds):
        for v, p in predictors.items():
            t0 = time.perf_counter()
            p.predict_proba(texts)
            rows[v]["batch_s"].append(time.perf_counter() - t0)
        for v, p in predictors.items():
            lat = []
            for t in singles:
                t0 = time.perf_counter()
                p.predict([t])
                lat.append(time.perf_counter() - t0)
            rows[v]["single_latencies_s"].append(lat)
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{v} {len(texts) / rows[v]['batch_s'][-1]:.1f}/s" for v in predictors), flush=True)
    for row in rows.values():
        batch_s = statistics.median(row.pop("batch_s"))
        per_round = row.pop("single_latencies_s")
        mid = sorted(per_round, key=sum)[len(per_round) // 2]
        lat = sorted(mid)
        row.update(texts_per_s_batch=len(texts) / batch_s, texts_per_s_single=len(lat) / sum(lat),
                   p50_ms=1000 * statistics.median(lat), p99_ms=1000 * pct(lat, 0.99))
    ref = rows.get("torch-fp32")
    for row in rows.values():
        if ref:
            row["ratio_batch"] = row["texts_per_s_batch"] / ref["texts_per_s_batch"]
            row["ratio_single"] = row["texts_per_s_single"] / ref["texts_per_s_single"]
    if test is not None:
        for v, p in predictors.items():
            probs = p.predict_proba(test.texts)
            preds = [p.labels[i] for i in p.decide(probs).tolist()]
            m = compute_metrics(test.labels, preds, p.labels)
            rows[v]["macro_f1"] = m["macro_f1"]
            rows[v]["accuracy"] = m["accuracy"]
            rows[v]["probs"] = probs  # for the parity figure, dropped before writing
        if "torch-fp32" in rows:
            base = rows["torch-fp32"]
            for row in rows.values():
                row["delta_f1_points"] = 100 * (row["macro_f1"] - base["macro_f1"])
                if "probs" in row and "probs" in base:
                    row["max_abs_dp_test"] = float((row["probs"] - base["probs"]).abs().max())
        for row in rows.values():
            row.pop("probs", None)
    del predictors
    out: dict[str, Any] = {"name": name, "model_dir": str(model_dir), "variants": list(rows.values())}
    if not args.no_auto:
        t0 = time.perf_counter()
        auto = Predictor.from_dir(model_dir, device="cpu", batch_size=args.batch_size, backend="auto",
                                  quantize="auto", threads=args.threads)
        d = auto.auto_decision
        out["auto"] = {"choice": auto.backend.name, "load_s": round(time.perf_counter() - t0, 2),
                       "measure_s": d.seconds if d else None, "cached_decision": bool(d and d.cached),
                       "measurements": [vars(m) for m in d.measurements] if d else []}
        print(f"  auto chose {auto.backend.name} (load {out['auto']['load_s']:.1f}s"
              + (", cached decision)" if d and d.cached else f", measuring {d.seconds:.1f}s)" if d else ")"),
              flush=True)
    return out


# ------------------------------------------------------------------------------------------------ report
def markdown(result: dict[str, Any]) -> str:
    h = result["host"]
    lines = [
        f"Host: {h['cpu']['model']}, {h['cpu']['logical_cpus']} logical CPUs, flags: "
        f"{' '.join(h['cpu']['flags']) or 'none of avx2/avx512/amx'}; torch {h['versions']['torch']}, "
        f"onnxruntime {h['versions']['onnxruntime']}; {result['threads']} thread(s); load average "
        f"{h['loadavg_start']:.1f} → {h['loadavg_end']:.1f}; {result['n_texts']} texts from {result['texts']}.",
        "",
        "| model | variant | texts/s b32 | × fp32 | texts/s b1 | × fp32 | p50 ms | p99 ms | macro-F1 | Δ pts | load s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        for r in m["variants"]:
            f1 = f"{r['macro_f1']:.4f}" if "macro_f1" in r else "–"
            delta = f"{r['delta_f1_points']:+.2f}" if "delta_f1_points" in r else "–"
            lines.append(
                f"| {m['name']} | {r['variant']} | {r['texts_per_s_batch']:.1f} | {r.get('ratio_batch', 1):.2f}× | "
                f"{r['texts_per_s_single']:.1f} | {r.get('ratio_single', 1):.2f}× | {r['p50_ms']:.0f} | "
                f"{r['p99_ms']:.0f} | {f1} | {delta} | {r['load_s']:.1f}"
                + ("" if r["export_cached"] else " (export)") + " |")
    lines.append("")
    for m in result["models"]:
        if "auto" in m:
            a = m["auto"]
            lines.append(f"- {m['name']}: `backend=auto quantize=auto` chose **{a['choice']}** "
                         + (f"(cached decision, load {a['load_s']:.1f} s)" if a["cached_decision"]
                            else f"(measured in {a['measure_s']:.1f} s, load {a['load_s']:.1f} s)"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("classifier.backends").setLevel(logging.INFO)
    import torch

    from classifier.backends import cpu_info, library_versions

    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    host = {"cpu": cpu, "versions": library_versions(), "loadavg_start": os.getloadavg()[0]}
    print(f"host: {cpu['model']} | {cpu['logical_cpus']} logical CPUs | flags: {' '.join(cpu['flags']) or 'none'} "
          f"| VNNI: {'yes' if cpu['vnni'] else 'no'} | AMX: {'yes' if cpu['amx'] else 'no'}")
    print(f"torch {host['versions']['torch']}, onnxruntime {host['versions']['onnxruntime']}, {args.threads} thread(s), "
          f"load average {host['loadavg_start']:.1f}", flush=True)
    texts_path = args.texts or args.test
    texts = read_texts(texts_path, args.n_texts)
    test = None
    if args.test:
        from classifier.data import read_examples

        test = read_examples(args.test)
        if args.max_test:
            test.examples = test.examples[: args.max_test]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="frontier-") as tmp:
        models = build_models(args, Path(tmp))
        results = []
        for name, d in models:
            print(f"== {name} ({d})", flush=True)
            results.append(bench_model(name, d, args, texts, test))
    host["loadavg_end"] = os.getloadavg()[0]
    result = {"host": host, "threads": args.threads, "texts": str(texts_path), "n_texts": len(texts),
              "single_requests": min(args.single, len(texts)), "test": str(args.test) if args.test else None,
              "n_test": len(test) if test is not None else 0, "rounds": args.rounds, "models": results}
    (args.out / "frontier.json").write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    md = markdown(result)
    (args.out / "frontier.md").write_text(md, encoding="utf-8")
    print()
    print(md)
    print(f"wrote {args.out / 'frontier.json'} and {args.out / 'frontier.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
