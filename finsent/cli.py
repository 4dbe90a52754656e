"""``finsent <command> ...`` — dispatches to the command functions of classifier/, training/, serving/, stream/.

Each package also runs on its own as ``python -m <package>``; this script only maps names to those functions,
importing a package when its command is used (so ``finsent predict`` never imports Ray or Kafka). Every command
reads a typed config with one grammar (:func:`classifier.config.parse_command`): ``--config FILE.yaml``,
``key=value``, ``--help-config``, ``--print-config``; :func:`config_class` names each command's config.
"""

from __future__ import annotations

import importlib
import sys

#: command → (module with ``main(argv)``, argv prefix, one-line help)
COMMANDS: dict[str, tuple[str, list[str], str]] = {
    "split": ("classifier.splits", [], "write the seeded train/dev/test split of the labelled data (test protocol)"),
    "evaluate": ("classifier.cli", ["evaluate"], "score a model directory on labelled files (report, JSON, PNG)"),
    "predict": ("classifier.cli", ["predict"], "classify texts given as arguments or on stdin (JSON lines)"),
    "finetune": ("training.cli", ["finetune"], "fine-tune a classifier on Ray Train"),
    "pretrain": ("training.cli", ["pretrain"], "domain-adaptive MLM pretraining on Ray Train"),
    "distill": ("training.cli", ["distill"], "distil a model into a smaller, faster student on Ray Train"),
    "serve": ("serving.cli", ["serve"], "deploy the classifier on Ray Serve (HTTP API + handle)"),
    "classify": ("serving.cli", ["classify"], "classify texts through a running Serve app"),
    "broker": ("stream.cli", ["broker"], "run the embedded Kafka-protocol broker on loopback"),
    "produce": ("stream.cli", ["produce"], "replay a news file into the input topic"),
    "stream": ("stream.cli", ["stream"], "run the Kafka consumer group that labels news"),
    "tail": ("stream.cli", ["tail"], "print labelled records from the sentiment topic"),
    "replay-dlq": ("stream.cli", ["replay-dlq"], "re-feed dead-letter records to the input topic"),
    "learn": ("training.learn", [], "continue the live model on corrections, gate it, hot-swap it into Serve"),
    "label": ("labeling.cli", [], "label news archives on Ray Data into resumable Parquet/JSONL shards"),
    "demo": ("finsent.demo", [], "the whole pipeline on one machine: broker, Ray, train/serve, stream, summary"),
}


def usage() -> str:
    lines = ["usage: finsent <command> [options]   (finsent <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"finsent: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, prefix, _ = COMMANDS[name]
    entry = importlib.import_module(module).main
    from classifier.config import run_command

    return run_command(f"finsent {name}", lambda rest_: entry(prefix + rest_), rest)


def config_class(name: str) -> type:
    """The config class of command ``name``: its module's ``CONFIGS[<command>]`` (a class or "module:Class"),
    or ``CONFIG`` for a module with one command. Every command has one (the grammar test walks them all)."""
    module_name, prefix, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    configs = getattr(module, "CONFIGS", None)
    ref = configs.get(prefix[0] if prefix else name) if isinstance(configs, dict) else None
    ref = ref if ref is not None else getattr(module, "CONFIG", None)
    if ref is None:
        raise LookupError(f"{module_name} declares no config for {name!r}: add CONFIGS = {{{name!r}: "
                          "'module:ConfigClass'} (or CONFIG = ConfigClass) beside its main()")
    if isinstance(ref, str):
        mod, _, attr = ref.partition(":")
        ref = getattr(importlib.import_module(mod), attr)
    return ref
