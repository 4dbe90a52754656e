"""``finsent label`` (also ``python -m labeling``): label news archives with a model on Ray Data.

    finsent label inputs=news/ model_dir=models/finsent output_dir=labels/
    finsent label --config label.yaml concurrency=4 text_fields=[title,content]
    finsent label --help-config          # every setting, its default and meaning
    finsent label --print-config ...     # the effective settings as YAML

The command-line grammar is the one every finsent command shares (:func:`classifier.config.parse_command`).
"""

from __future__ import annotations

import logging
import sys

#: the command's config (``finsent.cli.config_class``)
CONFIG = "labeling.config:LabelConfig"
PROG = "finsent label"


def label(argv: list[str]) -> int:
    from classifier.config import parse_command
    from labeling.config import LabelConfig

    cfg = parse_command(
        LabelConfig, argv, prog=PROG,
        description="Label news archives (JSONL/CSV/Parquet/txt, local paths or fsspec URLs) with a finsent "
        "model on Ray Data: a pool of Predictor actors writes Parquet/JSONL shards that a killed run, "
        "started again, does not relabel. Bad rows are listed with their reason in "
        "<output_dir>/_errors.jsonl.",
    )
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from labeling.batch import run_label

    summary = run_label(cfg)
    print(summary.format())
    return 0


def main(argv: list[str] | None = None) -> int:
    from classifier.config import run_command

    return run_command(PROG, label, sys.argv[1:] if argv is None else argv)
