"""Domain pretraining: word-aware encoding, packing, whole-word masking, the MLM head, a real 2-worker Ray
Train run on a tiny model (loss falls, files, resume) and the exported encoder as a fine-tuning base."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier.errors import ConfigError
from classifier.testing import TINY_LEXICON
from training.mlm import (
    IGNORE,
    WholeWordMaskCollator,
    WordPieces,
    batch_generator,
    build_mlm_model,
    encode_words,
    load_tokenizer,
    pack_windows,
    save_encoder_dir,
)
from training.pretrain import PretrainConfig, PretrainRecipe, run_training

REPO = Path(__file__).resolve().parents[2]
TEXT = "受利好消息影响，公司股价大涨，管理层宣布回购股份；此前因违约传闻暴跌。"
#: two sentences, repeated: the tiny model can learn them in ~100 steps
SENTENCES = ["公司股价大涨，净利润同比增长三成，利好消息不断。", "央行宣布降准，市场流动性改善，银行板块上涨。"]


def _groups(starts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(starts.long(), dim=-1)


# ------------------------------------------------------------------------------------------------ encoding
def test_encode_words_matches_the_tokenizer_and_marks_word_starts(tiny_base_dir: Path) -> None:
    tok = load_tokenizer(tiny_base_dir, extra_words=TINY_LEXICON, max_len=64)
    texts = [TEXT, "ABC公司 2023年 亏损扩大", "今日无消息"]
    encoded = encode_words(tok, texts)
    assert [e.ids.tolist() for e in encoded] == tok.encode(texts)  # exactly what fine-tuning sees
    pieces = tok.convert_ids_to_tokens(encoded[0].ids.tolist())
    flags = dict(zip(pieces, encoded[0].starts.tolist(), strict=False))
    assert flags["利好"] and flags["大涨"]  # compound tokens: one piece, one word
    i = pieces.index("股")
    assert pieces[i + 1] == "价" and encoded[0].starts[i] and not encoded[0].starts[i + 1]  # jieba word 股价
    # a Latin word split by WordPiece is one unit
    assert encoded[1].starts[:3].tolist() == [True, False, False]


def test_pack_windows_chunks_long_documents_and_packs_short_ones() -> None:
    rng = np.random.default_rng(0)
    long_doc = WordPieces(np.arange(100, 400, dtype=np.int32), rng.random(300) < 0.6)
    long_doc.starts[0] = True
    short = [WordPieces(np.asarray([7, 8, 9], dtype=np.int32), np.asarray([True, False, True])) for _ in range(5)]
    windows = pack_windows([long_doc, *short], max_len=64, cls_id=2, sep_id=3)
    assert all(len(w.ids) <= 64 and w.ids[0] == 2 and w.ids[-1] == 3 for w in windows)
    body = np.concatenate([w.ids[1:-1] if w.ids[-2] != 3 else w.ids[1:-1] for w in windows])
    kept = body[body != 3]
    assert kept[:300].tolist() == list(range(100, 400))  # every piece of the long doc, in order
    assert len(kept) == 300 + 15  # nothing dropped
    assert len(windows) == 6  # 300 + 5·3 pieces + separators in windows of 62
    last = windows[-1].ids.tolist()
    assert last.count(7) >= 2  # short documents share a window
    # cuts land on word starts where one is near: no window starts mid-word
    assert all(w.starts[1] for w in windows)


# ------------------------------------------------------------------------------------------------ masking
def test_whole_word_masking_masks_all_pieces_of_a_lexicon_word_and_never_specials(tiny_base_dir: Path) -> None:
    # lexicon words in the segmenter but NOT as compound tokens: 利好 / 大涨 / 回购 ... stay two pieces each
    tok = load_tokenizer(tiny_base_dir, extra_words=TINY_LEXICON, max_len=64, compound_tokens=False)
    assert tok.compound_words == []
    windows = pack_windows(encode_words(tok, [TEXT]), 64, tok.cls_id, tok.sep_id)
    assert len(windows) == 1
    window = windows[0]
    pieces = tok.convert_ids_to_tokens(window.ids.tolist())
    lexicon_spans = []
    for word in ("利好", "大涨", "回购", "违约", "暴跌"):
        i = next(k for k in range(len(pieces) - 1) if pieces[k] + pieces[k + 1] == word)
        assert window.starts[i] and not window.starts[i + 1]  # one masking unit of two pieces
        lexicon_spans.append((i, i + 1))

    collator = WholeWordMaskCollator(tok, mlm_probability=0.5)
    batch = collator([window] * 8, batch_generator(1234, 0))
    ids = torch.as_tensor(window.ids, dtype=torch.long)
    groups = _groups(torch.as_tensor(window.starts))
    special = torch.isin(ids, torch.tensor(sorted(tok.special_ids)))
    masked_lexicon_words = 0
    for row in range(8):
        chosen = batch["labels"][row] != IGNORE
        assert not chosen[special].any()  # [CLS]/[SEP] never chosen ...
        assert torch.equal(batch["input_ids"][row][special], ids[special])  # ... nor changed
        assert torch.equal(batch["labels"][row][chosen], ids[chosen])
        for g in groups.unique():
            in_word = (groups == g) & ~special
            assert chosen[in_word].all() or not chosen[in_word].any()  # all pieces of a word, or none
            if chosen[in_word].any():  # one fate per word: all [MASK] or none
                is_mask = batch["input_ids"][row][in_word] == tok.mask_id
                assert is_mask.all() or not is_mask.any()
        for a, b in lexicon_spans:
            assert bool(chosen[a]) == bool(chosen[b])
            masked_lexicon_words += int(chosen[a])
    assert masked_lexicon_words > 0  # the fixed seed does mask lexicon words


def test_masking_rates_are_15_percent_of_words_and_80_10_10(tiny_base_dir: Path) -> None:
    tok = load_tokenizer(tiny_base_dir, extra_words=TINY_LEXICON, max_len=128)
    docs = [s * 4 for s in SENTENCES] * 100
    windows = pack_windows(encode_words(tok, docs), 128, tok.cls_id, tok.sep_id)
    collator = WholeWordMaskCollator(tok)
    fates: Counter[str] = Counter()
    words = chosen_words = 0
    for start in range(0, len(windows), 32):
        chunk = windows[start : start + 32]
        batch = collator(chunk, batch_generator(0, start))
        ids, _, starts = collator.pad(chunk)
        groups = _groups(starts)
        maskable = batch["attention_mask"].bool() & ~torch.isin(ids, collator.special)
        for row in range(len(chunk)):
            g = groups[row][maskable[row]]
            words += g.unique().numel()
            for w in g.unique():
                sel = (groups[row] == w) & maskable[row]
                if (batch["labels"][row][sel] != IGNORE).all():
                    chosen_words += 1
                    now = batch["input_ids"][row][sel]
                    fates["mask" if (now == tok.mask_id).all() else "keep" if torch.equal(now, ids[row][sel])
                          else "random"] += 1
    assert chosen_words / words == pytest.approx(0.15, abs=0.01)
    total = sum(fates.values())
    assert fates["mask"] / total == pytest.approx(0.8, abs=0.03)
    assert fates["random"] / total == pytest.approx(0.1, abs=0.03)
    assert fates["keep"] / total == pytest.approx(0.1, abs=0.03)


# ------------------------------------------------------------------------------------------------ MLM head
def test_mlm_head_is_added_tied_and_reloaded(tiny_base_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_base_dir, extra_words=TINY_LEXICON, max_len=32)
    model, head_loaded = build_mlm_model(tiny_base_dir, tok)
    assert not head_loaded  # the base has no MLM head: one was added
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is emb  # decoder tied to the word embeddings
    assert emb.shape[0] == tok.vocab_size == tok.compound_base_id + len(TINY_LEXICON)
    w = TINY_LEXICON[0]
    assert torch.allclose(emb[tok.compound_ids[w]], emb[tok.compound_pieces[w]].mean(0))  # mean of its pieces
    assert torch.equal(model.cls.predictions.transform.LayerNorm.weight,
                       torch.ones_like(model.cls.predictions.transform.LayerNorm.weight))

    out = save_encoder_dir(tmp_path / "enc", model, tok)
    tok2 = load_tokenizer(out, extra_words=(*TINY_LEXICON, "新增词语"), max_len=32)
    assert tok2.compound_ids == {**tok.compound_ids, "新增词语": tok.vocab_size}  # ids kept, new one appended
    model2, head_loaded2 = build_mlm_model(out, tok2)
    assert head_loaded2  # a checkpoint with a head keeps it
    assert torch.equal(model2.cls.predictions.transform.dense.weight, model.cls.predictions.transform.dense.weight)
    assert torch.equal(model2.get_input_embeddings().weight[: tok.vocab_size], emb)
    assert model2.get_output_embeddings().weight is model2.get_input_embeddings().weight


def test_recipe_freezes_layers_and_applies_l2sp(tiny_base_dir: Path, tmp_path: Path) -> None:
    """One process, no Ray: freeze_layers keeps the embeddings fixed; L2-SP is reported and pulls back."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES * 40) + "\n", encoding="utf-8")
    cfg = PretrainConfig(corpus_files=[str(corpus)], base_model=str(tiny_base_dir), lexicon_files=[],
                         extra_words=list(TINY_LEXICON), max_len=32, batch_size=8, num_workers=1, max_steps=6,
                         lr=5e-3, heldout_fraction=0.05, l2sp=0.1, freeze_layers=1, eval_at_start=False,
                         progress=False)
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    emb0 = recipe.model.get_input_embeddings().weight.detach().clone()
    layer1 = recipe.model.bert.encoder.layer[1].output.dense.weight.detach().clone()
    reports: list[dict] = []
    run_training(recipe, reports.append, show_progress=False)
    assert recipe.progress["global_step"] == 6 and len(reports) == 1
    assert torch.equal(recipe.model.get_input_embeddings().weight, emb0)  # frozen
    assert not torch.equal(recipe.model.bert.encoder.layer[1].output.dense.weight, layer1)  # trained
    assert reports[0]["l2sp_penalty"] > 0
    assert recipe.l2sp is not None and all(not k.startswith("cls.") for k in recipe.l2sp.anchor)


def test_head_warmup_trains_only_the_new_head_first(tiny_base_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES * 40) + "\n", encoding="utf-8")
    cfg = PretrainConfig(corpus_files=[str(corpus)], base_model=str(tiny_base_dir), lexicon_files=[],
                         extra_words=list(TINY_LEXICON), max_len=32, batch_size=8, num_workers=1, max_steps=4,
                         lr=5e-3, heldout_fraction=0.05, head_warmup_steps=3, eval_at_start=False, progress=False)
    recipe = PretrainRecipe(cfg)
    recipe.setup()
    enc0 = {k: v.detach().clone() for k, v in recipe.model.bert.named_parameters()}
    head0 = recipe.model.cls.predictions.transform.dense.weight.detach().clone()
    order = recipe.epoch_order(0)
    from training.pretrain import Stats

    for i in range(3):
        recipe.train_step(0, i, order, Stats())
    assert all(torch.equal(v, enc0[k]) for k, v in recipe.model.bert.named_parameters())  # encoder untouched
    assert not torch.equal(recipe.model.cls.predictions.transform.dense.weight, head0)  # head trained
    recipe.train_step(0, 3, order, Stats())
    assert not torch.equal(recipe.model.bert.encoder.layer[0].output.dense.weight,
                           enc0["encoder.layer.0.output.dense.weight"])  # then the encoder trains too


# ------------------------------------------------------------------------------------------------ config
def test_shipped_config_loads_and_bad_values_name_the_setting() -> None:
    from classifier.config import load_config

    cfg = load_config(PretrainConfig, REPO / "training" / "configs" / "pretrain.yaml")
    assert cfg.mlm_probability == 0.15 and cfg.max_len >= 64
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(PretrainConfig, None, ["batch_size=33", "num_workers=2"])
    with pytest.raises(ConfigError, match="mask_prob"):
        PretrainConfig(mask_prob=0.95, random_prob=0.1)
    with pytest.raises(ConfigError, match="l2sp"):
        load_config(PretrainConfig, None, ["l2sp=-1"])


# ------------------------------------------------------------------------------------------------ Ray Train
@pytest.fixture(scope="module")
def pretrained(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory, ray_local) -> dict:
    """A real 2-worker Ray Train run: tiny BERT, two sentences repeated 600 times, 2 epochs."""
    from training.pretrain import run_pretrain

    root = tmp_path_factory.mktemp("pretrain")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 600) + "\n", encoding="utf-8")
    cfg = PretrainConfig(corpus_files=[str(corpus)], base_model=str(tiny_base_dir), lexicon_files=[],
                         extra_words=list(TINY_LEXICON), max_len=32, batch_size=16, num_workers=2, epochs=2,
                         lr=1e-2, warmup_ratio=0.0, heldout_fraction=0.05, output_dir=str(root / "enc"),
                         storage_path=str(root / "ray"), run_name="pt-test", use_gpu=False, progress=False)
    out = run_pretrain(cfg)
    return {"cfg": cfg, "out": out, "report": json.loads((out / "pretrain_report.json").read_text())}


#: the tiny model's held-out MLM loss starts at ln(21k pieces) ≈ 9.96 and must fall below this in 2 epochs
#: (2 × ~54 steps); measured 3.45 (a 2-layer, hidden-32 random BERT first learns the piece frequencies, context later)
LOSS_BOUND = 4.0


@pytest.mark.slow
def test_mlm_loss_falls_on_a_small_repeated_corpus(pretrained: dict) -> None:
    rep = pretrained["report"]
    hist = rep["history"]
    assert hist[0]["step"] == 0 and hist[0]["heldout_loss"] == pytest.approx(np.log(21072), abs=0.3)
    steps_per_epoch = rep["data"]["steps_per_epoch"]
    assert steps_per_epoch >= 40 and rep["steps"] == 2 * steps_per_epoch
    assert [h["step"] for h in hist[1:]] == [steps_per_epoch, 2 * steps_per_epoch]  # one point per epoch
    assert hist[-1]["heldout_loss"] < LOSS_BOUND
    assert hist[-1]["heldout_accuracy"] > 0.05 and hist[0]["heldout_accuracy"] < 0.01
    assert hist[-1]["train_loss"] < hist[1]["train_loss"]


@pytest.mark.slow
def test_output_is_a_complete_encoder_directory(pretrained: dict) -> None:
    out = pretrained["out"]
    for name in ("config.json", "model.safetensors", "compound_tokens.txt", "jieba_userdict.txt", "tokenizer.json",
                 "pretrain_report.json", "pretrain_curves.png", "run.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForMaskedLM"] and "finsent" not in cfg
    assert cfg["finsent_pretrain"]["compound_base_id"] == 21058
    assert cfg["vocab_size"] == 21058 + len(TINY_LEXICON)
    assert (out / "pretrain_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_pretrained_dir_loads_as_a_finetuning_base(pretrained: dict) -> None:
    from safetensors.torch import load_file

    from classifier.labels import DEFAULT_LABELS
    from classifier.modeling import build_classifier, load_encoder

    out = pretrained["out"]
    state = load_file(str(out / "model.safetensors"))
    model, tok = build_classifier(out, DEFAULT_LABELS, extra_words=TINY_LEXICON)
    enc = model.encoder
    # the encoder weights are the pretrained ones ...
    assert torch.equal(enc.encoder.layer[1].output.dense.weight, state["bert.encoder.layer.1.output.dense.weight"])
    rows = state["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(enc.embeddings.word_embeddings.weight[: rows.shape[0]], rows)
    # ... and differ from the base's (training happened)
    base = load_encoder(pretrained["cfg"].base_model)
    assert not torch.equal(base.encoder.layer[1].output.dense.weight, enc.encoder.layer[1].output.dense.weight)
    logits = model(**tok(["公司股价大涨"]))
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_finetuning_reuses_the_pretrained_compound_embeddings(pretrained: dict) -> None:
    from classifier.labels import DEFAULT_LABELS
    from classifier.modeling import build_classifier

    out = pretrained["out"]
    pre_tok = load_tokenizer(out, max_len=32)
    model, tok = build_classifier(out, DEFAULT_LABELS, extra_words=TINY_LEXICON)
    assert tok.compound_ids == pre_tok.compound_ids
    assert model.encoder.embeddings.word_embeddings.weight.shape[0] == pre_tok.vocab_size


@pytest.mark.slow
def test_resume_continues_from_the_latest_checkpoint(pretrained: dict) -> None:
    from classifier.config import replace
    from training.pretrain import run_pretrain

    first = pretrained["report"]
    cfg = replace(pretrained["cfg"], epochs=3, resume=True, run_name=None)
    out = run_pretrain(cfg)
    rep = json.loads((out / "pretrain_report.json").read_text())
    spe = first["data"]["steps_per_epoch"]
    assert rep["steps"] == 3 * spe
    assert [h["step"] for h in rep["history"]] == [0, spe, 2 * spe, 3 * spe]  # earlier points kept, no restart
    assert rep["history"][:3] == first["history"]
    assert rep["history"][-1]["heldout_loss"] <= first["history"][-1]["heldout_loss"] + 0.1
