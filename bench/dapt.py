"""Does domain-adaptive pretraining (DAPT) help? Fine-tune from the base encoder and from the domain-pretrained
encoder with identical settings and compare dev macro-F1 on FinFE (train → dev) and on CFSC (the 80 % / 20 %
split of bench/forgetting.py, seed 42: train on the 80 % minus a 10 % dev slice, report the 20 % held-out).

    python bench/dapt.py --quick
    python bench/dapt.py                 # whole corpus, 1 epoch
    ... bench/dapt.py --encoder runs/pretrain            # reuse an encoder from `python -m training pretrain`
    ... bench/dapt.py --pretrain-set max_steps=2000 l2sp=0.01 --finetune-set epochs=2

Pretraining runs `training/configs/pretrain.yaml` with --pretrain-set overrides; fine-tuning runs
`training/configs/finetune.yaml` (without the extra CFSC file) with --finetune-set overrides, the same for
both encoders. --quick: pretraining on the first 1M corpus characters for 80 steps (20 head-only); fine-tuning on
3,000 FinFE / 1,200 CFSC examples for 1 epoch (evaluation always on the full FinFE dev and CFSC held-out sets).
Results go to --out (default runs/bench/dapt): results.json and results.md.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from forgetting import evaluate, finetune, machine, markdown_table, shared, split_cfsc  # noqa: E402

log = logging.getLogger("bench.dapt")
PRETRAIN_YAML = REPO / "training" / "configs" / "pretrain.yaml"
QUICK_PRETRAIN = ["max_corpus_chars=1000000", "max_steps=80", "head_warmup_steps=20", "eval_every=40",
                  "heldout_max_docs=200"]


def pretrain(out: Path, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    from classifier.config import load_config
    from training.pretrain import PretrainConfig, run_pretrain

    cfg = load_config(PretrainConfig, PRETRAIN_YAML, [f"output_dir={out / 'encoder'}", f"storage_path={out / 'ray'}",
                                                      "overwrite=true", *overrides])
    enc = run_pretrain(cfg)
    return enc, json.loads((enc / "pretrain_report.json").read_text(encoding="utf-8"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from classifier.paths import default_base_model

    out = Path(args.out).absolute()
    splits = split_cfsc(out / "data", seed=args.seed)
    finfe = shared() / "data" / "finfe"
    results: dict[str, Any] = {"quick": args.quick, "machine": machine(), "runs": {}}
    if args.encoder:
        encoder = Path(args.encoder).absolute()
        report = json.loads((encoder / "pretrain_report.json").read_text(encoding="utf-8"))
    else:
        t0 = time.perf_counter()
        encoder, report = pretrain(out, [*(QUICK_PRETRAIN if args.quick else []), f"seed={args.seed}",
                                         *([f"base_model={args.base_model}"] if args.base_model else []),
                                         *args.pretrain_set])
        report["bench_wall_s"] = round(time.perf_counter() - t0)
    results["pretrain"] = {"encoder": str(encoder), "steps": report["steps"], "data": report["data"],
                           "first": report["history"][0], "final": report["final"],
                           "train_time_s": report.get("train_time_s"), "config": report["config"]}
    base = Path(args.base_model).absolute() if args.base_model else default_base_model()
    common = [f"seed={args.seed}", "extra_train_files=[]", f"storage_path={out / 'ray'}", "overwrite=true",
              "log_every=50", *args.finetune_set]
    tasks = {
        "finfe": ([f"train_files=[{finfe / 'train.txt'}]", f"dev_file={finfe / 'dev.txt'}",
                   *(["epochs=1", "max_train_examples=3000"] if args.quick else [])], {"finfe_dev": finfe / "dev.txt"}),
        "cfsc": ([f"train_files=[{splits['cfsc_train']}]", f"dev_file={splits['cfsc_dev']}",
                  *(["epochs=1", "max_train_examples=1200"] if args.quick else [])],
                 {"cfsc_heldout": splits["cfsc_heldout"]}),
    }
    results["settings"] = {"common": common, "tasks": {k: v[0] for k, v in tasks.items()}}
    for enc_name, enc_dir in (("base", base), ("dapt", encoder)):
        for task, (overrides, evalset) in tasks.items():
            log.info("fine-tune %s from %s", task, enc_name)
            model_dir, wall = finetune([*common, *overrides, f"base_model={enc_dir}",
                                        f"output_dir={out / f'{task}-{enc_name}'}"])
            results["runs"][f"{task}-{enc_name}"] = {"wall_s": round(wall), "eval": evaluate(model_dir, evalset)}
            (out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=1, default=str),
                                              encoding="utf-8")
    return results


def table(results: dict[str, Any]) -> str:
    r = results["runs"]
    rows = []
    for name, key, evalset in (("FinFE dev", "finfe", "finfe_dev"), ("CFSC held-out 20 %", "cfsc", "cfsc_heldout")):
        b, d = r[f"{key}-base"]["eval"][evalset], r[f"{key}-dapt"]["eval"][evalset]
        rows.append([name, b["macro_f1"], d["macro_f1"], f"{100 * (d['macro_f1'] - b['macro_f1']):+.1f}",
                     b["accuracy"], d["accuracy"]])
    pt = results["pretrain"]
    data, first, final = pt["data"], pt["first"], pt["final"]
    mode = "QUICK (reduced)" if results["quick"] else "full"
    note = (f"{mode}. DAPT: {data['corpus_chars']:,} corpus characters ({data['corpus_docs']:,} documents), "
            f"{pt['steps']} steps of {pt['config']['batch_size']} windows × {pt['config']['max_len']} pieces "
            f"({pt['train_time_s'] or 0:.0f} s); held-out MLM loss {first['heldout_loss']:.3f} → "
            f"{final['heldout_loss']:.3f}, masked accuracy {first['heldout_accuracy']:.3f} → "
            f"{final['heldout_accuracy']:.3f}. Fine-tuning: {'3,000 FinFE / 1,200 CFSC examples, 1 epoch' if results['quick'] else 'training/configs/finetune.yaml'}"
            f" (same for both). Machine: {results['machine']}.")
    headers = ["eval set", "macro-F1 from base", "macro-F1 from DAPT", "Δ (pts)", "acc. base", "acc. DAPT"]
    return f"{markdown_table(headers, rows)}\n\n{note}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short pretraining and small fine-tuning runs")
    p.add_argument("--encoder", default=None, help="use this pretrained encoder directory instead of pretraining")
    p.add_argument("--base-model", default=None, help="the base encoder (default: the shared base model)")
    p.add_argument("--out", default="runs/bench/dapt", help="work and result directory")
    p.add_argument("--seed", type=int, default=42, help="seed of the CFSC split and of every run")
    p.add_argument("--pretrain-set", nargs="*", default=[], metavar="KEY=VALUE", help="PretrainConfig overrides")
    p.add_argument("--finetune-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="FinetuneConfig overrides for all four fine-tuning runs")
    p.add_argument("--table-only", action="store_true", help="print the table of an earlier --out/results.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    results = json.loads((out / "results.json").read_text(encoding="utf-8")) if args.table_only else run(args)
    text = table(results)
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
