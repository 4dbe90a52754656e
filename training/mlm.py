"""Masked-language-model components for domain-adaptive pretraining: corpus reading, word-aware encoding,
document packing, the whole-word-masking collator, the MLM head and the exported encoder directory.

Plain torch / numpy; nothing here knows about Ray (``training/pretrain.py`` drives these from ``train_func``).

Words. A document is normalised and segmented exactly as :class:`classifier.tokenization.FinsentTokenizer`
does for classification (jieba, HMM off, the finance lexicon as user dictionary); a lexicon word that the base
vocabulary splits is one compound token, everything else goes through the base tokenizer. Every piece is
tagged with whether it *starts* a jieba word, using the tokenizer's character offsets; a piece that straddles
a word boundary (SentencePiece merges across jieba words now and then) joins the words into one masking unit,
and a lone ``▁`` marker joins the piece after it.

Whole-word masking (Cui et al., Chinese BERT-wwm): per sequence ``max(1, round(p · words))`` words are chosen
(``p = 0.15``); each chosen word gets one fate for *all* its pieces: 80 % ``[MASK]``, 10 % random pieces, 10 %
unchanged; special tokens are never chosen. Masks are drawn per batch (dynamic masking) from a generator
seeded by (seed, epoch, rank, step), so a run is reproducible and a resumed run sees the same masks.

Packing. Documents (each followed by ``[SEP]``) are concatenated and cut into windows of ``max_len - 2`` pieces,
each cut moved back to a word start when one is near, and every window is wrapped as ``[CLS] … [SEP]``: long
documents are chunked, never truncated away, and short ones share windows (RoBERTa's FULL-SENTENCES).

Encoder directory (what :func:`save_encoder_dir` writes, the fine-tuning ``base_model``): a Hugging Face
``*ForMaskedLM`` checkpoint (``config.json`` + ``model.safetensors``, encoder under its ``base_model_prefix`` so
``AutoModel.from_pretrained`` loads it, MLM head under ``cls.``/``lm_head.`` so pretraining can continue from it),
the base tokenizer files, ``compound_tokens.txt`` and ``jieba_userdict.txt`` (the finsent tokenizer files) and a
``finsent_pretrain`` section in ``config.json`` whose ``compound_base_id`` says where the compound rows start.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classifier.errors import ConfigError, DataError, ModelDirError
from classifier.modeling import add_compound_embeddings
from classifier.paths import shared_hint
from classifier.text import Segmenter, normalize, read_lexicon
from classifier.tokenization import COMPOUND_FILE, FinsentTokenizer, TruncationConfig

log = logging.getLogger(__name__)

#: config.json section of an exported encoder directory
PRETRAIN_SECTION = "finsent_pretrain"
IGNORE = -100


# ------------------------------------------------------------------------------------------------ corpus
def read_corpus(files: Sequence[str | Path], max_chars: int = 0, max_docs: int = 0) -> list[str]:
    """Documents (one a line, blank lines skipped) of ``files`` in order; stop after ``max_docs`` documents or
    once ``max_chars`` characters are read (0 = no limit)."""
    docs: list[str] = []
    chars = 0
    for f in map(Path, files):
        if not f.is_file():
            raise DataError(f"corpus file {f} not found: set corpus_files=[...] to existing text files "
                            f"({shared_hint()})")
        with f.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                docs.append(line)
                chars += len(line)
                if (max_docs and len(docs) >= max_docs) or (max_chars and chars >= max_chars):
                    return docs
    if not docs:
        raise DataError(f"the corpus {list(map(str, files))} holds no text")
    return docs


def split_heldout(n_docs: int, fraction: float, max_docs: int, seed: int) -> tuple[list[int], list[int]]:
    """(train doc indices, held-out doc indices): a seeded random ``fraction`` of the documents (at most
    ``max_docs``, at least one when ``fraction > 0``) is held out for evaluation."""
    idx = list(range(n_docs))
    random.Random(seed).shuffle(idx)
    n_held = min(max_docs, max(1, round(n_docs * fraction))) if fraction > 0 else 0
    if n_held >= n_docs:
        raise DataError(f"the corpus has {n_docs} documents: too few to hold out {n_held} and still train")
    return sorted(idx[n_held:]), sorted(idx[:n_held])


# ------------------------------------------------------------------------------------------------ tokenizer
def load_tokenizer(base_dir: str | Path, lexicon_paths: Sequence[str | Path] = (), extra_words: Sequence[str] = (),
                   max_len: int = 512, compound_tokens: bool = True) -> FinsentTokenizer:
    """The finsent tokenizer to pretrain ``base_dir`` with.

    - ``base_dir`` is an encoder directory exported by pretraining (it has ``compound_tokens.txt``): keep its
      compound tokens and ids, and append the lexicon words it lacks (continued pretraining).
    - otherwise, with ``compound_tokens``: :meth:`FinsentTokenizer.from_base` (multi-piece lexicon words become
      compound tokens, numbered from the base vocabulary size), exactly as fine-tuning builds it.
    - otherwise: the base tokenizer with the lexicon only in the segmenter (whole-word masking still knows the
      lexicon words, but they stay several pieces).
    """
    from transformers import AutoConfig, AutoTokenizer

    base = Path(base_dir)
    trunc = TruncationConfig(max_len=max_len)
    if compound_tokens or (base / COMPOUND_FILE).is_file():  # the core keeps an encoder dir's compound ids
        return FinsentTokenizer.from_base(base, lexicon_paths, extra_words, trunc)
    words = [w for p in lexicon_paths for w in read_lexicon(p)] + [normalize(w) for w in extra_words]
    words = [w for w in dict.fromkeys(words) if w and " " not in w]
    hf = AutoTokenizer.from_pretrained(str(base))
    base_id = max(int(AutoConfig.from_pretrained(str(base)).vocab_size), len(hf))
    return FinsentTokenizer(hf, [], base_id, Segmenter((w, None) for w in words), trunc)


# ------------------------------------------------------------------------------------------------ encoding
@dataclass
class WordPieces:
    """One document: piece ids and, per piece, whether it starts a masking unit (a jieba word)."""

    ids: np.ndarray  # int32
    starts: np.ndarray  # bool


def encode_words(tokenizer: FinsentTokenizer, texts: Sequence[str]) -> list[WordPieces]:
    """Piece ids (identical to ``tokenizer.encode(texts)``) with word-start flags, for whole-word masking.

    Mirrors :meth:`FinsentTokenizer.encode` (the first non-compound run of a text with the ``▁`` marker, later
    runs without) but keeps character offsets, to map pieces back to jieba words.
    """
    docs: list[tuple[str, list[tuple[int, int, bool]], set[int]]] = []
    first_runs: list[str] = []
    cont_runs: list[str] = []
    for text in texts:
        norm = normalize(text)
        runs: list[tuple[int, int, bool]] = []
        word_starts: set[int] = set()
        run_start: int | None = None
        for word, s, e in tokenizer.segmenter.spans(norm):
            word_starts.add(s)
            if word in tokenizer.compound_ids:
                if run_start is not None:
                    runs.append((run_start, s, False))
                    run_start = None
                runs.append((s, e, True))
            elif run_start is None:
                run_start = s
        if run_start is not None:
            runs.append((run_start, len(norm), False))
        for j, (s, e, is_compound) in enumerate(runs):
            if not is_compound:
                (first_runs if j == 0 else cont_runs).append(norm[s:e])
        docs.append((norm, runs, word_starts))
    # the tokenizer's own two Rust tokenizers (with / without the word-start marker); see FinsentTokenizer.encode
    first = iter(tokenizer._first.encode_batch(first_runs, add_special_tokens=False)) if first_runs else iter(())
    cont = iter(tokenizer._cont.encode_batch(cont_runs, add_special_tokens=False)) if cont_runs else iter(())
    out: list[WordPieces] = []
    for norm, runs, word_starts in docs:
        ids: list[int] = []
        starts: list[bool] = []
        prev = -1
        for j, (s, e, is_compound) in enumerate(runs):
            if is_compound:
                ids.append(tokenizer.compound_ids[norm[s:e]])
                starts.append(True)
                prev = s
                continue
            enc = next(first if j == 0 else cont)
            for pid, (a, _b) in zip(enc.ids, enc.offsets, strict=True):
                pos = s + a
                # a piece starts a unit when it starts a jieba word and does not share its start with the
                # piece before (a lone "▁" marker and the piece after it have the same offset)
                starts.append(not ids or (pos in word_starts and pos != prev))
                ids.append(pid)
                prev = pos
        out.append(WordPieces(np.asarray(ids, dtype=np.int32), np.asarray(starts, dtype=bool)))
    return out


def pack_windows(docs: Iterable[WordPieces], max_len: int, cls_id: int, sep_id: int, max_backoff: int = 16
                 ) -> list[WordPieces]:
    """Concatenate documents (each followed by ``[SEP]``) and cut ``[CLS] … [SEP]`` windows of at most
    ``max_len`` pieces. A cut moves back (at most ``max_backoff`` pieces) to the nearest word start so words
    are rarely split; no piece is dropped."""
    if max_len < 8:
        raise ConfigError(f"max_len: must be at least 8, got {max_len}")
    parts_ids: list[np.ndarray] = []
    parts_st: list[np.ndarray] = []
    sep_i = np.asarray([sep_id], dtype=np.int32)
    true1 = np.asarray([True])
    for d in docs:
        if len(d.ids) == 0:
            continue
        parts_ids += [d.ids, sep_i]
        parts_st += [d.starts, true1]
    if not parts_ids:
        return []
    ids = np.concatenate(parts_ids)
    st = np.concatenate(parts_st)
    body = max_len - 2
    windows: list[WordPieces] = []
    s, n = 0, len(ids)
    while s < n:
        if ids[s] == sep_id:  # a window never starts with a document separator
            s += 1
            continue
        e = min(s + body, n)
        if e < n and not st[e]:
            back = next((k for k in range(e, max(s, e - max_backoff), -1) if st[k]), None)
            if back is not None and back > s:
                e = back
        w_ids, w_st = ids[s:e], st[s:e]
        tail = [] if w_ids[-1] == sep_id else [sep_id]
        windows.append(WordPieces(
            np.concatenate([[cls_id], w_ids, tail]).astype(np.int32),
            np.concatenate([[True], w_st, [True] * len(tail)]).astype(bool),
        ))
        s = e
    return windows


# ------------------------------------------------------------------------------------------------ masking
class WholeWordMaskCollator:
    """Pads windows and applies whole-word masking → ``{input_ids, attention_mask, labels}`` (labels are
    ``-100`` except at the chosen words' pieces, which hold the original ids)."""

    def __init__(self, tokenizer: FinsentTokenizer, mlm_probability: float = 0.15, mask_prob: float = 0.8,
                 random_prob: float = 0.1) -> None:
        if not 0.0 < mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability: must be in (0, 1), got {mlm_probability}")
        if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1.0:
            raise ConfigError(f"mask_prob + random_prob: each >= 0 and together <= 1, got {mask_prob} + {random_prob}")
        if tokenizer.mask_id is None:
            raise ModelDirError("the base tokenizer has no mask token: MLM pretraining needs one ([MASK] / <mask>)")
        self.p = mlm_probability
        self.mask_prob = mask_prob
        self.random_prob = random_prob
        self.mask_id = int(tokenizer.mask_id)
        self.pad_id = int(tokenizer.pad_id)
        self.special = torch.tensor(sorted(tokenizer.special_ids | {tokenizer.pad_id, tokenizer.cls_id,
                                                                   tokenizer.sep_id}), dtype=torch.long)
        allowed = torch.ones(tokenizer.vocab_size, dtype=torch.bool)
        allowed[self.special[self.special < tokenizer.vocab_size]] = False
        self.random_pool = torch.nonzero(allowed).squeeze(1)  # random replacements: any non-special piece

    def pad(self, windows: Sequence[WordPieces]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(w.ids) for w in windows)
        ids = torch.full((len(windows), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(windows), width), dtype=torch.long)
        starts = torch.ones((len(windows), width), dtype=torch.bool)
        for i, w in enumerate(windows):
            n = len(w.ids)
            ids[i, :n] = torch.from_numpy(w.ids.astype(np.int64))
            att[i, :n] = 1
            starts[i, :n] = torch.from_numpy(w.starts)
        return ids, att, starts

    def __call__(self, windows: Sequence[WordPieces], generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor]:
        ids, att, starts = self.pad(windows)
        labels = torch.full_like(ids, IGNORE)
        masked = ids.clone()
        maskable = (att == 1) & ~torch.isin(ids, self.special)
        groups = torch.cumsum(starts.long(), dim=1)  # word number of each piece
        for i in range(ids.shape[0]):
            words = torch.unique(groups[i][maskable[i]])
            if words.numel() == 0:
                continue
            k = max(1, round(self.p * words.numel()))
            chosen = words[torch.randperm(words.numel(), generator=generator)[:k]]
            fate = torch.rand(k, generator=generator)
            in_chosen = torch.isin(groups[i], chosen) & maskable[i]
            labels[i][in_chosen] = ids[i][in_chosen]
            to_mask = torch.isin(groups[i], chosen[fate < self.mask_prob]) & maskable[i]
            to_rand = torch.isin(groups[i], chosen[(fate >= self.mask_prob) &
                                                   (fate < self.mask_prob + self.random_prob)]) & maskable[i]
            masked[i][to_mask] = self.mask_id
            n_rand = int(to_rand.sum())
            if n_rand:
                pick = torch.randint(len(self.random_pool), (n_rand,), generator=generator)
                masked[i][to_rand] = self.random_pool[pick]
        return {"input_ids": masked, "attention_mask": att, "labels": labels}


def batch_generator(seed: int, *parts: int) -> torch.Generator:
    """A torch generator seeded by ``seed`` and e.g. (epoch, rank, step): the masks of one batch."""
    g = torch.Generator()
    h = seed
    for p in parts:
        h = (h * 1_000_003 + p + 1) % (2**63 - 1)
    g.manual_seed(h)
    return g


# ------------------------------------------------------------------------------------------------ model
def mlm_head(model: nn.Module) -> nn.Module | None:
    """The MLM head module that maps hidden states to vocabulary logits (BERT ``cls``, RoBERTa ``lm_head``)."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def head_prefix(model: nn.Module) -> str:
    for name in ("cls", "lm_head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name + "."
    return "cls."


def build_mlm_model(base_dir: str | Path, tokenizer: FinsentTokenizer) -> tuple[nn.Module, bool]:
    """``AutoModelForMaskedLM`` on ``base_dir`` (float32) with its embeddings grown to the tokenizer's compound
    tokens → (model, head_loaded). A checkpoint without an MLM head (the default base model) gets a fresh one:
    transform + LayerNorm + decoder tied to the word embeddings; the encoder weights must all load."""
    import transformers
    from transformers import AutoConfig, AutoModelForMaskedLM

    transformers.utils.logging.disable_progress_bar()
    base = Path(base_dir)
    config = AutoConfig.from_pretrained(str(base))
    config.tie_word_embeddings = True
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the "newly initialised head" report is expected here
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(str(base), config=config, dtype=torch.float32,
                                                           output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    prefix = model.base_model_prefix + "."
    missing = [k for k in info["missing_keys"] if not k.endswith("position_ids")]
    enc_missing = [k for k in missing if k.startswith(prefix)]
    if enc_missing:
        raise ModelDirError(f"{base}: encoder weights missing from the checkpoint: {sorted(enc_missing)[:5]}")
    head_loaded = not missing
    log.info("MLM head: %s", "loaded from the checkpoint" if head_loaded else
             "none in the checkpoint, added (transform + LayerNorm + decoder tied to the word embeddings)")
    grow_compound_embeddings(model, tokenizer)
    if model.get_output_embeddings() is not None and \
            model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise ModelDirError(f"{type(model).__name__}: the MLM decoder is not tied to the word embeddings")
    return model, head_loaded


def grow_compound_embeddings(model: nn.Module, tokenizer: FinsentTokenizer) -> int:
    """Grow the (tied) embedding matrix to ``tokenizer.vocab_size`` rows as fine-tuning does
    (:func:`classifier.modeling.add_compound_embeddings`: each *new* compound row starts as the mean of its pieces'
    rows) and start the MLM decoder bias of those rows the same way. Returns the number of new rows."""
    rows = model.get_input_embeddings().weight.shape[0]
    add_compound_embeddings(model, tokenizer)
    out = model.get_output_embeddings()
    bias = getattr(out, "bias", None) if out is not None else None
    if bias is not None and bias.shape[0] == tokenizer.vocab_size > rows:
        with torch.no_grad():
            for word in tokenizer.compound_words:
                row = tokenizer.compound_ids[word]
                if row >= rows:
                    bias[row] = bias[tokenizer.compound_pieces[word]].mean()
    return tokenizer.vocab_size - rows


class MaskedLMObjective(nn.Module):
    """Wraps an ``*ForMaskedLM`` model; ``forward`` → (summed cross-entropy, correct predictions, masked
    pieces) over the masked positions only. The vocabulary projection runs on the ~15 % masked positions
    instead of all of them, which on a 35k vocabulary is most of the head's cost. Wrap *this* module in DDP."""

    def __init__(self, mlm: nn.Module) -> None:
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sel = labels != IGNORE
        target = labels[sel]
        head = mlm_head(self.mlm)
        if head is not None:
            hidden = self.mlm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = head(hidden[sel])
        else:  # unknown head layout: full logits
            logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits[sel]
        logits = logits.float()
        loss_sum = F.cross_entropy(logits, target, reduction="sum")
        correct = (logits.argmax(-1) == target).sum()
        return loss_sum, correct, sel.sum()


# ------------------------------------------------------------------------------------------------ export
def save_encoder_dir(out_dir: str | Path, model: nn.Module, tokenizer: FinsentTokenizer,
                     meta: dict[str, Any] | None = None) -> Path:
    """Write the encoder directory (module docstring): HF ``*ForMaskedLM`` checkpoint in float32 + tokenizer
    files + ``compound_tokens.txt`` / ``jieba_userdict.txt`` + ``finsent_pretrain`` in config.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.vocab_size = tokenizer.vocab_size
    model.config.architectures = [type(model).__name__]
    setattr(model.config, PRETRAIN_SECTION, {
        "compound_base_id": tokenizer.compound_base_id,
        "num_compound_tokens": len(tokenizer.compound_words),
        **(meta or {}),
    })
    model.save_pretrained(str(out))
    tokenizer.save(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["dtype"] = "float32"
    cfg.pop("torch_dtype", None)
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    return out


def load_mlm_state(model: nn.Module, weights: str | Path) -> None:
    """Load ``model.safetensors`` of an exported encoder into an ``*ForMaskedLM`` of the same shape."""
    from safetensors.torch import load_file

    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("decoder.weight") or k.endswith("decoder.bias")
            or k.endswith("position_ids")}
    if set(missing) - tied or unexpected:
        raise ModelDirError(f"{weights} does not match the model (missing {sorted(set(missing) - tied)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
