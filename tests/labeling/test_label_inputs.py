"""finsent label without Ray: settings, finding and reading input files, bad rows, the output directory's
manifest and resume checks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from classifier.config import load_config
from classifier.errors import ConfigError
from labeling.config import LabelConfig
from labeling.inputs import ReadSpec, check_fields, iter_shards, resolve_inputs, shard_name
from labeling.output import OutputDir, ShardRecord, manifest_diff, new_manifest


# ================================================================================================ settings
def test_config_defaults_and_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "label.yaml"
    cfg_file.write_text("model_dir: m\noutput_dir: out\nrows_per_shard: 500\n", encoding="utf-8")
    cfg = load_config(LabelConfig, cfg_file, ["inputs=news/", "text_fields=[title,content]", "num_gpus=1",
                                       "id_field=null"])
    assert cfg.inputs == ["news/"]  # one value becomes a list
    assert cfg.text_fields == ["title", "content"]
    assert cfg.rows_per_shard == 500 and cfg.model_dir == "m"
    assert cfg.id_field is None
    assert cfg.device == "cuda" and cfg.threads == 1
    assert LabelConfig(text_fields="title,content", passthrough="ts").text_fields == ["title", "content"]
    assert LabelConfig(inputs="a,b.jsonl").inputs == ["a,b.jsonl"]  # a path is never split
    assert LabelConfig(num_cpus=3).threads == 3
    assert LabelConfig(num_cpus=3, torch_threads=2).threads == 2


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"rows_per_shard": 0}, "rows_per_shard"),
        ({"batch_sise": 4}, "batch_sise (did you mean batch_size?)"),
        ({"passthrough": ["label"]}, "clashes with an output column"),
        ({"passthrough": ["p_利多"]}, "clashes with an output column"),
        ({"text_fields": []}, "name at least one field"),
        ({"num_gpus": 1, "quantize": "int8"}, "quantize=int8 is a CPU option"),
        ({"output_format": "csv"}, "output_format"),
    ],
)
def test_config_errors_name_the_field(values: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        LabelConfig(**values)
    assert needle in str(e.value)


def test_required_settings_are_named() -> None:
    with pytest.raises(ConfigError) as e:
        LabelConfig(inputs=["a.jsonl"]).check_required()
    assert "model_dir" in str(e.value) and "output_dir" in str(e.value) and "inputs" not in str(e.value)


def test_cli_help_and_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    from finsent.cli import main

    assert main(["label", "--help-config"]) == 0
    out = capsys.readouterr().out
    for name in LabelConfig.model_fields:
        assert f"\n  {name} = " in out
    assert main(["label", "--print-config", "inputs=a.jsonl", "concurrency=3"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["inputs"] == ["a.jsonl"] and printed["concurrency"] == 3
    assert printed["rows_per_shard"] == 2000
    assert main(["label", "concurrency=zero"]) == 2
    assert "concurrency" in capsys.readouterr().err


def test_cli_missing_input_and_model_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      tiny_model_dir: Path) -> None:
    from finsent.cli import main

    rc = main(["label", f"inputs={tmp_path / 'nope.jsonl'}", f"model_dir={tiny_model_dir}",
               f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.jsonl' does not exist" in err
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    rc = main(["label", f"inputs={tmp_path / 'a.jsonl'}", f"model_dir={tmp_path / 'no-model'}",
               f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "model_dir" in err and "finsent finetune" in err
    (tmp_path / "empty-model").mkdir()
    rc = main(["label", f"inputs={tmp_path / 'a.jsonl'}", f"model_dir={tmp_path / 'empty-model'}",
               f"output_dir={tmp_path / 'out'}"])
    assert rc == 2 and "empty-model" in capsys.readouterr().err


# ================================================================================================ input files
def test_resolve_dirs_globs_and_formats(tmp_path: Path) -> None:
    d = tmp_path / "news"
    (d / "2024").mkdir(parents=True)
    (d / "2024" / "a.jsonl").write_text("{}\n", encoding="utf-8")
    (d / "b.csv").write_text("text\nx\n", encoding="utf-8")
    with gzip.open(d / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("x\n")
    (d / "_SUCCESS").write_text("", encoding="utf-8")
    (d / "notes.md").write_text("", encoding="utf-8")
    files = resolve_inputs([str(d)])
    assert [(f.name, f.format, f.compression) for f in files] == [
        ("2024/a.jsonl", "jsonl", None), ("b.csv", "csv", None), ("c.txt.gz", "txt", "gzip")]
    assert [f.index for f in files] == [0, 1, 2]
    assert all(f.size > 0 and f.version for f in files)
    files = resolve_inputs([str(d / "*.csv"), str(d / "2024" / "a.jsonl")])
    assert [f.name for f in files] == ["b.csv", "2024/a.jsonl"]
    assert [f.name for f in resolve_inputs([f"file://{d / 'b.csv'}"])] == ["b.csv"]
    # an output directory inside the input directory is not read back
    (d / "labels").mkdir()
    (d / "labels" / "part-00000-00000.jsonl").write_text("{}\n", encoding="utf-8")
    assert len(resolve_inputs([str(d)])) == 4
    assert [f.name for f in resolve_inputs([str(d)], exclude=f"file://{d / 'labels'}")] == [
        "2024/a.jsonl", "b.csv", "c.txt.gz"]


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [("missing.jsonl", "does not exist"), ("*.nothing", "no file matches"), ("notes.md", "format=")],
)
def test_resolve_errors(tmp_path: Path, pattern: str, needle: str) -> None:
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        resolve_inputs([str(tmp_path / pattern)])
    assert needle in str(e.value)


def test_wrong_text_field_is_refused_naming_the_fields(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text('{"id": 1, "title": "x", "content": "y"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        check_fields(resolve_inputs([str(p)]), ["text"])
    assert "['id', 'title', 'content']" in str(e.value) and "text_fields=[title,content]" in str(e.value)
    check_fields(resolve_inputs([str(p)]), ["title", "content"])


def _rows(path: Path, **spec_kw) -> list:
    [file] = resolve_inputs([str(path)])
    spec = ReadSpec(**spec_kw)
    return [(k, last, [(r.row, r.id, r.text, r.error, r.extra) for r in rows])
            for k, rows, last in iter_shards(file, spec)]


def test_txt_rows_ids_and_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "corpus.txt"
    p.write_bytes("利好消息\r\n\n股价下跌\n".encode() + b"\xff\xfe bad\n" + "最后一行".encode())
    [(k, last, rows)] = _rows(p, rows_per_shard=10)
    assert (k, last) == (0, True)
    assert rows == [
        (0, None, "利好消息", None, {}),
        (1, None, None, "empty line (no text)", {}),
        (2, None, "股价下跌", None, {}),
        (3, None, None, "invalid UTF-8 at byte 0: re-encode the file as UTF-8", {}),
        (4, None, "最后一行", None, {}),
    ]


def test_compressed_line_files_are_read(tmp_path: Path) -> None:
    p = tmp_path / "news.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write('{"id": "a", "text": "盈利大增"}\n{"id": "b", "text": ""}\n')
    [(_, _, rows)] = _rows(p, rows_per_shard=10)
    assert rows == [(0, "a", "盈利大增", None, {}), (1, "b", None, "empty text in text", {})]


def test_jsonl_rows_text_fields_passthrough_and_bad_rows(tmp_path: Path) -> None:
    p = tmp_path / "news.jsonl"
    lines = [
        json.dumps({"id": 7, "title": " 标题 ", "content": "正文", "ts": "2024-01-02", "tags": ["a"]},
                   ensure_ascii=False),
        json.dumps({"title": "只有标题", "content": None}, ensure_ascii=False),
        "{not json",
        "[1, 2]",
        json.dumps({"id": "x", "title": 3}),
        json.dumps({"id": "y", "title": "  ", "content": ""}),
        json.dumps({"id": "z", "body": "wrong field"}),
        "",
    ]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    [(_, _, rows)] = _rows(p, text_fields=("title", "content"), passthrough=("ts", "tags"),
                           rows_per_shard=100)
    assert rows[0] == (0, "7", "标题\n正文", None, {"ts": "2024-01-02", "tags": '["a"]'})
    assert rows[1] == (1, None, "只有标题", None, {"ts": None, "tags": None})
    assert [r[3] for r in rows[2:]] == [
        "unparsable JSON line: Expecting property name enclosed in double quotes at column 2",
        "the line is a JSON list, not an object",
        "text field 'title' is not a string (got int)",
        "empty text in title + content",
        "missing text: the row has no 'title' or 'content' field",
        "blank line (no JSON object)",
    ]


def test_csv_rows(tmp_path: Path) -> None:
    p = tmp_path / "news.csv"
    p.write_bytes('id,text,src\n1,"多行\n正文",a\n2,short\n,"含,逗号",c\n4,'.encode() + b"\xff\xfe" + b",d\n")
    [(_, _, rows)] = _rows(p, passthrough=("src",), rows_per_shard=100)
    assert rows == [
        (0, "1", "多行\n正文", None, {"src": "a"}),
        (1, None, None, "CSV row has 2 fields, the header has 3", {}),
        (2, None, "含,逗号", None, {"src": "c"}),
        (3, "4", None, "invalid UTF-8 in text field 'text': re-encode the file as UTF-8", {"src": "d"}),
    ]


def test_parquet_rows_and_non_string_text(tmp_path: Path) -> None:
    p = tmp_path / "news.parquet"
    pq.write_table(pa.table({"id": [10, 11, 12], "text": ["上涨", None, "下跌"], "n": [1, 2, 3]}), p)
    p2 = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), p2)
    [(_, _, rows)] = _rows(p, passthrough=("n",), rows_per_shard=100)
    assert rows == [
        (0, "10", "上涨", None, {"n": "1"}),
        (1, "11", None, "missing text: the row has no 'text' field", {"n": "2"}),
        (2, "12", "下跌", None, {"n": "3"}),
    ]
    [(_, _, rows)] = _rows(p2, rows_per_shard=100)
    assert [r[3] for r in rows] == ["text field 'text' is not a string (got int)"] * 2


def test_shards_cut_by_rows_and_done_shards_skipped(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_text("".join(f"第{i}条\n" for i in range(10)), encoding="utf-8")
    shards = _rows(p, rows_per_shard=4)
    assert [(k, last, [r[0] for r in rows]) for k, last, rows in shards] == [
        (0, False, [0, 1, 2, 3]), (1, False, [4, 5, 6, 7]), (2, True, [8, 9])]
    # shard 1 done: skipped, and the others are unchanged
    shards = _rows(p, rows_per_shard=4, done={0: frozenset({1})})
    assert [(k, last, [r[0] for r in rows]) for k, last, rows in shards] == [
        (0, False, [0, 1, 2, 3]), (2, True, [8, 9])]
    # exactly full last shard is marked last
    shards = _rows(p, rows_per_shard=5)
    assert [(k, last) for k, last, _ in shards] == [(0, False), (1, True)]
    assert shard_name(3, 12, "parquet") == "part-00003-00012.parquet"


# ================================================================================================ output dir
def _manifest(rows_per_shard: int = 10, size: int = 100) -> dict:
    return new_manifest({"rows_per_shard": rows_per_shard, "text_fields": ["text"]},
                        [{"url": "/in/a.jsonl", "format": "jsonl", "size": size, "version": "mtime=1"}],
                        "tiny@abc", ["其他", "利多", "利空"])


def test_manifest_diff_names_what_changed() -> None:
    assert manifest_diff(_manifest(), _manifest()) == []
    diffs = manifest_diff(_manifest(), _manifest(rows_per_shard=5, size=120))
    assert "rows_per_shard: 10 -> 5" in diffs
    assert "input /in/a.jsonl changed (size 100 -> 120)" in diffs
    other = _manifest()
    other["model_version"] = "tiny@def"
    assert manifest_diff(_manifest(), other) == ["model: tiny@abc -> tiny@def (other weights)"]


def test_output_dir_resume_refuse_and_overwrite(tmp_path: Path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    assert out.prepare(_manifest(), overwrite=False) == {}
    rec = ShardRecord(shard="part-00000-00000.parquet", file=0, chunk=0, rows=3, labelled=2,
                      bad=[{"id": "x", "file": "a.jsonl", "row": 1, "reason": "empty text in text"}],
                      last=True, data_size=0)
    out.commit_shard(rec, b"PAR1 data")
    assert rec.data_size == 9
    # same settings: resumed, the shard is done
    done = out.prepare(_manifest(), overwrite=False)
    assert list(done) == ["part-00000-00000.parquet"] and done["part-00000-00000.parquet"].bad == rec.bad
    # a changed data file is not done
    (tmp_path / "out" / "part-00000-00000.parquet").write_bytes(b"PAR1")
    assert out.prepare(_manifest(), overwrite=False) == {}
    # other settings: refused with what differs; overwrite clears our files only
    with pytest.raises(ConfigError) as e:
        out.prepare(_manifest(rows_per_shard=5), overwrite=False)
    assert "rows_per_shard: 10 -> 5" in str(e.value) and "overwrite=true" in str(e.value)
    assert out.prepare(_manifest(rows_per_shard=5), overwrite=True) == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_manifest.json", "_shards", "_tmp"]
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text())["settings"]["rows_per_shard"] == 5
    # a directory with someone else's files is never written into
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.csv").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        OutputDir(str(tmp_path / "other")).prepare(_manifest(), overwrite=True)
    assert "keep.csv" in str(e.value)
