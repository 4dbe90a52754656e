from pathlib import Path

import pytest
import torch

from classifier.errors import ConfigError, ModelDirError
from classifier.modeling import build_classifier, load_encoder
from classifier.tokenization import FinsentTokenizer, TruncationConfig


@pytest.fixture(scope="module")
def tiny_tok(tiny_base_dir: Path) -> FinsentTokenizer:
    return FinsentTokenizer.from_base(tiny_base_dir, extra_words=["利好", "涨停", "股"])


def test_compound_word_becomes_one_id_wordpiece(tiny_tok: FinsentTokenizer, tiny_base_dir: Path) -> None:
    base = FinsentTokenizer.from_base(tiny_base_dir)  # no compounds
    assert base.convert_ids_to_tokens(base.encode(["重大利好"])[0]) == ["重", "大", "利", "好"]
    ids = tiny_tok.encode(["重大利好"])[0]
    assert tiny_tok.convert_ids_to_tokens(ids) == ["重", "大", "利好"]
    assert ids[-1] == tiny_tok.compound_ids["利好"] == tiny_tok.compound_base_id  # first compound, first new row
    assert "股" not in tiny_tok.compound_ids  # a single piece already: no compound needed
    assert tiny_tok.compound_pieces["利好"] == base.encode(["利好"])[0]


def test_compound_embedding_is_mean_of_pieces(tiny_base_dir: Path) -> None:
    model, tok = build_classifier(tiny_base_dir, ["a", "b", "c"], extra_words=["利好", "涨停"])
    base_emb = load_encoder(tiny_base_dir).get_input_embeddings().weight
    emb = model.word_embeddings.weight
    assert emb.shape[0] == tok.vocab_size == base_emb.shape[0] + 2
    for word in ("利好", "涨停"):
        pieces = tok.compound_pieces[word]
        assert len(pieces) == 2
        torch.testing.assert_close(emb[tok.compound_ids[word]], base_emb[pieces].mean(0), rtol=0, atol=1e-7)
    torch.testing.assert_close(emb[: base_emb.shape[0]], base_emb)  # old rows untouched


def test_sentencepiece_compounds_on_default_base(default_base_model: Path) -> None:
    tok = FinsentTokenizer.from_base(default_base_model, extra_words=["利好", "大涨"])
    toks = tok.convert_ids_to_tokens(tok.encode(["今天股市大涨，利好消息"])[0])
    # run after a compound is tokenized as mid-text (no '▁' word-start marker)
    assert toks == ["▁今天", "股市", "大涨", ",", "利好", "消息"]
    plain = tok.hf.convert_ids_to_tokens(tok.hf("利好", add_special_tokens=False)["input_ids"])
    assert plain == ["▁", "利", "好"]
    assert tok.convert_ids_to_tokens(tok.compound_pieces["利好"]) == ["利", "好"]


def test_head_tail_truncation_keeps_first_and_last(tiny_tok: FinsentTokenizer) -> None:
    tok = FinsentTokenizer(tiny_tok.hf, [], tiny_tok.compound_base_id, tiny_tok.segmenter,
                           TruncationConfig(max_len=12, head_tokens=3))
    ids = list(range(1000, 1020))
    out = tok.truncate(ids)
    assert out == [tok.cls_id, 1000, 1001, 1002, *range(1013, 1020), tok.sep_id]
    assert len(out) == 12
    assert tok.truncate([7, 8]) == [tok.cls_id, 7, 8, tok.sep_id]
    # default head = a quarter of the body: 128 + 382 for max_len 512
    assert TruncationConfig().head == 128 and TruncationConfig().body - TruncationConfig().head == 382


def test_sliding_windows_cover_everything(tiny_tok: FinsentTokenizer) -> None:
    tok = FinsentTokenizer(tiny_tok.hf, [], tiny_tok.compound_base_id, tiny_tok.segmenter,
                           TruncationConfig(max_len=10, strategy="sliding_window", window_stride=4))
    ids = list(range(100, 121))  # 21 pieces, body 8
    wins = tok.windows(ids)
    assert [w[1] for w in wins] == [100, 104, 108, 112, 113]
    assert all(len(w) == 10 and w[0] == tok.cls_id and w[-1] == tok.sep_id for w in wins)
    assert set().union(*(w[1:-1] for w in wins)) == set(ids)


def test_truncation_config_validation() -> None:
    with pytest.raises(ConfigError, match="head_tokens"):
        TruncationConfig(max_len=16, head_tokens=15)
    with pytest.raises(ConfigError, match="truncation"):
        TruncationConfig(strategy="middle")


def test_missing_base_dir_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="FINSENT_BASE_MODEL"):
        FinsentTokenizer.from_base(tmp_path / "nope")


def test_model_dir_as_base_reuses_its_compound_tokens(tiny_model_dir: Path) -> None:
    """A directory with compound tokens (a DAPT output or a finsent model) keeps their ids and trained rows;
    only words it lacks are appended and mean-initialised."""
    from classifier.modeldir import load_model_dir

    old_model, old_tok, _ = load_model_dir(tiny_model_dir)
    model, tok = build_classifier(tiny_model_dir, ["a", "b", "c"], extra_words=["利好", "净利润"])
    assert tok.compound_base_id == old_tok.compound_base_id
    for w, i in old_tok.compound_ids.items():
        assert tok.compound_ids[w] == i
    assert tok.compound_words[: len(old_tok.compound_words)] == old_tok.compound_words
    assert tok.compound_words[len(old_tok.compound_words):] == ["净利润"]
    emb, old_emb = model.word_embeddings.weight, old_model.word_embeddings.weight
    assert torch.equal(emb[: old_emb.shape[0]], old_emb)  # inherited rows untouched
    new = tok.compound_ids["净利润"]
    assert new == old_emb.shape[0]
    torch.testing.assert_close(emb[new], emb[tok.compound_pieces["净利润"]].mean(0), rtol=0, atol=1e-7)
