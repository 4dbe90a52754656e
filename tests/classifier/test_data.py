from pathlib import Path

import pytest

from classifier.data import read_examples
from classifier.errors import DataError


def write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_sep_format_reports_bad_lines_with_numbers(tmp_path: Path) -> None:
    f = write(
        tmp_path / "d.txt",
        "利多|||大涨\n"  # 1 ok
        "no separator here\n"  # 2
        "看涨|||unknown label\n"  # 3
        "利空|||   \n"  # 4 empty text
        "\n".encode()  # blank line: ignored
        + b"\xff\xfe|||bad utf8\n"  # 6
        + "其他|||ｆｕｌｌ　width  text\n".encode(),  # 7 ok, normalised
    )
    d = read_examples(f)
    assert [(e.label, e.text, e.line) for e in d.examples] == [("利多", "大涨", 1), ("其他", "full width text", 7)]
    assert [(b.line, b.reason.split(" ")[0]) for b in d.bad] == [(2, "no"), (3, "unknown"), (4, "empty"), (6, "invalid")]
    assert "unknown label '看涨'" in d.bad[1].reason
    assert str(d.bad[0]).startswith(f"{f}:2:")


def test_raise_mode_names_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "d.txt", "利多|||ok\n坏行\n".encode())
    with pytest.raises(DataError, match=r"d\.txt:2: no '\|\|\|' separator"):
        read_examples(f, on_error="raise")


def test_jsonl_and_csv(tmp_path: Path) -> None:
    j = write(tmp_path / "d.jsonl", '{"text": "利好消息", "label": "利多"}\n{"text": 1}\nnot json\n'.encode())
    d = read_examples(j)
    assert d.texts == ["利好消息"] and d.labels == ["利多"]
    assert [b.line for b in d.bad] == [2, 3]
    c = write(tmp_path / "d.csv", "text,label\n股价暴跌,利空\n平稳,其他\n".encode())
    d = read_examples(c)
    assert d.texts == ["股价暴跌", "平稳"] and d.labels == ["利空", "其他"]
    assert len(d.sha256[str(c)]) == 64


def test_configurable_labels(tmp_path: Path) -> None:
    f = write(tmp_path / "d.txt", "pos|||good\nneg|||bad\n利多|||x\n".encode())
    d = read_examples(f, labels=["neg", "pos"])
    assert d.labels == ["pos", "neg"] and len(d.bad) == 1


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_examples(tmp_path / "nope.txt")


def test_shared_sets_read_cleanly(shared_dir: Path) -> None:
    d = read_examples(shared_dir / "data" / "finfe" / "dev.txt")
    assert len(d) == 1331 and not d.bad
    assert d.label_counts() == {"其他": 288, "利多": 758, "利空": 285}


def test_shared_hint_says_how_to_set_the_shared_dir_inside_a_ray_job(monkeypatch) -> None:
    from classifier.paths import shared_hint

    monkeypatch.setenv("FINSENT_SHARED", "/data/shared")
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    assert shared_hint() == "$FINSENT_SHARED is /data/shared"
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    hint = shared_hint()
    assert hint.startswith("$FINSENT_SHARED is /data/shared; this runs as a Ray job")
    assert "export FINSENT_SHARED=" in hint and "--runtime-env-json" in hint
