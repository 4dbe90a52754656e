"""``python -m training <command>`` (and ``finsent finetune|pretrain|distill``).

Every recipe follows the grammar of every finsent command (:func:`classifier.config.parse_command`):
``--config YAML`` (default: the recipe's packaged YAML under training/configs/, when it has one),
``key=value`` overrides, ``--help-config``, ``--print-config``. The run itself is the shared lifecycle
(:mod:`training.lifecycle`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import FinetuneConfig, TrainSettings
    from training.finetune import FinetuneResult

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "finetune.yaml"
DISTILL_CONFIG = CONFIG_DIR / "distill-6.yaml"


#: old spellings kept for one release (each use logs a deprecation note)
FINETUNE_ALIASES = {"--resume": "resume=true"}


def run_quietly(cfg: TrainSettings, run: Callable[[], Any]) -> Any:
    """Run a training command with Ray's and the libraries' output in ``cfg.log_path`` and only finsent's
    progress and results on the terminal (:func:`classifier.console.quiet_terminal`); a failure still says
    its cause, and where the whole log is."""
    from classifier.console import quiet_terminal

    path = cfg.log_path.expanduser().absolute()
    print(f"full log (Ray, Ray Train, libraries): {path}", file=sys.stderr)
    try:
        with quiet_terminal(path):
            return run()
    except Exception:
        print(f"see {path} for the whole log", file=sys.stderr)
        raise


def finetune_config(argv: list[str], prog: str = "finsent finetune") -> FinetuneConfig:
    """The FinetuneConfig of a ``finetune`` command line (the packaged finetune.yaml, then key=value)."""
    from classifier.config import parse_command
    from training.config import FinetuneConfig

    return parse_command(
        FinetuneConfig, argv, prog=prog, default_config=DEFAULT_CONFIG, aliases=FINETUNE_ALIASES,
        description="Fine-tune a finsent classifier on Ray Train and export the best checkpoint as a model "
                    "directory. Settings come from --config (default: the packaged finetune.yaml), then "
                    "key=value overrides (e.g. epochs=3 lr=1e-4 adversarial=fgm extra_train_files=[a.txt,b.txt]).",
    )


def _print_result(result: FinetuneResult) -> None:
    best = result.report["dev_metrics"]
    print(f"best epoch {result.report['best_epoch'] + 1}: dev accuracy {best['accuracy']:.4f} macro-F1 "
          f"{best['macro_f1']:.4f}; wall time {result.report['wall_time_s']:.0f} s")
    print(f"model directory: {result.model_dir}")


def finetune(argv: list[str]) -> int:
    cfg = finetune_config(argv)
    from training.finetune import run_finetune

    _print_result(run_quietly(cfg, lambda: run_finetune(cfg)))
    return 0


def distill(argv: list[str]) -> int:
    from classifier.config import parse_command
    from training.distill import DistillConfig

    cfg = parse_command(
        DistillConfig, argv, prog="finsent distill", default_config=DISTILL_CONFIG,
        description="Distil a finsent teacher into a student with fewer layers on Ray Train: the teacher labels "
                    "a sample of the finance corpus (finsent label), the student learns from those soft labels "
                    "and the gold training files, the best checkpoint is exported as a model directory. "
                    "Settings come from --config (default: the packaged distill-6.yaml; distill-4.yaml for 4 "
                    "layers), then key=value overrides (e.g. teacher_model=runs/finetune max_corpus_docs=5000).",
    )
    from training.distill import run_distill

    _print_result(run_quietly(cfg, lambda: run_distill(cfg)))
    return 0


def pretrain(argv: list[str]) -> int:
    from training.pretrain import main

    return int(main(argv) or 0)


COMMANDS = {"finetune": finetune, "pretrain": pretrain, "distill": distill}
#: the config class of each command ("module:Class", imported on use): --help-config, tests, docs
CONFIGS = {"finetune": "training.config:FinetuneConfig", "pretrain": "training.pretrain:PretrainConfig",
           "distill": "training.distill:DistillConfig"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m training {finetune,pretrain,distill} [options] [key=value ...]\n\n"
              "  finetune   fine-tune a classifier on Ray Train (python -m training finetune --help)\n"
              "  pretrain   domain-adaptive MLM pretraining on Ray Train\n"
              "  distill    distil a finsent teacher into a smaller, faster student on Ray Train")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from classifier.config import run_command

    return run_command(f"finsent {cmd}", COMMANDS[cmd], rest)
