"""Tiny, randomly initialised checkpoints for tests and dry runs (no download, built in about a second).

The tiny base is a 2-layer BERT with hidden size 32 and a Chinese char-level WordPiece vocabulary (every CJK
unified ideograph, ASCII and common punctuation, like ``bert-base-chinese``), so tests exercise the WordPiece
path while the default base model exercises SentencePiece.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from classifier.labels import DEFAULT_LABELS

#: a few finance words that the tiny base splits into characters, so they become compound tokens
TINY_LEXICON: tuple[str, ...] = (
    "利好", "利空", "上涨", "下跌", "大涨", "暴跌", "涨停", "跌停", "增持", "减持", "盈利", "亏损", "回购", "违约",
)


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ascii_chars = [chr(c) for c in range(33, 127)]
    punct = list("，。、；：？！“”‘’（）《》【】…—·％")
    cjk = [chr(c) for c in range(0x4E00, 0x9FA6)]
    # WordPiece continuations so Latin words and numbers split into characters instead of [UNK]
    cont = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return list(dict.fromkeys(specials + ascii_chars + punct + cjk + cont))


def make_tiny_base_dir(path: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A Hugging Face BERT checkpoint directory with random weights and a char WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer.from_pretrained(str(out)).save_pretrained(str(out))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 2, max_position_embeddings=512, pad_token_id=0,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(str(out))
    return out


def make_tiny_model_dir(
    path: str | Path,
    seed: int = 0,
    labels: Sequence[str] = DEFAULT_LABELS,
    max_len: int = 64,
    name: str = "tiny",
    layers: int = 2,
) -> Path:
    """A complete finsent model directory (random weights, tiny lexicon as compound tokens; ``layers`` encoder
    layers)."""
    import torch

    from classifier.modeldir import ModelMeta, save_model_dir
    from classifier.modeling import build_classifier
    from classifier.tokenization import TruncationConfig

    out = Path(path)
    base = make_tiny_base_dir(out.parent / f"{out.name}-base", seed=seed, layers=layers)
    torch.manual_seed(seed)
    trunc = TruncationConfig(max_len=max_len)
    model, tok = build_classifier(base, labels, extra_words=TINY_LEXICON, truncation=trunc)
    meta = ModelMeta(labels=tuple(labels), base_model=str(base), truncation=trunc, name=name)
    return save_model_dir(out, model, tok, meta)
