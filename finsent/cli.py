"""``finsent <command> ...`` — dispatches to the command functions of classifier/, training/, serving/, stream/.

Each package also runs on its own as ``python -m <package>``; this script only maps names to those functions,
importing a package when its command is used (so ``finsent predict`` never imports Ray or Kafka).
"""

from __future__ import annotations

import importlib
import logging
import sys

from classifier.errors import FinsentError

#: command → (module with ``main(argv)``, argv prefix, one-line help)
COMMANDS: dict[str, tuple[str, list[str], str]] = {
    "evaluate": ("classifier.cli", ["evaluate"], "score a model directory on labelled files (report, JSON, PNG)"),
    "predict": ("classifier.cli", ["predict"], "classify texts given as arguments or on stdin (JSON lines)"),
    "finetune": ("training.cli", ["finetune"], "fine-tune a classifier on Ray Train"),
    "pretrain": ("training.cli", ["pretrain"], "domain-adaptive MLM pretraining on Ray Train"),
    "serve": ("serving.cli", ["serve"], "deploy the classifier on Ray Serve (HTTP API + handle)"),
    "classify": ("serving.cli", ["classify"], "classify texts through a running Serve app"),
    "broker": ("stream.cli", ["broker"], "run the embedded Kafka-protocol broker on loopback"),
    "produce": ("stream.cli", ["produce"], "replay a news file into the input topic"),
    "stream": ("stream.cli", ["stream"], "run the Kafka consumer group that labels news"),
    "tail": ("stream.cli", ["tail"], "print labelled records from the sentiment topic"),
    "replay-dlq": ("stream.cli", ["replay-dlq"], "re-feed dead-letter records to the input topic"),
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
    try:
        return int(entry(prefix + rest) or 0)
    except FinsentError as e:
        logging.getLogger("finsent").debug("command failed", exc_info=True)
        print(f"finsent {name}: error: {e}", file=sys.stderr)
        return 2
