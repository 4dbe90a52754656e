"""The forgetting table of the feedback loop (`finsent learn`), simulated with a source the live model never saw.

The live model is a FinFE-only model (forum posts: runs/split/finfe/train.txt, selected on finfe/dev.txt), trained
here or given with --live-model. The "corrections" are CFSC news sentences (runs/split/cfsc/train.txt), one per
line as {"id": "cfsc-<line>", "label": <gold label>}. Each method continues the live model on them exactly as
`finsent learn` does (training.learn.learn_from_corrections: the same held-back share by id hash, the same
fine-tuning config, the same gate), with

    none               no rehearsal, no weight-space control          (rehearsal_fraction=0, forgetting=none)
    rehearsal          the live model's own training data replayed    (rehearsal_files=[finfe/train.txt])
    rehearsal + L2-SP  the same plus L2-SP towards the live weights   (forgetting=l2sp, l2sp)

and the table gives macro-F1 before/after on the FinFE test split (forgetting), on the held-back CFSC corrections
and on the CFSC test split (learning), the gate's decision at its default rules, wall time and the machine.

    python bench/feedback_loop.py --quick      # live model on 2,000 FinFE examples x 1 epoch, 600 corrections
    python bench/feedback_loop.py              # full: finetune.yaml on FinFE, every CFSC train sentence
    python bench/feedback_loop.py --smoke      # tiny random model, 60 corrections: checks the plumbing only
    python bench/feedback_loop.py --live-model runs/quality/nofgm --set finetune.epochs=3 l2sp=1

Ray needs a private network namespace on the shared machines (see docs/development.md): run it through
`bash scripts/dev.sh` (docs/development.md). Everything lands in --out (default runs/bench/feedback-loop): the live
model, one learn run directory per method, results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from classifier.host import host_info, host_line  # noqa: E402

log = logging.getLogger("bench.feedback_loop")

#: method → (label, LearnConfig settings)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {"rehearsal_fraction": 0.0, "forgetting": "none"}),
    "rehearsal": ("rehearsal", {"forgetting": "none"}),
    "rehearsal+l2sp": ("rehearsal + L2-SP", {"forgetting": "l2sp"}),
}
#: CPU flags that decide CPU inference and training speed
def split_file(split: Path, rel: str) -> Path:
    from classifier.splits import ensure_default_split

    path = split / rel
    ensure_default_split([path])
    if not path.is_file():
        raise SystemExit(f"{path} not found: write the split with `finsent split out_dir={split}`")
    return path


def corrections_from(path: Path, limit: int | None, seed: int) -> list[Any]:
    """CFSC lines as corrections (id = cfsc-<line>), a seeded sample of ``limit`` of them."""
    import random

    from classifier.data import read_examples
    from stream.corrections import LabelledCorrection

    examples = read_examples(path, on_error="raise").examples
    if limit is not None and limit < len(examples):
        examples = random.Random(seed).sample(examples, limit)
    return [LabelledCorrection(id=f"cfsc-{e.line}", label=e.label, text=e.text, predicted_label=None,
                               model_version=None, where=f"{path.name}:{e.line}") for e in examples]


def train_live(args: argparse.Namespace, out: Path, split: Path) -> tuple[Path, float]:
    """The FinFE-only live model (or the tiny random model with --smoke)."""
    if args.smoke:
        from classifier.testing import make_tiny_model_dir

        return make_tiny_model_dir(out / "live" / "model", seed=args.seed), 0.0
    from classifier.config import load_config
    from training.config import FinetuneConfig
    from training.finetune import run_finetune

    yaml = REPO / "training" / "configs" / ("finetune-quick.yaml" if args.quick else "finetune.yaml")
    cfg = load_config(FinetuneConfig, yaml, [
        f"train_files=[{split_file(split, 'finfe/train.txt')}]", "extra_train_files=[]",
        f"dev_file=[{split_file(split, 'finfe/dev.txt')}]", "select_metric=macro_f1", f"seed={args.seed}",
        f"output_dir={out / 'live'}", f"storage_path={out / 'ray'}", "overwrite=true", *args.live_set])
    t0 = time.perf_counter()
    result = run_finetune(cfg)
    return Path(result.model_dir), time.perf_counter() - t0


def learn_config(args: argparse.Namespace, out: Path, split: Path, method: str) -> Any:
    from classifier.config import load_config
    from training.learn import LearnConfig

    finetune = ["finetune.num_workers=1", "finetune.epochs=1", "finetune.batch_size=8"] if args.smoke else []
    settings = [
        f"test_files=[{split_file(split, 'finfe/test.txt')},{split_file(split, 'cfsc/test.txt')}]",
        f"dev_files=[{split_file(split, 'finfe/dev.txt')}]", f"rehearsal_files=[{split_file(split, 'finfe/train.txt')}]",
        f"work_dir={out / 'learn'}", f"run_name={method}", "min_corrections=10", *finetune,
        *(f"{k}={v}" for k, v in METHODS[method][1].items()), *args.set,
    ]
    return load_config(LearnConfig, None, settings)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from training.config import expand_path
    from training.learn import LiveModel, learn_from_corrections

    out = Path(args.out).absolute()
    split = Path(expand_path(args.split_dir))
    limit = 60 if args.smoke else 600 if args.quick else None
    if args.corrections is not None:
        limit = args.corrections
    corrections = corrections_from(split_file(split, "cfsc/train.txt"), limit, args.seed)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    results: dict[str, Any] = {"mode": mode, "machine": host_info(), "corrections": len(corrections),
                               "set": args.set, "methods": {}}
    if args.live_model:
        live_dir, live_wall = Path(args.live_model).absolute(), None
    else:
        log.info("training the FinFE-only live model (%s)", mode)
        live_dir, live_wall = train_live(args, out, split)
    results["live"] = {"model_dir": str(live_dir), "wall_s": live_wall, "trained_here": not args.live_model}
    live = LiveModel.from_dir(live_dir)
    for method in args.methods:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}: choose from {list(METHODS)}")
        cfg = learn_config(args, out, split, method)
        run_dir = out / "learn" / method
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        log.info("method %s: learning from %d corrections", method, len(corrections))
        t0 = time.perf_counter()
        result = learn_from_corrections(cfg, live, corrections, run_dir)
        wall = time.perf_counter() - t0
        g = result.gate
        results["methods"][method] = {
            "label": METHODS[method][0], "settings": METHODS[method][1], "wall_s": wall,
            "train_examples": (result.training_report or {}).get("data", {}).get("train_examples"),
            "held_back": g["held_back_corrections"], "live": g["live"], "new": g["new"], "gate": g["passed"],
            "reasons": g["reasons"], "l2sp": cfg.l2sp if cfg.forgetting == "l2sp" else None,
            "rehearsal_fraction": cfg.rehearsal_fraction, "finetune": cfg.finetune,
        }
        (out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    return results


def table(results: dict[str, Any]) -> str:
    def f1(ev: dict[str, Any], key: str) -> float:
        return ev["corrections"]["macro_f1"] if key == "corrections" else ev["test"][key]["macro_f1"]

    headers = ["method", "FinFE test macro-F1 (before → after)", "Δ pts", "held-back CFSC corrections macro-F1",
               "Δ pts", "CFSC test macro-F1", "Δ pts", "gate (default rules)", "wall s"]
    rows = []
    for m in results["methods"].values():
        cells = [m["label"] + (f" {m['l2sp']:g}" if m.get("l2sp") else "")]
        for key in ("finfe/test.txt", "corrections", "cfsc/test.txt"):
            b, a = f1(m["live"], key), f1(m["new"], key)
            cells += [f"{b:.4f} → {a:.4f}", f"{100 * (a - b):+.1f}"]
        cells += ["swap" if m["gate"] else "refused", f"{m['wall_s']:.0f}"]
        rows.append(cells)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    first = next(iter(results["methods"].values()), None)
    notes = [f"mode: {results['mode']}; {results['corrections']} CFSC corrections"
             + (f" ({first['held_back']} held back by id hash)" if first else "")
             + (f"; live model trained here in {results['live']['wall_s']:.0f} s" if results["live"].get("wall_s") else ""),
             f"machine: {host_line(results['machine'])}"]
    if first:
        fraction = max(m["rehearsal_fraction"] for m in results["methods"].values())
        notes.append(f"fine-tuning (finsent learn settings): {first['finetune']}; rehearsal fraction {fraction:g} "
                     "where used")
    if results["mode"] == "smoke":
        notes.append("SMOKE RUN: tiny random model, numbers say nothing about quality")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="live model on 2,000 FinFE examples x 1 epoch (finetune-quick.yaml), 600 corrections")
    mode.add_argument("--smoke", action="store_true", help="tiny random model, 60 corrections: plumbing only")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help=f"methods to run, of {list(METHODS)}")
    p.add_argument("--live-model", default=None, help="reuse this FinFE-only model directory as the live model")
    p.add_argument("--corrections", type=int, default=None, help="how many CFSC sentences become corrections")
    p.add_argument("--split-dir", default="runs/split", help="the split of `finsent split`")
    p.add_argument("--out", default="runs/bench/feedback-loop", help="work and result directory")
    p.add_argument("--seed", type=int, default=13, help="seed of the corrections sample and the live model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="`finsent learn` settings for every method (e.g. l2sp=1 finetune.epochs=3)")
    p.add_argument("--live-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="`finsent finetune` settings of the live model (e.g. max_train_examples=1000)")
    p.add_argument("--table-only", action="store_true", help="print the table of an earlier --out/results.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    if args.table_only:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    else:
        results = run(args)
    text = table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
