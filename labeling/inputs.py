"""Input side of ``finsent label``: which files, in which format, and their rows cut into shards.

Files are found with fsspec (local paths, globs, directories, any fsspec URL; ``.gz``, ``.bz2``, ``.xz`` and
``.zst`` files are decompressed on the fly). Each file is read by one Ray Data task, front to back, so every
row gets a stable position ``<file>:<row>`` and shard ``k`` of a file is always rows ``[k*R, (k+1)*R)``. A row
that cannot be labelled (no text, text that is not a string, invalid UTF-8, a line that does not parse) is
kept with the reason in ``__error`` and ends up in the errors file: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from classifier.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet", "txt")
#: file extension → format (after a compression suffix is taken off)
EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".txt": "txt",
}
COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
#: columns of the tables the read stage hands to the actors (besides the passthrough fields)
ROW_COLUMNS: tuple[str, ...] = (
    "__shard", "__shard_rows", "__last", "__file", "__row", "__id", "__text", "__error",
)
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is, how it is named in ids and shard names, and what it looked like."""

    index: int
    url: str  #: path (local) or protocol URL, what fsspec opens
    name: str  #: relative to the inputs' common folder; used in ``<file>:<row>`` ids and the errors file
    format: str
    compression: str | None
    size: int
    version: str  #: modification time / ETag / checksum reported by the filesystem

    def fingerprint(self) -> dict[str, Any]:
        return {"url": self.url, "format": self.format, "size": self.size, "version": self.version}


@dataclass(frozen=True)
class ReadSpec:
    """What to take from each row (picklable: it travels to the read tasks)."""

    text_fields: tuple[str, ...] = ("text",)
    id_field: str | None = "id"
    passthrough: tuple[str, ...] = ()
    rows_per_shard: int = 2000
    output_ext: str = "parquet"
    #: file index → shard numbers already written (skipped without parsing their rows)
    done: Mapping[int, frozenset[int]] = field(default_factory=dict)


def shard_name(file_index: int, chunk: int, ext: str) -> str:
    return f"part-{file_index:05d}-{chunk:05d}.{ext}"


# ========================================================================================= finding files
def _format_of(path: str, fmt: str) -> tuple[str | None, str | None]:
    """``(format, compression)`` of a path; format None when auto and the extension is unknown."""
    base = posixpath.basename(path).lower()
    root, ext = posixpath.splitext(base)
    compression = COMPRESSIONS.get(ext)
    if compression:
        root, ext = posixpath.splitext(root)
    if fmt != "auto":
        return fmt, compression
    return EXTENSIONS.get(ext), compression


def _file_version(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "checksum", "mtime", "LastModified", "last_modified", "updated",
                "created"):
        if info.get(key) is not None:
            return f"{key}={info[key]}"
    return ""


def resolve_inputs(patterns: Sequence[str], fmt: str = "auto", exclude: str | None = None) -> list[InputFile]:
    """Expand paths, globs, directories and URLs into a sorted list of files, or raise ConfigError saying
    what was not found and how to fix it. Files under ``exclude`` (the output directory, as a URL) are left
    out, so an output directory inside an input directory is not read back as input."""
    import fsspec

    found: list[tuple[Any, str, str | None]] = []  # (fs, path, format) in order
    for pattern in patterns:
        try:
            fs, path = fsspec.core.url_to_fs(pattern)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"inputs: cannot open {pattern!r}: {e}. Install the fsspec driver for its "
                              "protocol (e.g. pip install s3fs / gcsfs) or fix the URL") from None
        if any(c in path for c in _GLOB_CHARS):
            matches = sorted(fs.glob(path))
            if not matches:
                raise ConfigError(f"inputs: no file matches {pattern!r}; check the pattern")
        elif fs.isdir(path):
            matches = [path]
        elif fs.exists(path):
            matches = [path]
        else:
            raise ConfigError(f"inputs: {pattern!r} does not exist; give an existing file, directory, glob "
                              "or URL")
        before = len(found)
        for m in matches:
            if fs.isdir(m):
                for p in sorted(fs.find(m)):
                    rel = p[len(m):].lstrip("/") if p.startswith(m) else posixpath.basename(p)
                    if any(part.startswith((".", "_")) for part in rel.split("/")):
                        continue
                    f, _ = _format_of(p, fmt)
                    if f is not None:
                        found.append((fs, p, f))
            else:
                f, _ = _format_of(m, fmt)
                if f is None:
                    raise ConfigError(
                        f"inputs: cannot tell the format of {m!r} from its extension; name it .jsonl, .csv, "
                        ".parquet or .txt, or set format=jsonl|csv|parquet|txt")
                found.append((fs, m, f))
        if len(found) == before:
            raise ConfigError(f"inputs: {pattern!r} holds no .jsonl/.json/.csv/.parquet/.txt file; point at "
                              "the files or set format=... to read other names")
    # one entry per file, in the order given
    seen: set[str] = set()
    unique = []
    skip = exclude.rstrip("/") + "/" if exclude else None
    for fs, p, f in found:
        key = fs.unstrip_protocol(p)
        if skip and key.startswith(skip):
            continue
        if key not in seen:
            seen.add(key)
            unique.append((fs, p, f))
    if not unique:
        raise ConfigError(f"inputs: {list(patterns)} hold no input file outside output_dir; point inputs at "
                          "the news files")
    protocols = {_protocol(fs) for fs, _, _ in unique}
    if len(protocols) == 1:
        root = posixpath.commonpath([posixpath.dirname(p) for _, p, _ in unique])
    else:
        root = None
    files = []
    for i, (fs, p, f) in enumerate(unique):
        info = fs.info(p)
        local = _protocol(fs) == "file"
        url = p if local else fs.unstrip_protocol(p)
        name = posixpath.relpath(p, root) if root is not None else fs.unstrip_protocol(p)
        files.append(InputFile(index=i, url=url, name=name, format=f, compression=_format_of(p, "auto")[1],
                               size=int(info.get("size") or 0), version=_file_version(info)))
    return files


def _protocol(fs: Any) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else str(proto)


def _open(file: InputFile, mode: str = "rb") -> Any:
    import fsspec

    return fsspec.open(file.url, mode, compression=file.compression)


def count_rows(file: InputFile) -> int | None:
    """Rows of a file when that is cheap to know (local uncompressed line files, Parquet), else None."""
    if file.format == "parquet":
        import pyarrow.parquet as pq

        with _open(file) as f:
            return pq.ParquetFile(f).metadata.num_rows
    if file.format in ("jsonl", "txt") and file.compression is None and os.path.isfile(file.url):
        n, last = 0, b"\n"
        with open(file.url, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                n += chunk.count(b"\n")
                last = chunk[-1:]
        return n + (last != b"\n")
    return None


def peek_fields(file: InputFile) -> list[str] | None:
    """Field names of a file's first record (column names for CSV/Parquet); None for txt or unknown."""
    import pyarrow.parquet as pq

    try:
        with _open(file) as f:
            if file.format == "parquet":
                return list(pq.ParquetFile(f).schema_arrow.names)
            if file.format == "csv":
                text = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")
                return next(csv.reader(text), None)
            if file.format == "jsonl":
                for line in f:
                    if line.strip():
                        obj = json.loads(line)
                        return list(obj) if isinstance(obj, dict) else None
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return None
    return None


def check_fields(files: Sequence[InputFile], text_fields: Sequence[str]) -> None:
    """Refuse a run whose first file has none of the text fields (so a wrong text_fields does not turn every
    row into a bad row): say which fields the file has."""
    for file in files:
        if file.format == "txt":
            continue
        names = peek_fields(file)
        if names is not None and not any(f in names for f in text_fields):
            raise ConfigError(
                f"text_fields: {file.name} has no field {' or '.join(map(repr, text_fields))}; its fields "
                f"are {names[:20]}. Set text_fields to the field(s) holding the text, e.g. "
                "text_fields=[title,content]")
        return


# ========================================================================================== reading rows
@dataclass
class Row:
    """One input row on its way to the actors."""

    row: int
    id: str | None = None
    text: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _decode_line(raw: bytes) -> str:
    return raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8")


def _utf8_reason(e: UnicodeDecodeError) -> str:
    return f"invalid UTF-8 at byte {e.start}: re-encode the file as UTF-8"


def _passthrough_value(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return _clean_str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return json.dumps(v, ensure_ascii=False, default=str)


def _clean_str(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:  # lone surrogates from a CSV read with surrogateescape
        return s.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def text_of(record: Mapping[str, Any], text_fields: Sequence[str]) -> tuple[str | None, str | None]:
    """``(text, None)`` or ``(None, reason)``: the text fields joined by a newline (missing ones skipped), as
    the stream codec does for title + content."""
    from classifier.text import normalize

    present = [f for f in text_fields if record.get(f) is not None]
    if not present:
        which = " or ".join(repr(f) for f in text_fields)
        return None, f"missing text: the row has no {which} field"
    parts = []
    for f in present:
        v = record[f]
        if not isinstance(v, str):
            return None, f"text field {f!r} is not a string (got {type(v).__name__})"
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            return None, f"invalid UTF-8 in text field {f!r}: re-encode the file as UTF-8"
        v = v.strip()
        if v:
            parts.append(v)
    text = "\n".join(parts)
    if not normalize(text):
        return None, f"empty text in {' + '.join(present)}"
    return text, None


def _record_row(row: int, record: Mapping[str, Any], spec: ReadSpec) -> Row:
    text, error = text_of(record, spec.text_fields)
    rid = record.get(spec.id_field) if spec.id_field else None
    return Row(row=row, id=None if rid is None or rid == "" else _passthrough_value(rid), text=text,
               error=error, extra={k: _passthrough_value(record.get(k)) for k in spec.passthrough})


def _lines(f: Any) -> Iterator[bytes]:
    while True:
        line = f.readline()
        if not line:
            return
        yield line


def _txt_rows(f: Any, spec: ReadSpec, skip: Callable[[int], bool]) -> Iterator[Row]:
    from classifier.text import normalize

    for i, raw in enumerate(_lines(f)):
        if skip(i):
            yield Row(row=i)
            continue
        try:
            text = _decode_line(raw)
        except UnicodeDecodeError as e:
            yield Row(row=i, error=_utf8_reason(e))
            continue
        if not normalize(text):
            yield Row(row=i, error="empty line (no text)")
            continue
        yield Row(row=i, text=text, extra=dict.fromkeys(spec.passthrough))


def _jsonl_rows(f: Any, spec: ReadSpec, skip: Callable[[int], bool]) -> Iterator[Row]:
    for i, raw in enumerate(_lines(f)):
        if skip(i):
            yield Row(row=i)
            continue
        try:
            line = _decode_line(raw)
        except UnicodeDecodeError as e:
            yield Row(row=i, error=_utf8_reason(e))
            continue
        if not line.strip():
            yield Row(row=i, error="blank line (no JSON object)")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Row(row=i, error=f"unparsable JSON line: {e.msg} at column {e.colno}")
            continue
        except RecursionError:
            yield Row(row=i, error="unparsable JSON line: nested too deeply")
            continue
        if not isinstance(obj, dict):
            yield Row(row=i, error=f"the line is a JSON {type(obj).__name__}, not an object")
            continue
        yield _record_row(i, obj, spec)


def _csv_rows(f: Any, spec: ReadSpec, skip: Callable[[int], bool]) -> Iterator[Row]:
    csv.field_size_limit(1 << 30)
    text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise DataError(f"cannot read the CSV header: {e}") from None
    header = [_clean_str(h) for h in header]
    i = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Row(row=i, error=f"unparsable CSV row: {e}")
            i += 1
            continue
        if skip(i):
            yield Row(row=i)
        elif len(values) != len(header):
            yield Row(row=i, error=f"CSV row has {len(values)} fields, the header has {len(header)}")
        else:
            yield _record_row(i, dict(zip(header, values, strict=True)), spec)
        i += 1


def _parquet_rows(f: Any, spec: ReadSpec, skip: Callable[[int], bool]) -> Iterator[Row]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    wanted = [*spec.text_fields, *([spec.id_field] if spec.id_field else []), *spec.passthrough]
    columns = [c for c in dict.fromkeys(wanted) if c in pf.schema_arrow.names]
    i = 0
    for batch in pf.iter_batches(batch_size=max(1024, spec.rows_per_shard), columns=columns):
        for record in batch.to_pylist():
            yield Row(row=i) if skip(i) else _record_row(i, record, spec)
            i += 1


READERS: dict[str, Callable[[Any, ReadSpec, Callable[[int], bool]], Iterator[Row]]] = {
    "txt": _txt_rows, "jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows,
}


def iter_shards(file: InputFile, spec: ReadSpec) -> Iterator[tuple[int, list[Row], bool]]:
    """``(shard number, rows, is_last)`` for every shard of a file that is not done yet."""
    done = spec.done.get(file.index, frozenset())
    size = spec.rows_per_shard

    def skip(i: int) -> bool:
        return (i // size) in done

    with _open(file) as f:
        rows = READERS[file.format](f, spec, skip)
        chunk: list[Row] = []
        current = 0
        for r in rows:
            k = r.row // size
            if k != current:
                if current not in done:
                    yield current, chunk, False
                chunk, current = [], k
            if current not in done:
                chunk.append(r)
        if chunk and current not in done:
            yield current, chunk, True


def shard_table(file: InputFile, chunk: int, rows: Sequence[Row], last: bool, spec: ReadSpec) -> Any:
    """The rows of one shard as a pyarrow table (the read stage's output)."""
    import pyarrow as pa

    n = len(rows)
    cols: dict[str, Any] = {
        "__shard": pa.array([shard_name(file.index, chunk, spec.output_ext)] * n, pa.string()),
        "__shard_rows": pa.array([n] * n, pa.int64()),
        "__last": pa.array([last] * n, pa.bool_()),
        "__file": pa.array([file.index] * n, pa.int64()),
        "__row": pa.array([r.row for r in rows], pa.int64()),
        "__id": pa.array([r.id if r.id is not None else f"{file.name}:{r.row}" for r in rows], pa.string()),
        "__text": pa.array([r.text for r in rows], pa.string()),
        "__error": pa.array([r.error for r in rows], pa.string()),
    }
    for name in spec.passthrough:
        cols[name] = pa.array([r.extra.get(name) for r in rows], pa.string())
    return pa.table(cols)


def read_file_shards(file: InputFile, spec: ReadSpec) -> Iterable[Any]:
    """Every unfinished shard of ``file`` as a pyarrow table; an unreadable file raises DataError naming
    it."""
    try:
        for chunk, rows, last in iter_shards(file, spec):
            yield shard_table(file, chunk, rows, last, spec)
    except DataError as e:
        raise DataError(f"{file.url}: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read {file.url}: {e}") from None
