"""Scores per length bucket, ECE in reports, and the long-text strategies (sentences, max_polar pooling)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from classifier.evaluation import evaluate_texts, format_scores, length_bucket, score, score_by_bucket
from classifier.predict import Predictor


def test_length_buckets_edges():
    assert [length_bucket(n) for n in (0, 128, 129, 512, 513)] == ["<=128", "<=128", "128-512", "128-512", ">512"]


def test_score_by_bucket_values():
    names = ["其他", "利多", "利空"]
    probs = torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]])
    gold = ["利多", "利空", "其他", "利空"]
    out = score_by_bucket(probs, gold, [10, 20, 300, 600], names)
    assert out["<=128"]["examples"] == 2 and out["<=128"]["accuracy"] == 0.5
    assert out["128-512"]["accuracy"] == 1.0 and out[">512"]["accuracy"] == 1.0
    m = score(probs, gold, names)
    assert m["accuracy"] == 0.75 and 0 <= m["ece"] <= 1 and m["nll"] > 0


def test_evaluate_texts_reports_buckets_and_ece(tiny_model_dir):
    p = Predictor.from_dir(tiny_model_dir, device="cpu")
    texts = ["公司业绩大涨", "股价暴跌" * 200]
    r = evaluate_texts(p, texts, ["利多", "利空"])
    assert set(r["by_length"]) == {"<=128", ">512"}
    assert r["n"] == 2 and "ECE" in format_scores("x", r)


def test_sentence_chunks_pack_whole_sentences(tiny_model_dir):
    p = Predictor.from_dir(tiny_model_dir, device="cpu")
    tok = p.tokenizer
    tok.truncation = dataclasses.replace(tok.truncation, max_len=16, strategy="sentences")
    text = "公司召开会议。股价大涨！董事会公告发布。业绩下滑？"
    chunks = tok.sentence_chunks(text)
    assert all(c[0] == tok.cls_id and c[-1] == tok.sep_id and len(c) <= 16 for c in chunks)
    body = [i for c in chunks for i in c[1:-1]]
    pieces = [i for s in ("公司召开会议。", "股价大涨！", "董事会公告发布。", "业绩下滑？") for i in tok.encode([s])[0]]
    assert body == pieces  # every piece exactly once, in order, split only between sentences
    assert len(chunks) >= 2


def test_max_polar_pooling_lets_the_strongest_input_speak(tiny_model_dir):
    p = Predictor.from_dir(tiny_model_dir, device="cpu")
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05], [0.3, 0.3, 0.4]])
    owner = [0, 0, 1, 1]
    p.tokenizer.truncation = dataclasses.replace(p.tokenizer.truncation, pooling="mean")
    assert torch.allclose(p.pool(probs, owner, 2), torch.tensor([[0.5, 0.4, 0.1], [0.6, 0.175, 0.225]]))
    p.tokenizer.truncation = dataclasses.replace(p.tokenizer.truncation, pooling="max_polar")
    assert torch.equal(p.pool(probs, owner, 2), probs[[1, 3]])
    with pytest.raises(Exception, match="pooling"):
        dataclasses.replace(p.tokenizer.truncation, pooling="median")


def test_strategies_agree_on_short_texts(tiny_model_dir):
    p = Predictor.from_dir(tiny_model_dir, device="cpu")
    texts = ["公司业绩大涨", "股价暴跌。债务违约"]
    base = p.predict_proba(texts)
    for strategy in ("sliding_window", "sentences"):
        for pooling in ("mean", "max_polar"):
            p.tokenizer.truncation = dataclasses.replace(p.tokenizer.truncation, strategy=strategy, pooling=pooling)
            got = p.predict_proba(texts)
            assert torch.allclose(got[0], base[0], atol=1e-6)  # one sentence: one input, same as head_tail
