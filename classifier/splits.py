"""The test protocol: one seeded, stratified train / dev / test split of the labelled data, and a long-news set.

``finsent split`` reads each source's labelled files and writes, under ``out_dir``::

    <source>/train.txt  <source>/dev.txt  <source>/test.txt      label|||text, one example a line
    <source>/dev_long.txt  <source>/test_long.txt                 (sources with long_docs: multi-paragraph news)
    split.json                                                    seed, fractions, sha256 of every input and output

Dev selects models, test only reports: nothing may tune on test. A source with its own dev file (FinFE) keeps it
as dev and gives ``test_fraction`` of its train file to test; a source without one (CFSC) gives ``dev_fraction``
to dev and ``test_fraction`` to test. The split is stratified by label and reproducible byte for byte from the
seed (``split.json`` records the sha256 of every file; ``training/configs/split.sha256.json`` holds those of the
default split on the shared data, checked by the tests).

Leaks are refused: the same (normalised) text in two files of a source, or in two splits, stops the command
naming both places; repeated lines inside one file stay together in one split. A malformed line stops it
naming the file and line.

Long news. The shared labelled data has no text over 512 pieces, yet real news articles are long. For sources
with ``long_docs`` the command builds multi-paragraph documents from that split's own sentences only (dev
documents from dev sentences, test from test): a bullish or bearish document holds 1–3 sentences of its label
among neutral (其他) sentences, a neutral document only neutral ones, each ``long_min_chars``–``long_max_chars``
characters (each sentence ends with a full stop, one is added where it had none). It is a constructed benchmark,
labelled as such wherever it is reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from classifier.config import Config
from classifier.data import SEPARATOR, read_examples
from classifier.errors import DataError
from classifier.labels import DEFAULT_LABELS
from classifier.text import normalize

log = logging.getLogger(__name__)

MANIFEST = "split.json"
SPLITS: tuple[str, ...] = ("train", "dev", "test")
#: a constructed long document's sentences each end with one of these (a full stop is added where none is)
_ENDS = frozenset("。！？!?；;…")
LONG_SPLITS: tuple[str, ...] = ("dev_long", "test_long")


class SplitSource(Config):
    """One labelled source (e.g. FinFE forum posts, CFSC news sentences)."""

    train: str = Field(description="labelled file (label|||text, .jsonl or .csv) that train/test (and dev) come from")
    dev: str | None = Field(None, description="the source's own dev file, kept whole as dev; null = cut dev "
                                              "from train (dev_fraction)")
    long_docs: bool = Field(False, description="also build constructed multi-paragraph long documents "
                                               "(dev_long / test_long) from this source's dev and test sentences")


class SplitConfig(Config):
    """Settings of ``finsent split``: which files, which fractions, which seed, where to write."""

    example_overrides = ("out_dir=runs/split",)

    sources: dict[str, SplitSource] = Field(
        default_factory=lambda: {
            "finfe": SplitSource(train="$FINSENT_SHARED/data/finfe/train.txt",
                                 dev="$FINSENT_SHARED/data/finfe/dev.txt"),
            "cfsc": SplitSource(train="$FINSENT_SHARED/data/cfsc/train.txt", long_docs=True),
        },
        description="source name -> {train, dev, long_docs}; the name becomes the folder and the source name in "
                    "every results table. $FINSENT_SHARED is ../shared beside the checkout unless set")
    out_dir: str = Field("runs/split", description="where the split is written")
    seed: int = Field(13, description="seed of the shuffles (the split is reproducible byte for byte from it)")
    test_fraction: float = Field(0.1, description="fraction of each source's train file held out as test")
    dev_fraction: float = Field(0.1, description="fraction of the train file held out as dev, for sources "
                                                 "without a dev file")
    labels: list[str] = Field(default_factory=lambda: list(DEFAULT_LABELS), description="label names")
    neutral_label: str = Field("其他", description="the neutral label (long documents are filled with it)")
    long_docs_per_split: int = Field(300, description="constructed long documents in dev_long and in test_long")
    long_min_chars: int = Field(900, description="shortest constructed long document, in characters")
    long_max_chars: int = Field(1600, description="longest constructed long document, in characters")
    overwrite: bool = Field(False, description="replace an existing split in out_dir (never done silently)")

    @field_validator("test_fraction", "dev_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 < v < 0.5:
            raise ValueError(f"must be in (0, 0.5), got {v}")
        return v

    @model_validator(mode="after")
    def _checks(self) -> SplitConfig:
        if not self.sources:
            raise ValueError("sources: give at least one source, e.g. sources.news.train=news.txt")
        if self.neutral_label not in self.labels:
            raise ValueError(f"neutral_label: {self.neutral_label!r} is not one of labels {self.labels}")
        if not 0 < self.long_min_chars <= self.long_max_chars:
            raise ValueError("long_min_chars/long_max_chars: need 0 < long_min_chars <= long_max_chars")
        if self.long_docs_per_split < 0:
            raise ValueError("long_docs_per_split: must be >= 0")
        return self


# ============================================================================================ building
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _line(label: str, text: str) -> str:
    return f"{label}{SEPARATOR}{text}\n"


def _check_no_overlap(named: dict[str, list[Any]]) -> None:
    """Refuse when the same normalised text sits in two of the given example lists."""
    seen: dict[str, tuple[str, Any]] = {}
    for where, examples in named.items():
        for ex in examples:
            key = normalize(ex.text)
            other = seen.get(key)
            if other is not None and other[0] != where:
                o = other[1]
                raise DataError(
                    f"leak: the same text is in {o.source}:{o.line} ({other[0]}) and {ex.source}:{ex.line} ({where}); "
                    "remove one of them so no text sits in two splits")
            seen.setdefault(key, (where, ex))


def stratified_cut(examples: Sequence[Any], fractions: Sequence[float], seed: int) -> list[list[Any]]:
    """Cut examples into ``len(fractions) + 1`` parts, per label: part i gets ``round(fraction_i * n_label)``
    examples of each label, the last part the rest. Identical texts stay in one part. Deterministic."""
    groups: dict[str, list[Any]] = defaultdict(list)
    order: list[str] = []
    for ex in examples:
        key = normalize(ex.text)
        if key not in groups:
            order.append(key)
        groups[key].append(ex)
    by_label: dict[str, list[str]] = defaultdict(list)
    for key in order:
        by_label[groups[key][0].label].append(key)
    parts: list[list[Any]] = [[] for _ in range(len(fractions) + 1)]
    for label in sorted(by_label):
        keys = by_label[label]
        rng = random.Random(f"{seed}:{label}")
        rng.shuffle(keys)
        start = 0
        for i, frac in enumerate(fractions):
            n = round(frac * len(keys))
            for key in keys[start : start + n]:
                parts[i].extend(groups[key])
            start += n
        for key in keys[start:]:
            parts[-1].extend(groups[key])
    # file order inside each part (stable, readable diffs)
    return [sorted(p, key=lambda e: (e.source, e.line)) for p in parts]


def _conflicts(examples: Sequence[Any]) -> None:
    labels: dict[str, Any] = {}
    for ex in examples:
        key = normalize(ex.text)
        if key in labels and labels[key].label != ex.label:
            o = labels[key]
            raise DataError(f"conflicting labels for the same text: {o.source}:{o.line} says {o.label}, "
                            f"{ex.source}:{ex.line} says {ex.label}; fix or remove one")
        labels.setdefault(key, ex)


def build_long_docs(examples: Sequence[Any], n: int, seed: int, labels: Sequence[str], neutral: str,
                    min_chars: int, max_chars: int) -> list[tuple[str, str]]:
    """Constructed multi-paragraph documents ``(label, text)`` from one split's sentences (see module doc)."""
    pool: dict[str, list[str]] = defaultdict(list)
    for ex in examples:
        pool[ex.label].append(ex.text)
    if not pool.get(neutral):
        return []
    rng = random.Random(f"long:{seed}")
    polar = [lab for lab in labels if lab != neutral and pool.get(lab)]
    choices = [neutral, *polar]
    docs: list[tuple[str, str]] = []
    for i in range(n):
        label = choices[i % len(choices)]
        target = rng.randint(min_chars, max_chars)
        sentences = [] if label == neutral else rng.sample(pool[label], k=min(len(pool[label]), rng.randint(1, 3)))
        fillers = rng.sample(pool[neutral], k=len(pool[neutral]))
        length = sum(len(s) for s in sentences)
        for s in fillers:
            if length >= target:
                break
            sentences.append(s)
            length += len(s)
        rng.shuffle(sentences)
        docs.append((label, "".join(s if s[-1] in _ENDS else s + "。" for s in sentences)))
    return docs


def make_split(cfg: SplitConfig) -> dict[str, Any]:
    """Write the split described by ``cfg``; returns the manifest (also written as ``split.json``)."""
    from training.config import expand_path  # $FINSENT_SHARED handling lives with the configs' paths

    out = Path(expand_path(cfg.out_dir))
    if (out / MANIFEST).exists() and not cfg.overwrite:
        raise DataError(f"{out / MANIFEST} exists: a split is already there. Use it, pick another out_dir, or "
                        "pass overwrite=true to replace it")
    manifest: dict[str, Any] = {"seed": cfg.seed, "test_fraction": cfg.test_fraction,
                                "dev_fraction": cfg.dev_fraction, "labels": cfg.labels, "inputs": {},
                                "outputs": {}}
    written: dict[str, list[tuple[str, str]]] = {}
    for name, src in cfg.sources.items():
        train_path = Path(expand_path(src.train))
        data = read_examples(train_path, cfg.labels, on_error="raise")
        manifest["inputs"][f"{name}/train"] = {"file": train_path.name, "sha256": _sha256(train_path),
                                               "examples": len(data)}
        _conflicts(data.examples)
        if src.dev:
            dev_path = Path(expand_path(src.dev))
            dev = read_examples(dev_path, cfg.labels, on_error="raise")
            manifest["inputs"][f"{name}/dev"] = {"file": dev_path.name, "sha256": _sha256(dev_path),
                                                 "examples": len(dev)}
            _check_no_overlap({"train file": data.examples, "dev file": dev.examples})
            test, train = stratified_cut(data.examples, [cfg.test_fraction], cfg.seed)
            parts = {"train": train, "dev": dev.examples, "test": test}
        else:
            test, dev_part, train = stratified_cut(data.examples, [cfg.test_fraction, cfg.dev_fraction], cfg.seed)
            parts = {"train": train, "dev": dev_part, "test": test}
        _check_no_overlap(parts)
        for split, examples in parts.items():
            written[f"{name}/{split}"] = [(e.label, e.text) for e in examples]
        if src.long_docs:
            for split in ("dev", "test"):
                written[f"{name}/{split}_long"] = build_long_docs(
                    parts[split], cfg.long_docs_per_split, cfg.seed + (0 if split == "dev" else 1), cfg.labels,
                    cfg.neutral_label, cfg.long_min_chars, cfg.long_max_chars)
    # every output file first to a temp folder, then moved in: an interrupted run leaves no half split
    for rel, rows in written.items():
        path = out / f"{rel}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_text("".join(_line(lab, text) for lab, text in rows), encoding="utf-8")
        tmp.replace(path)
        counts: dict[str, int] = defaultdict(int)
        for lab, _ in rows:
            counts[lab] += 1
        manifest["outputs"][f"{rel}.txt"] = {"sha256": _sha256(path), "examples": len(rows),
                                             "labels": {k: counts[k] for k in cfg.labels if counts[k]}}
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    log.info("wrote the split to %s", out)
    return manifest


def ensure_default_split(paths: Sequence[str | Path]) -> bool:
    """When some of ``paths`` are missing and all of those lie in the default split folder (``runs/split``
    under the working directory), write the default split there; returns whether it did. Used by the
    commands whose packaged configs read the split (finetune, demo, bench), so a first run just works."""
    from training.config import expand_path

    default = Path(expand_path(SplitConfig().out_dir))
    missing = [Path(p) for p in paths if not Path(p).is_file()]
    if not missing or not all(default in m.parents for m in missing) or (default / MANIFEST).exists():
        return False
    log.info("writing the default train/dev/test split to %s (finsent split)", default)
    make_split(SplitConfig())
    return True


def format_manifest(manifest: dict[str, Any]) -> str:
    lines = [f"split (seed {manifest['seed']}, test {manifest['test_fraction']:.0%}, dev {manifest['dev_fraction']:.0%}"
             " where a source has no dev file):"]
    for rel, o in manifest["outputs"].items():
        counts = " / ".join(f"{k} {v}" for k, v in o["labels"].items())
        lines.append(f"  {rel:<22} {o['examples']:>6}  ({counts})  sha256 {o['sha256'][:12]}")
    return "\n".join(lines)


#: the config of ``finsent split`` (finsent.cli.config_class; the CLI grammar test walks it)
CONFIG = SplitConfig


def main(argv: list[str] | None = None) -> int:
    """``finsent split [--config FILE] [key=value ...]``."""
    import sys

    from classifier.config import parse_command, run_command

    def run(args: list[str]) -> int:
        cfg = parse_command(SplitConfig, args, prog="finsent split",
                            description="write the seeded, stratified train/dev/test split (and the long-news set)")
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        manifest = make_split(cfg)
        print(format_manifest(manifest))
        from training.config import expand_path

        print(f"wrote {Path(expand_path(cfg.out_dir)) / MANIFEST}")
        return 0

    return run_command("finsent split", run, sys.argv[1:] if argv is None else argv)
