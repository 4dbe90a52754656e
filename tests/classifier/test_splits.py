"""The test protocol: `finsent split` is seeded, stratified, reproducible byte for byte, and refuses leaks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from classifier.errors import DataError
from classifier.splits import SplitConfig, SplitSource, build_long_docs, make_split, stratified_cut

REPO = Path(__file__).resolve().parents[2]


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{lab}|||{text}\n" for lab, text in rows), encoding="utf-8")
    return path


def _rows(n: int, prefix: str) -> list[tuple[str, str]]:
    labels = ["其他", "利多", "利空"]
    return [(labels[i % 3], f"{prefix}第{i}条新闻，公司业绩{'增长' if i % 3 == 1 else '下滑' if i % 3 == 2 else '平稳'}。")
            for i in range(n)]


def _cfg(tmp_path: Path, **kw) -> SplitConfig:
    news = _write(tmp_path / "news.txt", _rows(300, "新闻"))
    posts = _write(tmp_path / "posts.txt", _rows(200, "帖子"))
    posts_dev = _write(tmp_path / "posts_dev.txt", _rows(30, "评论"))
    values = dict(sources={"posts": SplitSource(train=str(posts), dev=str(posts_dev)),
                           "news": SplitSource(train=str(news), long_docs=True)},
                  out_dir=str(tmp_path / "split"), long_docs_per_split=12, long_min_chars=200, long_max_chars=300)
    values.update(kw)
    return SplitConfig(**values)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.txt"))}


def test_split_is_stratified_and_reproducible_byte_for_byte(tmp_path):
    cfg = _cfg(tmp_path)
    manifest = make_split(cfg)
    out = tmp_path / "split"
    first = _digest(out)
    # news has no dev file: 10 % test, 10 % dev, per label (100 of each label -> 10 / 10 / 80)
    assert manifest["outputs"]["news/test.txt"]["labels"] == {"其他": 10, "利多": 10, "利空": 10}
    assert manifest["outputs"]["news/dev.txt"]["examples"] == 30
    assert manifest["outputs"]["news/train.txt"]["examples"] == 240
    # posts keep their own dev file whole and give 10 % of train to test
    assert manifest["outputs"]["posts/dev.txt"]["examples"] == 30
    assert manifest["outputs"]["posts/test.txt"]["examples"] == 21  # round(6.7) + round(6.7) + round(6.6)
    assert {k: v["sha256"] for k, v in manifest["outputs"].items()} == first
    # again, elsewhere: identical bytes
    make_split(cfg.model_copy(update={"out_dir": str(tmp_path / "again")}))
    assert _digest(tmp_path / "again") == first
    # another seed: another split
    make_split(cfg.model_copy(update={"out_dir": str(tmp_path / "seed2"), "seed": 2}))
    assert _digest(tmp_path / "seed2") != first
    # no text in two splits
    seen: dict[str, str] = {}
    for rel in first:
        if rel.endswith("_long.txt"):
            continue
        for line in (out / rel).read_text(encoding="utf-8").splitlines():
            text = line.split("|||", 1)[1]
            assert seen.setdefault(text, rel) == rel


def test_split_never_overwrites_unless_told(tmp_path):
    cfg = _cfg(tmp_path)
    make_split(cfg)
    with pytest.raises(DataError, match="overwrite=true"):
        make_split(cfg)
    make_split(cfg.model_copy(update={"overwrite": True}))


def test_split_refuses_a_dev_file_that_overlaps_train(tmp_path):
    cfg = _cfg(tmp_path)
    posts = Path(cfg.sources["posts"].train)
    dev = Path(cfg.sources["posts"].dev)
    leaked = posts.read_text(encoding="utf-8").splitlines()[7]
    dev.write_text(dev.read_text(encoding="utf-8") + leaked + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        make_split(cfg)
    assert f"{posts}:8" in str(e.value) and f"{dev}:31" in str(e.value) and "leak" in str(e.value)
    assert not (tmp_path / "split" / "split.json").exists()


def test_split_names_the_file_and_line_of_a_malformed_example(tmp_path):
    cfg = _cfg(tmp_path)
    news = Path(cfg.sources["news"].train)
    lines = news.read_text(encoding="utf-8").splitlines()
    lines[4] = "看涨|||未知标签的一行"
    news.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{news}:5: unknown label '看涨'"):
        make_split(cfg)


def test_split_refuses_conflicting_labels_and_keeps_duplicates_together(tmp_path):
    cfg = _cfg(tmp_path)
    news = Path(cfg.sources["news"].train)
    text = news.read_text(encoding="utf-8")
    news.write_text(text + "利多|||重复的一条新闻。\n" * 3, encoding="utf-8")
    manifest = make_split(cfg)
    holders = [rel for rel in manifest["outputs"] if not rel.endswith("_long.txt")
               and "重复的一条新闻" in (tmp_path / "split" / rel).read_text(encoding="utf-8")]
    assert len(holders) == 1
    news.write_text(text + "利多|||矛盾的一条新闻。\n利空|||矛盾的一条新闻。\n", encoding="utf-8")
    with pytest.raises(DataError, match="conflicting labels"):
        make_split(cfg.model_copy(update={"overwrite": True}))


def test_long_docs_hold_their_label_among_neutral_sentences():
    from classifier.data import Example

    ex = [Example(f"中性句子{i}，内容平淡无奇", "其他") for i in range(40)]
    ex += [Example(f"利好消息{i}，业绩大增", "利多") for i in range(5)]
    ex += [Example(f"利空消息{i}，业绩暴跌", "利空") for i in range(5)]
    docs = build_long_docs(ex, 30, seed=1, labels=["其他", "利多", "利空"], neutral="其他", min_chars=150, max_chars=200)
    assert [d[0] for d in docs[:3]] == ["其他", "利多", "利空"] and len(docs) == 30
    for label, text in docs:
        assert len(text) >= 150
        assert ("利好消息" in text) == (label == "利多") and ("利空消息" in text) == (label == "利空")
        assert text.count("中性句子") >= 3
    assert build_long_docs(ex, 30, 1, ["其他", "利多", "利空"], "其他", 150, 200) == docs


def test_stratified_cut_counts_per_label():
    from classifier.data import Example

    ex = [Example(f"t{i}", "a" if i < 50 else "b") for i in range(150)]
    test, dev, train = stratified_cut(ex, [0.1, 0.2], seed=0)
    assert sum(e.label == "a" for e in test) == 5 and sum(e.label == "b" for e in test) == 10
    assert sum(e.label == "a" for e in dev) == 10 and sum(e.label == "b" for e in dev) == 20
    assert len(train) == 105


def test_default_split_on_shared_data_matches_the_recorded_hashes(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FINSENT_SHARED", str(shared_dir))
    manifest = make_split(SplitConfig(out_dir=str(tmp_path / "split")))
    expected = json.loads((REPO / "training" / "configs" / "split.sha256.json").read_text(encoding="utf-8"))
    assert {k: v["sha256"] for k, v in manifest["inputs"].items()} == expected["inputs"]
    assert {k: v["sha256"] for k, v in manifest["outputs"].items()} == expected["outputs"]


def test_split_command_writes_and_prints(tmp_path, capsys):
    from finsent.cli import main

    cfg = _cfg(tmp_path)
    rc = main(["split", f"out_dir={tmp_path / 'cli'}", f"sources.news.train={cfg.sources['news'].train}",
               f"sources.posts.train={cfg.sources['posts'].train}", f"sources.posts.dev={cfg.sources['posts'].dev}",
               "long_docs_per_split=6", "long_min_chars=100", "long_max_chars=150"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "news/test.txt" in out and (tmp_path / "cli" / "split.json").is_file()
    assert main(["split", f"out_dir={tmp_path / 'cli'}"]) == 2  # exists: refused
