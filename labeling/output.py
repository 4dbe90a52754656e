"""Output side of ``finsent label``: the output directory, its manifest, shards and their commit records.

Layout (every name but the shards starts with ``_`` so ``pandas.read_parquet(output_dir)`` reads only the
shards)::

    part-00000-00000.parquet     shard 0 of input file 0 (rows 0..rows_per_shard-1), in input order
    _shards/part-00000-00000.json   its commit record: rows, labelled, bad rows with reasons, data size
    _manifest.json               settings + input fingerprint + model version of the run that started the dir
    _errors.jsonl                every bad row of every shard: {"id", "file", "row", "reason"}
    _summary.json                figures of the last run (written when it completes)
    _tmp/                        shards being written (renamed into place when complete)

A shard is *done* when its commit record exists and its data file has the size the record says. Data files
are written under ``_tmp/`` and renamed into place, then the record is written the same way, so a run killed
at any point leaves either a done shard or one that the next run labels again.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from classifier.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
ERRORS = "_errors.jsonl"
SUMMARY = "_summary.json"
SHARDS = "_shards"
TMP = "_tmp"
LOG = "_label.log"
MANIFEST_VERSION = 1


@dataclass
class ShardRecord:
    """What a finished shard holds (written as ``_shards/<shard>.json``)."""

    shard: str
    file: int
    chunk: int
    rows: int  #: input rows in the shard
    labelled: int  #: rows written to the data file
    bad: list[dict[str, Any]]  #: ``{"id", "file", "row", "reason"}`` per bad row
    last: bool  #: the last shard of its input file
    data_size: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShardRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


class OutputDir:
    """The output directory on any fsspec filesystem."""

    def __init__(self, url: str) -> None:
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"output_dir: cannot open {url!r}: {e}. Install the fsspec driver for its "
                              "protocol or fix the URL") from None
        self.url = url
        self.root = self.root.rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        proto = self.fs.protocol
        return (proto[0] if isinstance(proto, (tuple, list)) else proto) in ("file", "local")

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # ------------------------------------------------------------------ small files
    def read_json(self, *parts: str) -> Any:
        with self.fs.open(self.path(*parts), "rb") as f:
            return json.loads(f.read().decode("utf-8"))

    def write_atomic(self, rel: str, data: bytes) -> int:
        """Write ``data`` to ``_tmp/`` and rename it to ``rel``; returns the size written."""
        tmp = self.path(TMP, f"{posixpath.basename(rel)}.{uuid.uuid4().hex[:8]}")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        final = self.path(rel)
        self.fs.mv(tmp, final)
        return len(data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_atomic(rel, (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))

    # ------------------------------------------------------------------ state
    def listing(self) -> dict[str, int]:
        """``{name relative to root: size}`` of every file under the directory (empty when it is missing)."""
        if not self.fs.exists(self.root):
            return {}
        out = {}
        for p, info in self.fs.find(self.root, detail=True).items():
            rel = p[len(self.root):].lstrip("/") if p.startswith(self.root) else posixpath.basename(p)
            out[rel] = int(info.get("size") or 0)
        return out

    def prepare(self, manifest: dict[str, Any], overwrite: bool) -> dict[str, ShardRecord]:
        """Check the directory against ``manifest`` and return the shards already done.

        A new or empty directory gets the manifest. A directory from a run with the same settings and inputs
        is resumed. Anything else is refused (saying what differs), unless ``overwrite`` clears what an
        earlier run wrote. Files finsent label did not write are never deleted: such a directory is refused.
        """
        files = self.listing()
        foreign = sorted(n for n in files if not _ours(n))
        if foreign:
            raise ConfigError(
                f"output_dir: {self.url} holds files that finsent label did not write "
                f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); choose an empty or new "
                "directory")
        old = None
        if MANIFEST in files:
            try:
                old = self.read_json(MANIFEST)
            except (OSError, ValueError):
                old = None
        has_output = any(n.startswith(("part-", SHARDS + "/")) for n in files)
        if has_output:
            diffs = (manifest_diff(old, manifest) if old is not None
                     else ["_manifest.json is missing or unreadable (the settings of that run are unknown)"])
            if diffs and not overwrite:
                raise ConfigError(
                    f"output_dir: {self.url} holds output of a run with other settings or inputs:\n  "
                    + "\n  ".join(diffs)
                    + "\nRun again with the same settings to resume it, pass overwrite=true to discard it "
                    "and label everything again, or choose another output_dir")
            if diffs:
                log.warning("overwrite=true: discarding the output in %s (%s)", self.url, "; ".join(diffs))
                self.clear(files)
                files = {}
        self.fs.makedirs(self.root, exist_ok=True)
        for name in files:  # leftovers of a killed run
            if name.startswith(TMP + "/"):
                self.fs.rm(self.path(name))
        self.fs.makedirs(self.path(TMP), exist_ok=True)
        self.fs.makedirs(self.path(SHARDS), exist_ok=True)
        if old is None or manifest_diff(old, manifest):
            self.write_json(MANIFEST, manifest)
        return self.done_shards(files)

    def clear(self, files: Mapping[str, int]) -> None:
        for name in sorted(files, reverse=True):
            if name.split("/", 1)[0].startswith(("part-", "_")) and name != LOG:
                self.fs.rm(self.path(name))

    def done_shards(self, files: Mapping[str, int]) -> dict[str, ShardRecord]:
        done = {}
        for name in sorted(files):
            if not (name.startswith(SHARDS + "/") and name.endswith(".json")):
                continue
            try:
                rec = ShardRecord.from_json(self.read_json(name))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s is unreadable: its shard is labelled again", name)
                continue
            if files.get(rec.shard) != rec.data_size:
                log.warning("%s is missing or changed (%s bytes, expected %d): labelling it again", rec.shard,
                            files.get(rec.shard), rec.data_size)
                continue
            done[rec.shard] = rec
        return done

    def commit_shard(self, record: ShardRecord, data: bytes) -> None:
        record.data_size = self.write_atomic(record.shard, data)
        self.write_json(f"{SHARDS}/{record.shard}.json", record.to_json())

    def finish(self, records: Sequence[ShardRecord], summary: dict[str, Any]) -> None:
        """Write the errors file (all shards, in input order) and the summary; remove ``_tmp/``."""
        lines = []
        for rec in sorted(records, key=lambda r: (r.file, r.chunk)):
            lines += [json.dumps(e, ensure_ascii=False) for e in rec.bad]
        self.write_atomic(ERRORS, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
        self.write_json(SUMMARY, summary)
        try:
            self.fs.rm(self.path(TMP), recursive=True)
        except (OSError, FileNotFoundError):
            pass


def _ours(name: str) -> bool:
    """Written by finsent label (``part-*``, ``_*``); dot files (``.DS_Store``) are tolerated, never
    deleted."""
    base = name.split("/", 1)[0]
    return base.startswith(("part-", "_", "."))


def manifest_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two manifests (settings, model, inputs); empty when they match."""
    diffs = []
    if old.get("manifest_version") != new.get("manifest_version"):
        diffs.append(f"manifest_version: {old.get('manifest_version')} -> {new.get('manifest_version')}")
    old_s, new_s = old.get("settings", {}), new.get("settings", {})
    for k in sorted(set(old_s) | set(new_s)):
        if old_s.get(k) != new_s.get(k):
            diffs.append(f"{k}: {old_s.get(k)!r} -> {new_s.get(k)!r}")
    if old.get("model_version") != new.get("model_version"):
        diffs.append(f"model: {old.get('model_version')} -> {new.get('model_version')} (other weights)")
    old_in = {f["url"]: f for f in old.get("inputs", [])}
    new_in = {f["url"]: f for f in new.get("inputs", [])}
    for url in old_in.keys() - new_in.keys():
        diffs.append(f"input {url} is no longer among the inputs")
    for url in new_in.keys() - old_in.keys():
        diffs.append(f"input {url} is new")
    for url in old_in.keys() & new_in.keys():
        a, b = old_in[url], new_in[url]
        if a != b:
            what = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
                             if a.get(k) != b.get(k))
            diffs.append(f"input {url} changed ({what})")
    if not diffs and [f["url"] for f in old.get("inputs", [])] != [f["url"] for f in new.get("inputs", [])]:
        diffs.append("inputs: same files in another order (shard numbers would change)")
    return diffs


def new_manifest(settings: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]], model_version: str,
                 labels: Sequence[str]) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "settings": dict(settings),
        "model_version": model_version,
        "labels": list(labels),
        "inputs": [dict(x) for x in inputs],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ================================================================================================ shard data
def output_columns(labels: Sequence[str], passthrough: Sequence[str]) -> list[str]:
    from labeling.config import PROB_PREFIX

    return ["id", "label", "score", *[PROB_PREFIX + name for name in labels], "model_version", *passthrough]


def shard_output(table: Any, labels: Sequence[str], passthrough: Sequence[str]) -> tuple[Any, list[int]]:
    """From the rows of one shard (actor output, any order): ``(output table in row order, bad row
    indices)``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from labeling.config import PROB_PREFIX

    table = table.sort_by("__row")
    ok_mask = pc.is_null(table["__error"])
    ok = table.filter(ok_mask)
    bad_idx = [i for i, v in enumerate(ok_mask.to_pylist()) if not v]
    cols = {
        "id": ok["__id"].cast(pa.string()),
        "label": ok["label"].cast(pa.string()),
        "score": ok["score"].cast(pa.float32()),
    }
    for name in labels:
        cols[PROB_PREFIX + name] = ok[PROB_PREFIX + name].cast(pa.float32())
    cols["model_version"] = ok["model_version"].cast(pa.string())
    for name in passthrough:
        cols[name] = ok[name].cast(pa.string())
    schema = pa.schema([(k, v.type) for k, v in cols.items()])
    return pa.table(cols, schema=schema), bad_idx


def encode_shard(table: Any, fmt: str) -> bytes:
    """Bytes of a shard's data file (Parquet, or JSON lines with the same columns)."""
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()
    rows = table.to_pylist()
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
