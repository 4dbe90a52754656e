"""Labelled data readers: ``label|||text`` (the seed's format), JSONL and CSV.

A bad line (no separator, unknown label, empty text, invalid UTF-8, bad JSON) is reported with file and line
number; ``on_error="skip"`` counts and skips it, ``on_error="raise"`` stops at the first one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from classifier.errors import DataError
from classifier.labels import LabelSet
from classifier.text import normalize

log = logging.getLogger(__name__)

SEPARATOR = "|||"


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    source: str = ""
    line: int = 0


@dataclass(frozen=True)
class BadLine:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Dataset:
    """Examples read from one or more files, plus the lines that were skipped."""

    examples: list[Example] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    sha256: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.examples]

    def label_counts(self) -> dict[str, int]:
        return dict(Counter(self.labels))


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    return "sep"


def _parse_lines(path: Path, raw: bytes, fmt: str) -> Iterable[tuple[int, str | None, str | None, str | None]]:
    """Yield (line number, label, text, error) for each non-blank line."""
    if fmt == "csv":
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            yield 0, None, None, f"file is not valid UTF-8 ({e}); re-save it as UTF-8"
            return
        delim = "\t" if path.suffix.lower() == ".tsv" else ","
        reader = csv.DictReader(io.StringIO(content), delimiter=delim)
        if not reader.fieldnames or "text" not in reader.fieldnames:
            yield 1, None, None, f"CSV header must name a 'text' column (and 'label'), got {reader.fieldnames}"
            return
        for row in reader:
            yield reader.line_num, row.get("label"), row.get("text"), None
        return
    for no, line in enumerate(raw.split(b"\n"), start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield no, None, None, f"invalid UTF-8 ({e.reason} at byte {e.start})"
            continue
        if no == 1:
            s = s.lstrip("\ufeff")
        if fmt == "jsonl":
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as e:
                yield no, None, None, f"invalid JSON ({e.msg})"
                continue
            if not isinstance(obj, dict):
                yield no, None, None, 'expected a JSON object like {"text": ..., "label": ...}'
                continue
            text = obj.get("text")
            if text is None and ("title" in obj or "content" in obj):
                text = " ".join(str(obj.get(k) or "") for k in ("title", "content"))
            yield no, obj.get("label"), text if isinstance(text, str) else None, None
        else:
            if SEPARATOR not in s:
                yield no, None, None, f"no '{SEPARATOR}' separator: lines must be label{SEPARATOR}text"
                continue
            label, text = s.split(SEPARATOR, 1)
            yield no, label.strip(), text, None


def read_examples(
    paths: str | Path | Sequence[str | Path],
    labels: LabelSet | Sequence[str] | None = None,
    on_error: Literal["skip", "raise"] = "skip",
    require_labels: bool = True,
) -> Dataset:
    """Read labelled examples from ``label|||text`` (.txt), JSONL or CSV files.

    Texts are normalised (:func:`classifier.text.normalize`). With ``require_labels=False`` lines without a
    label are kept with label ``""`` (for prediction inputs).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    labelset = LabelSet.of(labels)
    out = Dataset()
    for p in map(Path, paths):
        if not p.is_file():
            raise DataError(f"data file {p} not found: check the path (relative paths start at the working directory)")
        raw = p.read_bytes()
        out.sha256[str(p)] = hashlib.sha256(raw).hexdigest()
        for no, label, text, err in _parse_lines(p, raw, _format_of(p)):
            if err is None:
                text = normalize(text) if isinstance(text, str) else ""
                label = (label or "").strip() if isinstance(label, str) or label is None else str(label)
                if not text:
                    err = "empty text"
                elif require_labels and not label:
                    err = "missing label"
                elif label and label not in labelset.names:
                    err = f"unknown label {label!r} (expected one of {list(labelset.names)})"
            if err is not None:
                bad = BadLine(str(p), no, err)
                if on_error == "raise":
                    raise DataError(f"{bad} — fix the line or pass on_error=skip to skip bad lines")
                out.bad.append(bad)
                continue
            out.examples.append(Example(text=text, label=label or "", source=str(p), line=no))
    if out.bad:
        log.warning("skipped %d bad line(s), first: %s", len(out.bad), out.bad[0])
    return out
