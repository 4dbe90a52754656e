"""finsent label end to end on a local Ray with the tiny model: output equals Predictor.predict, bad rows are
reported with their reasons, a run resumes after shards are deleted or corrupted and after a SIGKILL without
rewriting finished shards, and a run with other settings is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from classifier.errors import ConfigError
from labeling.batch import run_label
from labeling.config import LabelConfig

REPO = Path(__file__).resolve().parents[2]
LABELS = ("其他", "利多", "利空")
TOL = 1e-6


def _docs(shared: Path | None, n: int) -> list[str]:
    corpus = shared / "data" / "corpus" / "fin_corpus.txt" if shared else None
    if corpus is not None and corpus.is_file():
        with open(corpus, encoding="utf-8") as f:
            return [next(f).rstrip("\n") for _ in range(n)]
    words = ["公司", "利润", "上涨", "下跌", "增持", "减持", "回购", "亏损", "市场", "预期"]
    return ["".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 9)) + f"{i}" for i in range(n)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four files, one per format, with good rows and known bad rows; and the expected text of each row."""
    from labeling.inputs import text_of

    shared = Path(os.environ.get("FINSENT_SHARED", REPO.parent / "shared"))
    docs = _docs(shared, 60)
    d = tmp_path_factory.mktemp("label-in")
    expected: dict[str, str] = {}  # id → text the model must see
    bad: dict[str, str] = {}  # id → reason

    recs = [{"id": f"j{i}", "title": docs[i][:12], "content": docs[i], "published_at": f"2024-01-{i + 1:02d}"}
            for i in range(15)]
    lines = [json.dumps(r, ensure_ascii=False) for r in recs]
    lines.insert(4, "{broken")
    lines.insert(9, json.dumps({"id": "j-empty", "title": " ", "content": ""}))
    lines.insert(11, json.dumps({"id": "j-int", "title": 12}))
    (d / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for r in recs:
        expected[r["id"]] = text_of(r, ["title", "content"])[0]
    bad["a.jsonl:4"] = "unparsable JSON line: Expecting property name enclosed in double quotes at column 2"
    bad["j-empty"] = "empty text in title + content"
    bad["j-int"] = "text field 'title' is not a string (got int)"

    csv_rows = [("c" + str(i), docs[15 + i], "") for i in range(10)]
    with open(d / "b.csv", "w", encoding="utf-8", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["id", "title", "content"])
        w.writerows(csv_rows[:5])
        w.writerow(["c-short", "only two"])
        w.writerows(csv_rows[5:])
    for rid, title, content in csv_rows:
        expected[rid] = text_of({"title": title, "content": content}, ["title", "content"])[0]
    bad["c-short"] = "CSV row has 2 fields, the header has 3"

    pq.write_table(pa.table({
        "id": list(range(100, 110)),
        "title": [None] * 10,
        "content": [docs[25 + i] if i != 3 else None for i in range(10)],
        "published_at": [f"2024-02-{i + 1:02d}" for i in range(10)],
    }), d / "c.parquet")
    for i in range(10):
        if i == 3:
            bad["103"] = "missing text: the row has no 'title' or 'content' field"
        else:
            expected[str(100 + i)] = text_of({"content": docs[25 + i]}, ["title", "content"])[0]

    txt = [docs[35 + i] for i in range(20)]
    raw = [t.encode() for t in txt]
    raw.insert(5, b"")
    raw.insert(12, b"\xe4\xb8 broken utf-8")
    (d / "d.txt").write_bytes(b"\n".join(raw) + b"\n")
    row = 0
    for line in raw:
        rid = f"d.txt:{row}"
        if line == b"":
            bad[rid] = "empty line (no text)"
        elif line.startswith(b"\xe4\xb8 "):
            bad[rid] = "invalid UTF-8 at byte 0: re-encode the file as UTF-8"
        else:
            expected[rid] = line.decode()
        row += 1
    # the id the bad CSV row gets: its position (no id field value is read from a malformed row)
    bad["b.csv:5"] = bad.pop("c-short")
    return {"dir": d, "expected": expected, "bad": bad,
            "files": [str(d / n) for n in ("a.jsonl", "b.csv", "c.parquet", "d.txt")]}


def _cfg(data: dict[str, Any], out: Path, model: Path, **kw: Any) -> LabelConfig:
    values = {"inputs": data["files"], "model_dir": str(model), "output_dir": str(out),
              "text_fields": ["title", "content"], "passthrough": ["published_at"], "rows_per_shard": 7,
              "batch_size": 5, "concurrency": 1, "progress": True, "backend": "torch", **kw}
    return LabelConfig(**values)


def _expected_predictions(model: Path, texts: dict[str, str]) -> dict[str, dict[str, Any]]:
    from classifier.predict import Predictor

    p = Predictor.from_dir(model, device="cpu")
    ids = list(texts)
    return dict(zip(ids, p.predict([texts[i] for i in ids]), strict=True))


def _read_output(out: Path, fmt: str = "parquet") -> list[dict[str, Any]]:
    parts = sorted(out.glob(f"part-*.{fmt}"))
    if fmt == "parquet":
        return [r for p in parts for r in pq.read_table(p).to_pylist()]
    return [json.loads(line) for p in parts for line in p.read_text(encoding="utf-8").splitlines()]


def _same_output(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float):
                assert abs(x[k] - y[k]) <= TOL, (x["id"], k)
            else:
                assert x[k] == y[k], (x["id"], k)


@pytest.fixture(scope="module")
def first_run(inputs: dict[str, Any], tiny_model_dir: Path, ray_local: Any,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("label-out") / "labels"
    summary = run_label(_cfg(inputs, out, tiny_model_dir, concurrency=2))  # shards split over two actors
    return {"out": out, "summary": summary, "rows": _read_output(out),
            "errors": (out / "_errors.jsonl").read_text(encoding="utf-8")}


def test_output_matches_predictor_and_bad_rows_are_reported(inputs: dict[str, Any], first_run: dict[str, Any],
                                                            tiny_model_dir: Path) -> None:
    out, summary, rows = first_run["out"], first_run["summary"], first_run["rows"]
    expected = _expected_predictions(tiny_model_dir, inputs["expected"])
    # one row per good input row, in input order, with the Predictor's label and probabilities
    assert [r["id"] for r in rows] == list(inputs["expected"])
    for r in rows:
        e = expected[r["id"]]
        assert r["label"] == e["label"]
        assert r["model_version"] == e["model_version"]
        assert abs(r["score"] - e["score"]) <= TOL
        for name in LABELS:
            assert abs(r[f"p_{name}"] - e["probabilities"][name]) <= TOL
    assert list(rows[0]) == ["id", "label", "score", "p_其他", "p_利多", "p_利空", "model_version", "published_at"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["j0"]["published_at"] == "2024-01-01" and by_id["c0"]["published_at"] is None
    assert by_id["101"]["published_at"] == "2024-02-02" and by_id["d.txt:0"]["published_at"] is None
    # pandas reads the directory as one table (the underscore files are skipped)
    import pandas as pd

    df = pd.read_parquet(out)
    assert len(df) == len(rows) and list(df["id"]) == [r["id"] for r in rows]

    # every bad row, with its reason
    errors = [json.loads(line) for line in first_run["errors"].splitlines()]
    assert {e["id"]: e["reason"] for e in errors} == inputs["bad"]
    assert {(e["file"], e["row"]) for e in errors if e["id"] == "j-int"} == {("a.jsonl", 11)}
    assert summary.labelled == len(rows) == summary.total_labelled
    assert summary.bad == len(inputs["bad"]) == summary.total_bad
    assert summary.rows == len(rows) + len(inputs["bad"])
    assert summary.shards_skipped == 0 and summary.shards_written == len(list(out.glob("part-*.parquet")))
    assert summary.shards_written == 3 + 2 + 2 + 4  # ceil(rows / 7) per file: 18, 11, 10, 22 rows
    assert summary.rows_per_s > 0 and summary.actors == 2
    text = summary.format()
    assert f"labelled {len(rows)} rows ({len(inputs['bad'])} bad)" in text and "0 skipped as done" in text
    saved = json.loads((out / "_summary.json").read_text(encoding="utf-8"))
    assert saved["labelled"] == len(rows) and saved["bad"] == len(inputs["bad"])
    # Ray's own log lines went to the log file, without Ray Data's progress reports
    ray_log = (out / "_label.log").read_text(encoding="utf-8")
    assert "streaming_executor" in ray_log and "Total Progress" not in ray_log


def test_resume_relabels_only_deleted_or_corrupted_shards(inputs: dict[str, Any], first_run: dict[str, Any],
                                                          tiny_model_dir: Path, tmp_path: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels"
    shutil.copytree(first_run["out"], out)
    parts = sorted(out.glob("part-*.parquet"))
    deleted, corrupted = parts[1], parts[7]
    deleted.unlink()
    corrupted.write_bytes(corrupted.read_bytes()[:50])  # truncated, as a disk-full copy would leave it
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts if p not in (deleted, corrupted)}

    summary = run_label(_cfg(inputs, out, tiny_model_dir))

    assert summary.shards_written == 2 and summary.shards_skipped == len(parts) - 2
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*.parquet")
            if p.name in kept} == kept
    _same_output(_read_output(out), first_run["rows"])
    assert (out / "_errors.jsonl").read_text(encoding="utf-8") == first_run["errors"]
    assert summary.total_labelled == first_run["summary"].total_labelled
    captured = capfd.readouterr()
    assert "streaming_executor" not in captured.err + captured.out  # Ray's noise is in the log file
    assert "label" in captured.err  # the progress bar

    # nothing left to do: a third run labels nothing
    again = run_label(_cfg(inputs, out, tiny_model_dir))
    assert again.shards_written == 0 and again.rows == 0 and again.shards_skipped == len(parts)


def test_onnx_backend_is_passed_to_the_actors(inputs: dict[str, Any], tiny_model_dir: Path, ray_local: Any,
                                              tmp_path: Path) -> None:
    """backend=onnx reaches Predictor.from_dir in the actors: rows say +onnx and stay within ONNX's tolerance
    of torch (the driver exported the graph before the actors started)."""
    from classifier.predict import Predictor

    if "backend" not in __import__("inspect").signature(Predictor.from_dir).parameters:
        pytest.skip("this Predictor has no backends")
    txt = inputs["files"][3]
    summary = run_label(_cfg(inputs, tmp_path / "onnx", tiny_model_dir, inputs=[txt], passthrough=[],
                             backend="onnx", rows_per_shard=50))
    rows = _read_output(tmp_path / "onnx")
    expected = _expected_predictions(tiny_model_dir, {k: v for k, v in inputs["expected"].items()
                                                      if k.startswith("d.txt:")})
    assert [r["id"] for r in rows] == list(expected)
    assert summary.model_version.endswith("+onnx") and {r["model_version"] for r in rows} == {
        summary.model_version}
    for r in rows:
        assert max(abs(r[f"p_{n}"] - expected[r["id"]]["probabilities"][n]) for n in LABELS) <= 1e-4


def test_other_settings_are_refused_saying_what_differs(inputs: dict[str, Any], first_run: dict[str, Any],
                                                        tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    shutil.copytree(first_run["out"], out)
    with pytest.raises(ConfigError) as e:
        run_label(_cfg(inputs, out, tiny_model_dir, rows_per_shard=5, passthrough=[]))
    msg = str(e.value)
    assert "rows_per_shard: 7 -> 5" in msg and "passthrough: ['published_at'] -> []" in msg
    assert "overwrite=true" in msg
    txt = Path(inputs["files"][3])
    st = txt.stat()
    txt.touch()  # an input changed since
    try:
        with pytest.raises(ConfigError) as e:
            run_label(_cfg(inputs, out, tiny_model_dir))
    finally:
        os.utime(txt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "d.txt changed (version" in str(e.value)


def test_resume_after_sigkill(tiny_model_dir: Path, ray_local: Any, tmp_path: Path) -> None:
    """Kill a `python -m labeling` driver (joined to the test's Ray through RAY_ADDRESS) after its first
    shards, run again: finished shards are kept as they are and the output is complete and equals a clean
    run's."""
    import ray

    shared = Path(os.environ.get("FINSENT_SHARED", REPO.parent / "shared"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_docs(shared, 1000)) + "\n", encoding="utf-8")
    settings = [f"inputs={corpus}", f"model_dir={tiny_model_dir}", "rows_per_shard=50", "batch_size=2",
                "concurrency=1", "output_format=jsonl", "backend=torch"]
    killed = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "labeling", *settings, f"output_dir={killed}"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((killed / "_shards").glob("*.json"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (killed / "_summary.json").exists()
    done = sorted((killed / "_shards").glob("*.json"))
    assert 2 <= len(done) < 20
    stats = {}
    for rec in done:
        data = killed / rec.name.removesuffix(".json")
        stats[data.name] = (data.stat().st_ino, data.stat().st_mtime_ns)

    resumed = run_label(LabelConfig(**dict(s.split("=", 1) for s in settings), output_dir=str(killed)))
    assert resumed.shards_skipped == len(done) and resumed.shards_written == 20 - len(done)
    assert resumed.total_labelled == 1000
    for name, st in stats.items():
        p = killed / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == st, f"{name} was rewritten"

    # what a clean run writes (test_output_matches_predictor_...): the Predictor's output, in input order
    lines = corpus.read_text(encoding="utf-8").splitlines()
    expected = _expected_predictions(tiny_model_dir, {f"corpus.txt:{i}": t for i, t in enumerate(lines)})
    clean = [{"id": i, "label": e["label"], "score": e["score"],
              **{f"p_{k}": v for k, v in e["probabilities"].items()}, "model_version": e["model_version"]}
             for i, e in expected.items()]
    _same_output(_read_output(killed, "jsonl"), clean)
    assert (killed / "_errors.jsonl").read_text(encoding="utf-8") == ""
