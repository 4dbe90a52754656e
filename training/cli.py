"""``python -m training <command>`` (and ``finsent finetune|pretrain``).

``finetune``: ``--config YAML`` (default: the packaged training/configs/finetune.yaml) then ``key=value``
overrides; ``--help-config`` lists every setting. ``pretrain`` is dispatched to :mod:`training.pretrain`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from classifier.errors import FinsentError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "finetune.yaml"


def finetune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training finetune",
        description="Fine-tune a finsent classifier on Ray Train and export the best checkpoint as a model "
                    "directory. Settings come from --config, then key=value overrides (e.g. epochs=3 lr=1e-4 "
                    "adversarial=fgm extra_train_files=[a.txt,b.txt]).",
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="YAML file of FinetuneConfig settings (default: %(default)s); 'none' = built-in defaults")
    p.add_argument("--resume", action="store_true",
                   help="continue the run recorded in output_dir/run.json from its latest checkpoint "
                        "(same as resume=true)")
    p.add_argument("--help-config", action="store_true", help="list every setting with its default and help")
    p.add_argument("--print-config", action="store_true", help="print the merged config as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="setting overrides")
    return p


def finetune(argv: list[str]) -> int:
    from classifier.config import describe, load_config, to_dict
    from training.config import FinetuneConfig

    parser = finetune_parser()
    args, unknown = parser.parse_known_args(argv)
    bad = [u for u in unknown if "=" not in u]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (settings are key=value, see --help-config)")
    if args.help_config:
        print(f"FinetuneConfig settings (key=value):\n{describe(FinetuneConfig)}")
        return 0
    overrides = list(args.overrides) + unknown + (["resume=true"] if args.resume else [])
    path = None if args.config.lower() == "none" else args.config
    cfg = load_config(FinetuneConfig, path, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.finetune import run_finetune

    result = run_finetune(cfg)
    best = result.report["dev_metrics"]
    print(f"best epoch {result.report['best_epoch'] + 1}: dev accuracy {best['accuracy']:.4f} macro-F1 "
          f"{best['macro_f1']:.4f}; wall time {result.report['wall_time_s']:.0f} s")
    print(f"model directory: {result.model_dir}")
    return 0


def pretrain(argv: list[str]) -> int:
    if importlib.util.find_spec("training.pretrain") is None:
        print("pretrain: training/pretrain.py is not available in this checkout", file=sys.stderr)
        return 2
    return int(importlib.import_module("training.pretrain").main(argv) or 0)


COMMANDS = {"finetune": finetune, "pretrain": pretrain}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m training {finetune,pretrain} [options] [key=value ...]\n\n"
              "  finetune   fine-tune a classifier on Ray Train (python -m training finetune --help)\n"
              "  pretrain   domain-adaptive MLM pretraining on Ray Train")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except FinsentError as e:
        log.debug("command failed", exc_info=True)
        print(f"{cmd}: error: {e}", file=sys.stderr)
        return 2
