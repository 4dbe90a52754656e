"""Batch-labelling throughput, one run, same model and documents for both variants:

  (a) a plain in-process ``classifier.predict.Predictor`` loop (``predict_proba`` on chunks of --batch-size
      texts, torch threads = --threads), model load excluded
  (b) ``finsent label`` on Ray Data (local Ray, an actor pool of Predictors, Parquet shards written), from
      the call to the summary: Ray start, actor start-up and model loads included (``rows/s wall``), and from
      the pipeline's start (``rows/s pipeline``)

over the first --docs documents of the unlabelled corpus (one document a line). Prints rows/s of both, the
ratio (b)/(a), the host's CPU and flags, and checks that (b)'s probabilities equal (a)'s.

Run it inside a private network namespace (Ray binds wildcards), from the repository root:

    python bench/label_throughput.py --model DIR --docs 20000

Without --model it benchmarks the random tiny test model (a smoke test of the script, not a figure).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.label_throughput")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "corpus" / "fin_corpus.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="finsent model directory (default: the tiny random model)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="one document per line")
    p.add_argument("--docs", type=int, default=20000, help="documents to label (the corpus' first N)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the plain loop (default: all cores, as the actor pool uses them)")
    p.add_argument("--concurrency", type=int, default=None, help="actors (default: one per --num-cpus CPUs)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs (and torch threads) per actor")
    p.add_argument("--batch-size", type=int, default=256, help="rows per actor call / per plain-loop call")
    p.add_argument("--model-batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--rows-per-shard", type=int, default=2000)
    p.add_argument("--quantize", choices=["none", "int8", "auto"], default="none")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="passed to both variants when the Predictor supports backends")
    p.add_argument("--output-dir", type=Path, help="where finsent label writes (default: a temporary dir)")
    p.add_argument("--skip-plain", action="store_true", help="only run finsent label")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)





def write_docs(corpus: Path, n: int, out: Path) -> list[str]:
    docs = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            docs.append(line.rstrip("\n"))
            if len(docs) == n:
                break
    if len(docs) < n:
        log.warning("%s has only %d documents", corpus, len(docs))
    out.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return docs


def plain_loop(model: Path, docs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from classifier.predict import Predictor
    from labeling.batch import predictor_kwargs

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    kwargs = predictor_kwargs("cpu", args.model_batch_size, args.quantize, args.backend, args.threads)
    p = Predictor.from_dir(model, **kwargs)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = []
    for i in range(0, len(docs), args.batch_size):
        probs += p.predict_proba(docs[i:i + args.batch_size]).tolist()
    wall = time.perf_counter() - t0
    return {"rows": len(docs), "load_s": load_s, "wall_s": wall, "rows_per_s": len(docs) / wall,
            "threads": args.threads, "model_version": p.model_version, "labels": list(p.labels),
            "probs": probs}


def label_run(model: Path, corpus: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from labeling.batch import run_label
    from labeling.config import LabelConfig

    cfg = LabelConfig(inputs=[str(corpus)], model_dir=str(model), output_dir=str(out), overwrite=True,
                      concurrency=args.concurrency, num_cpus=args.num_cpus, batch_size=args.batch_size,
                      model_batch_size=args.model_batch_size, rows_per_shard=args.rows_per_shard,
                      quantize=args.quantize, backend=args.backend)
    s = run_label(cfg)
    return {"rows": s.rows, "labelled": s.labelled, "bad": s.bad, "actors": s.actors, "wall_s": s.wall_time_s,
            "pipeline_s": s.label_time_s, "rows_per_s_wall": s.rows / s.wall_time_s,
            "rows_per_s_pipeline": s.rows / s.label_time_s if s.label_time_s else 0.0,
            "startup_s": s.startup_s,
            "model_version": s.model_version, "threads_per_actor": cfg.threads}


def compare(out: Path, plain: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    cols = [f"p_{name}" for name in plain["labels"]]
    got = list(zip(*(table[c].to_pylist() for c in cols), strict=True))
    pairs = zip(got, plain["probs"], strict=True)
    max_diff = max(abs(a - b) for row, ref in pairs for a, b in zip(row, ref, strict=True))
    same_label = sum(max(range(len(r)), key=r.__getitem__) == max(range(len(s)), key=s.__getitem__)
                     for r, s in zip(got, plain["probs"], strict=True))
    return {"max_abs_prob_diff": max_diff, "label_agreement": same_label / len(got)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="label-bench-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from classifier.testing import make_tiny_model_dir

            print("no --model: benchmarking the random tiny test model (checks the script, not a figure)")
            model = make_tiny_model_dir(work / "tiny")
        corpus = work / f"corpus-{args.docs}.txt"
        docs = write_docs(args.corpus, args.docs, corpus)
        from classifier.host import host_info, host_line

        mach = host_info()
        print(f"host: {host_line(mach)}")
        print(f"model: {model}; {len(docs):,} documents; batch {args.batch_size}, forward batch "
              f"{args.model_batch_size}, quantize {args.quantize}, backend {args.backend}")
        plain = None
        if not args.skip_plain:
            plain = plain_loop(model, docs, args)
            print(f"(a) plain Predictor loop, {plain['threads']} threads: {plain['rows_per_s']:.1f} rows/s "
                  f"({plain['wall_s']:.1f} s, model load {plain['load_s']:.1f} s not counted)")
        out = args.output_dir or work / "labels"
        lab = label_run(model, corpus, out, args)
        print(f"(b) finsent label, {lab['actors']} actor(s) × {lab['threads_per_actor']} thread(s): "
              f"{lab['rows_per_s_wall']:.1f} rows/s wall ({lab['wall_s']:.1f} s), "
              f"{lab['rows_per_s_pipeline']:.1f} rows/s pipeline ({lab['pipeline_s']:.1f} s, of which "
              f"{lab['startup_s']:.1f} s until the first rows came back from the actors)")
        result: dict[str, Any] = {"machine": mach, "docs": len(docs), "label": lab, "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
        if plain is not None:
            check = compare(out, plain)
            print(f"ratio (b)/(a): {lab['rows_per_s_wall'] / plain['rows_per_s']:.2f}× wall, "
                  f"{lab['rows_per_s_pipeline'] / plain['rows_per_s']:.2f}× pipeline; outputs agree: "
                  f"max |Δp| {check['max_abs_prob_diff']:.2e}, labels {check['label_agreement']:.2%}")
            result["plain"] = {k: v for k, v in plain.items() if k != "probs"}
            result["check"] = check
        if args.json:
            args.json.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
