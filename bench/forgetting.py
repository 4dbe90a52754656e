"""Catastrophic forgetting in sequential fine-tuning, with and without forgetting control.

Task 1 = FinFE forum posts (train → dev), task 2 = CFSC news sentences (80 % / 20 % split, seed 42; a 10 % slice
of the 80 % is task 2's model-selection dev set, the 20 % is only evaluated). The task-1 model is fine-tuned
further on task 2 with each method; the table gives task-1 dev macro-F1 before/after and task-2 held-out
macro-F1:

    none        plain continued fine-tuning
    l2sp:C      L2-SP towards the task-1 weights, coefficient C            (FinetuneConfig.l2sp)
    ewc:L       EWC with the task-1 diagonal Fisher, coefficient L         (ewc, ewc_fisher)
                L = auto: chosen so that the mean per-weight stiffness L/2·mean(F) equals the first l2sp C
                (so EWC pulls as hard as that L-2SP on average, but concentrated on the weights task 1 needs)
    rehearsal:F F of the task-2 training examples are replayed FinFE ones  (rehearsal_files, rehearsal_fraction)
    freeze:K    embeddings + K lowest layers frozen                        (freeze_layers)

Run (Ray needs a private network namespace here, see ../shared/notes/ray.md):

    python bench/forgetting.py --quick
    python bench/forgetting.py          # full data, 3 epochs
    ... bench/forgetting.py --methods none l2sp:1 ewc:auto rehearsal:0.2 --set lr=5e-5

--quick: 3,000 FinFE training examples for 1 epoch, then 1,200 CFSC ones for 2 epochs (evaluation always on the full FinFE dev
and CFSC held-out sets). Everything lands in --out (default runs/bench/forgetting): the split files, one model
directory per run, results.json and results.md.

Task 2 continues the task-1 model directory itself (`init_model`: its encoder, compound tokens and linear head),
so EWC's Fisher and L2-SP's anchor cover everything task 1 trained. `--task1-model DIR` reuses a finished FinFE
model (e.g. one trained with finetune.yaml on FinFE train only) instead of training task 1 again; its Fisher is
then estimated here on FinFE train.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from classifier.host import host_line  # noqa: E402

log = logging.getLogger("bench.forgetting")
FINETUNE_YAML = REPO / "training" / "configs" / "finetune.yaml"


# ------------------------------------------------------------------------------------------------ helpers
def shared() -> Path:
    from classifier.paths import shared_dir

    return Path(os.environ.get("FINSENT_SHARED") or shared_dir())


def split_cfsc(out: Path, seed: int = 42, heldout: float = 0.2, dev: float = 0.1) -> dict[str, Path]:
    """CFSC train.txt → held-out 20 % (evaluation only), and of the rest a 10 % dev slice (model selection) and
    the training part. Lines are shuffled with ``seed``; files are ``label|||text`` like the source."""
    src = shared() / "data" / "cfsc" / "train.txt"
    lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
    random.Random(seed).shuffle(lines)
    n_held = round(len(lines) * heldout)
    held, rest = lines[:n_held], lines[n_held:]
    n_dev = round(len(rest) * dev)
    parts = {"cfsc_heldout": held, "cfsc_dev": rest[:n_dev], "cfsc_train": rest[n_dev:]}
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in parts.items():
        paths[name] = out / f"{name}.txt"
        paths[name].write_text("\n".join(rows) + "\n", encoding="utf-8")
    log.info("CFSC split (seed %d): %s", seed, {k: len(v) for k, v in parts.items()})
    return paths


def evaluate(model_dir: Path, files: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Macro-F1 and accuracy of a model directory on labelled files (as `finsent evaluate` computes them)."""
    from classifier.data import read_examples
    from classifier.metrics import compute_metrics
    from classifier.predict import Predictor

    p = Predictor.from_dir(model_dir, device="cpu", batch_size=64)
    out = {}
    for name, path in files.items():
        data = read_examples(path, p.labels)
        pred = p.predict_labels(data.texts)
        m = compute_metrics(data.labels, pred, p.labels)
        out[name] = {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"], "n": m["n"]}
    return out


def finetune(overrides: list[str]) -> tuple[Path, float]:
    """`python -m training finetune --config training/configs/finetune.yaml <overrides>` in-process."""
    from classifier.config import load_config
    from training.config import FinetuneConfig
    from training.finetune import run_finetune

    cfg = load_config(FinetuneConfig, FINETUNE_YAML, overrides)
    t0 = time.perf_counter()
    result = run_finetune(cfg)
    model_dir = Path(getattr(result, "model_dir", result))
    return model_dir, time.perf_counter() - t0


def lst(paths: list[Path] | list[str]) -> str:
    return "[" + ",".join(str(p) for p in paths) + "]"


def task1_fisher(model_dir: Path, overrides: list[str], dst: Path) -> Path:
    """The diagonal Fisher of a finished task-1 model on its train data, as `save_fisher=true` writes it."""
    from classifier.config import load_config
    from training.config import FinetuneConfig, resolve_paths
    from training.finetune import write_fisher

    cfg = resolve_paths(load_config(FinetuneConfig, FINETUNE_YAML, overrides))
    return write_fisher(cfg, model_dir, dst)


def mean_fisher(path: Path) -> float:
    """Mean Fisher value over every weight (EWC's ``auto`` coefficient is set from it)."""
    from training.forgetting import load_fisher

    fisher = load_fisher(path)
    return sum(float(v.sum()) for v in fisher.values()) / max(1, sum(v.numel() for v in fisher.values()))


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)





# ------------------------------------------------------------------------------------------------ experiment
def method_overrides(method: str, fisher_file: Path, fisher_mean: float, l2sp_ref: float,
                     finfe_train: Path) -> tuple[list[str], str]:
    kind, _, arg = method.partition(":")
    if kind == "none":
        return [], "none"
    if kind == "l2sp":
        return [f"l2sp={float(arg)}"], f"L2-SP {float(arg):g}"
    if kind == "ewc":
        lam = 2 * l2sp_ref / fisher_mean if arg in ("", "auto") else float(arg)
        return [f"ewc={lam}", f"ewc_fisher={fisher_file}"], f"EWC {lam:.3g}"
    if kind == "rehearsal":
        return [f"rehearsal_files=[{finfe_train}]", f"rehearsal_fraction={float(arg)}"], \
            f"rehearsal {float(arg):.0%}"
    if kind == "freeze":
        return [f"freeze_layers={int(arg)}"], f"freeze {int(arg)} layers"
    raise SystemExit(f"unknown method {method!r}: use none, l2sp:C, ewc:L|auto, rehearsal:F, freeze:K")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out).absolute()
    data_dir = out / "data"
    splits = split_cfsc(data_dir, seed=args.seed)
    finfe = shared() / "data" / "finfe"
    evalsets = {"finfe_dev": finfe / "dev.txt", "cfsc_heldout": splits["cfsc_heldout"]}
    common = [f"seed={args.seed}", "extra_train_files=[]", f"storage_path={out / 'ray'}",
              "overwrite=true", "log_every=50", *(["base_model=" + args.base_model] if args.base_model else []),
              *args.set]
    t1 = ["epochs=1", "max_train_examples=3000", "fisher_max_batches=50"] if args.quick else []
    t2 = ["epochs=2", "max_train_examples=1200"] if args.quick else []
    results: dict[str, Any] = {"quick": args.quick, "methods": {}, "machine": host_line(),
                               "settings": {"common": common, "task1": t1, "task2": t2}}
    previous = out / "results.json"
    if args.resume and previous.is_file():  # keep task 1 and the methods already run
        results = json.loads(previous.read_text(encoding="utf-8"))
        saved = results["settings"]  # task 1 is reused as it was run; task 2 runs must match
        if (saved["common"], saved["task2"]) != (common, t2):
            raise SystemExit(f"--resume: {previous} was made with other settings; use another --out")
        log.info("resuming: task 1 and %s already done", list(results["methods"]))
    if "task1" not in results:
        log.info("task 1: FinFE")
        t1_files = [f"train_files=[{finfe / 'train.txt'}]", f"dev_file={finfe / 'dev.txt'}"]
        if args.task1_model:  # a finished FinFE model: only its Fisher is computed here
            task1, wall1 = Path(args.task1_model).absolute(), float(
                json.loads((Path(args.task1_model) / "training_report.json").read_text(encoding="utf-8"))["wall_time_s"])
            task1_fisher(task1, [*common, *t1, *t1_files], out / "fisher_task1.safetensors")
        else:
            task1, wall1 = finetune([*common, *t1, *t1_files, "save_fisher=true", f"output_dir={out / 'task1'}"])
            (task1 / "fisher.safetensors").replace(out / "fisher_task1.safetensors")
        before = evaluate(task1, evalsets)
        results["task1"] = {"model_dir": str(task1), "wall_s": round(wall1), "eval": before,
                            "reused": bool(args.task1_model)}
        log.info("task 1 done in %.0f s: %s", wall1, before)
        previous.write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    task1 = Path(results["task1"]["model_dir"])
    fisher_file = out / "fisher_task1.safetensors"
    fisher_mean = mean_fisher(fisher_file)
    l2sp_ref = next((float(m.split(":")[1]) for m in args.methods if m.startswith("l2sp:")), 1.0)
    results["fisher_mean"] = fisher_mean

    for method in args.methods:
        if method in results["methods"]:
            continue
        extra, label = method_overrides(method, fisher_file, fisher_mean, l2sp_ref, finfe / "train.txt")
        log.info("task 2 (%s)", label)
        model_dir, wall = finetune([*common, *t2, f"init_model={task1}", f"train_files=[{splits['cfsc_train']}]",
                                    f"dev_file={splits['cfsc_dev']}", f"output_dir={out / ('task2-' + method.replace(':', '-'))}",
                                    *extra])
        after = evaluate(model_dir, evalsets)
        results["methods"][method] = {"label": label, "overrides": extra, "wall_s": round(wall), "eval": after}
        log.info("%s done in %.0f s: %s", label, wall, after)
        (out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")
    return results


def table(results: dict[str, Any]) -> str:
    before = results["task1"]["eval"]
    none = results["methods"].get("none", {}).get("eval")
    rows = [["after task 1 (reference)", before["finfe_dev"]["macro_f1"], "", before["cfsc_heldout"]["macro_f1"], "",
             results["task1"]["wall_s"]]]
    for m in results["methods"].values():
        ev = m["eval"]
        t1, t2 = ev["finfe_dev"]["macro_f1"], ev["cfsc_heldout"]["macro_f1"]
        rows.append([f"task 2, {m['label']}", t1, f"{100 * (t1 - before['finfe_dev']['macro_f1']):+.1f}", t2,
                     f"{100 * (t2 - none['cfsc_heldout']['macro_f1']):+.1f}" if none else "", m["wall_s"]])
    headers = ["model", "task 1 FinFE dev macro-F1", "Δ task 1 (pts)", "task 2 CFSC held-out macro-F1",
               "Δ task 2 vs none (pts)", "wall s"]
    mode = ("QUICK (reduced: task 1 = 3,000 FinFE examples × 1 epoch, task 2 = 1,200 CFSC examples × 2 epochs)"
            if results["quick"] else "full data (training/configs/finetune.yaml epochs)")
    return f"{markdown_table(headers, rows)}\n\n{mode}; machine: {results['machine']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="training subsets and 1-2 epochs per task (about 30 min on 2 CPUs)")
    p.add_argument("--methods", nargs="+", default=["none", "l2sp:1", "l2sp:0.1", "ewc:auto", "rehearsal:0.2"],
                   help="methods to compare (none, l2sp:C, ewc:L|auto, rehearsal:F, freeze:K)")
    p.add_argument("--out", default="runs/bench/forgetting", help="work and result directory")
    p.add_argument("--base-model", default=None, help="encoder to start task 1 from (default: the shared base)")
    p.add_argument("--task1-model", default=None,
                   help="reuse this finished FinFE model directory as task 1 (its Fisher is estimated here)")
    p.add_argument("--seed", type=int, default=42, help="seed of the CFSC split and of every run")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="FinetuneConfig overrides for every run (e.g. lr=5e-5 num_workers=1)")
    p.add_argument("--resume", action="store_true",
                   help="reuse task 1 and the finished methods of an interrupted run in --out (same settings)")
    p.add_argument("--table-only", action="store_true", help="print the table of an earlier --out/results.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    if args.table_only:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    else:
        results = run(args)
    text = table(results)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
