"""Jieba-aware tokenization with compound tokens (WoBERT / bert4keras ``compound_tokens`` behaviour).

A text is normalised, segmented by jieba (HMM off) with the finance lexicon as user dictionary, and every
segmented word that is a *compound token* becomes one id of its own; the runs of text between compound words
are tokenized by the base tokenizer. Compound ids follow the base embedding matrix
(``compound_base_id + i``); :meth:`FinsentTokenizer.compound_pieces` says which base pieces each compound
replaced, so the model can initialise its embedding as their mean.

Works for char-level WordPiece vocabularies (Chinese BERT / RoBERTa-wwm) and SentencePiece ones (the
default base model, XLM-R Unigram with a ``Metaspace`` pre-tokenizer). For the latter a run that does not
start the text is tokenized *without* the ``▁`` word-start marker, so it gets the pieces it would get in the
middle of the text.

Long texts: head+tail truncation (keep the first ``head_tokens`` and the last ``max_len - 2 - head_tokens``
pieces), or sliding windows whose probabilities the predictor averages.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.errors import ConfigError, ModelDirError
from classifier.text import Segmenter, normalize, read_lexicon

log = logging.getLogger(__name__)

COMPOUND_FILE = "compound_tokens.txt"
USERDICT_FILE = "jieba_userdict.txt"


#: how texts longer than the model input are cut (see TruncationConfig)
STRATEGIES: tuple[str, ...] = ("head_tail", "sliding_window", "sentences")
POOLINGS: tuple[str, ...] = ("mean", "max_polar")
#: sentence ends for the ``sentences`` strategy: Chinese and ASCII full stops, ! ?, semicolons, line breaks
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")


@dataclass(frozen=True)
class TruncationConfig:
    """How token sequences are cut to the model's input size."""

    max_len: int = 512
    #: pieces kept from the start when a text is too long; ``None`` → a quarter of the body (128 of 510)
    head_tokens: int | None = None
    #: ``head_tail`` (one input per text), ``sliding_window`` (overlapping windows) or ``sentences`` (whole
    #: sentences packed into inputs of at most ``max_len`` pieces); several inputs are pooled by ``pooling``
    strategy: str = "head_tail"
    #: sliding windows: step between window starts, in pieces; ``None`` → half a window
    window_stride: int | None = None
    #: how the probabilities of a text's several inputs combine: ``mean``, or ``max_polar`` (the input with
    #: the most bullish + bearish probability speaks for the text: one strong sentence decides a long article)
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.max_len < 8:
            raise ConfigError(f"max_len: must be at least 8, got {self.max_len}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"truncation: {self.strategy!r} is not allowed; choose one of {list(STRATEGIES)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling: {self.pooling!r} is not allowed; choose one of {list(POOLINGS)}")
        if self.head_tokens is not None and not 0 <= self.head_tokens <= self.max_len - 2:
            raise ConfigError(f"head_tokens: must be between 0 and max_len-2 ({self.max_len - 2}), got {self.head_tokens}")
        if self.window_stride is not None and not 1 <= self.window_stride <= self.max_len - 2:
            raise ConfigError(f"window_stride: must be between 1 and max_len-2, got {self.window_stride}")

    @property
    def body(self) -> int:
        return self.max_len - 2

    @property
    def head(self) -> int:
        return self.head_tokens if self.head_tokens is not None else round(self.body / 4)


def _continuation_json(tokenizer_json: str) -> str:
    """The same tokenizer with every Metaspace pre-tokenizer set to never prepend the ``▁`` marker."""
    spec = json.loads(tokenizer_json)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "Metaspace":
                node["prepend_scheme"] = "never"
                node.pop("add_prefix_space", None)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec.get("pre_tokenizer"))
    spec["truncation"] = None
    spec["padding"] = None
    return json.dumps(spec)


class FinsentTokenizer:
    """Base Hugging Face tokenizer + jieba segmentation + compound tokens + truncation policy."""

    def __init__(
        self,
        hf_tokenizer: Any,
        compound_words: Sequence[str],
        compound_base_id: int,
        segmenter: Segmenter,
        truncation: TruncationConfig | None = None,
        compound_pieces: dict[str, list[int]] | None = None,
    ) -> None:
        from tokenizers import Tokenizer

        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ModelDirError(
                "the base tokenizer has no fast (tokenizers) backend: the checkpoint needs a tokenizer.json "
                "or a vocab.txt / sentencepiece model that transformers can convert"
            )
        self.hf = hf_tokenizer
        self._first = Tokenizer.from_str(backend.to_str())
        self._first.no_truncation()
        self._first.no_padding()
        self._cont = Tokenizer.from_str(_continuation_json(backend.to_str()))
        self.compound_words = list(compound_words)
        self.compound_base_id = int(compound_base_id)
        self.compound_ids = {w: self.compound_base_id + i for i, w in enumerate(self.compound_words)}
        self.compound_pieces = dict(compound_pieces or {})
        self.segmenter = segmenter
        self.truncation = truncation or TruncationConfig()
        for name in ("cls_token_id", "sep_token_id", "pad_token_id"):
            if getattr(hf_tokenizer, name) is None:
                raise ModelDirError(f"the base tokenizer defines no {name.removesuffix('_id')}: use a BERT/RoBERTa-family tokenizer")
        self.cls_id: int = hf_tokenizer.cls_token_id
        self.sep_id: int = hf_tokenizer.sep_token_id
        self.pad_id: int = hf_tokenizer.pad_token_id
        self.mask_id: int | None = hf_tokenizer.mask_token_id
        self.special_ids = frozenset(i for i in hf_tokenizer.all_special_ids if i is not None)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_base(
        cls,
        base_dir: str | Path,
        lexicon_paths: Iterable[str | Path] = (),
        extra_words: Iterable[str] = (),
        truncation: TruncationConfig | None = None,
        compound_base_id: int | None = None,
    ) -> FinsentTokenizer:
        """Build from a base checkpoint directory: the lexicon words (and ``extra_words``) that the base
        tokenizer splits into two or more pieces become compound tokens, numbered from
        ``compound_base_id`` (default: the base model's ``vocab_size``).

        A base directory that already has compound tokens (a domain-pretrained encoder written by
        ``finsent pretrain``, or a finsent model directory) keeps them with their ids, so their trained
        embedding rows are reused; lexicon words it does not have yet are appended after them."""
        from transformers import AutoConfig, AutoTokenizer

        base = _check_dir(base_dir)
        hf = AutoTokenizer.from_pretrained(str(base))
        vocab_rows = max(int(AutoConfig.from_pretrained(str(base)).vocab_size), len(hf))
        inherited: list[str] = []
        pieces: dict[str, list[int]] = {}
        if (base / COMPOUND_FILE).is_file():
            inherited, pieces = _read_compounds(base / COMPOUND_FILE)
            cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
            meta = cfg.get("finsent") or cfg.get("finsent_pretrain") or {}
            inherited_base = int(meta.get("compound_base_id", vocab_rows - len(inherited)))
            if compound_base_id is not None and compound_base_id != inherited_base:
                raise ConfigError(f"compound_base_id: {base} numbers its compound tokens from {inherited_base}, "
                                  f"not {compound_base_id}; leave compound_base_id unset")
            compound_base_id = inherited_base
        if compound_base_id is None:
            compound_base_id = vocab_rows
        words: list[str] = []
        for p in lexicon_paths:
            words.extend(read_lexicon(p))
        words.extend(w for w in (normalize(x) for x in extra_words) if w)
        words = [w for w in dict.fromkeys(words) if " " not in w]
        known = set(inherited)
        segmenter = Segmenter((w, None) for w in dict.fromkeys([*inherited, *words]))
        tok = cls(hf, [], compound_base_id, segmenter, truncation)
        new_words = [w for w in words if w not in known]
        compounds = list(inherited)
        encoded = tok._cont.encode_batch(new_words, add_special_tokens=False) if new_words else []
        for w, enc in zip(new_words, encoded, strict=True):
            ids = [i for i in enc.ids if i not in tok.special_ids or i == hf.unk_token_id]
            if len(ids) >= 2:
                compounds.append(w)
                pieces[w] = ids
        log.info("compound tokens: %d inherited from %s, %d new of %d lexicon words", len(inherited), base,
                 len(compounds) - len(inherited), len(words))
        return cls(hf, compounds, compound_base_id, segmenter, truncation, pieces)

    @classmethod
    def from_dir(cls, model_dir: str | Path, truncation: TruncationConfig | None = None) -> FinsentTokenizer:
        """Load the tokenizer saved in a finsent model directory (see :meth:`save`)."""
        from transformers import AutoTokenizer

        d = _check_dir(model_dir)
        for f in (COMPOUND_FILE, USERDICT_FILE):
            if not (d / f).is_file():
                raise ModelDirError(
                    f"{d / f} is missing: {d} is not a complete finsent model directory. Re-export it with "
                    "`finsent finetune` (or classifier.modeling.save_model_dir)"
                )
        hf = AutoTokenizer.from_pretrained(str(d))
        words, pieces = _read_compounds(d / COMPOUND_FILE)
        meta = json.loads((d / "config.json").read_text(encoding="utf-8")).get("finsent", {})
        if truncation is None:
            truncation = TruncationConfig(**meta.get("truncation", {}))
        base_id = int(meta.get("compound_base_id", len(hf)))
        return cls(hf, words, base_id, Segmenter.from_userdict(d / USERDICT_FILE), truncation, pieces)

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(out))
        lines = [f"{w}\t{' '.join(map(str, self.compound_pieces.get(w, [])))}\n" for w in self.compound_words]
        (out / COMPOUND_FILE).write_text("".join(lines), encoding="utf-8")
        self.segmenter.save_userdict(out / USERDICT_FILE)

    # ---------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        """Rows the embedding matrix needs: base rows + compound tokens."""
        return self.compound_base_id + len(self.compound_words)

    def segment(self, text: str) -> list[tuple[str, bool]]:
        """Normalised text as (piece of text, is a compound word) runs."""
        runs: list[tuple[str, bool]] = []
        buf: list[str] = []
        for word, _, _ in self.segmenter.spans(normalize(text)):
            if word in self.compound_ids:
                if buf:
                    runs.append(("".join(buf), False))
                    buf = []
                runs.append((word, True))
            else:
                buf.append(word)
        if buf:
            runs.append(("".join(buf), False))
        return runs

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Piece ids of each text, without special tokens and without truncation."""
        segmented = [self.segment(t) for t in texts]
        first_runs: list[str] = []
        cont_runs: list[str] = []
        for runs in segmented:
            for j, (s, is_compound) in enumerate(runs):
                if not is_compound:
                    (first_runs if j == 0 else cont_runs).append(s)
        first = iter(self._first.encode_batch(first_runs, add_special_tokens=False)) if first_runs else iter(())
        cont = iter(self._cont.encode_batch(cont_runs, add_special_tokens=False)) if cont_runs else iter(())
        out: list[list[int]] = []
        for runs in segmented:
            ids: list[int] = []
            for j, (s, is_compound) in enumerate(runs):
                if is_compound:
                    ids.append(self.compound_ids[s])
                else:
                    ids.extend(next(first if j == 0 else cont).ids)
            out.append(ids)
        return out

    def truncate(self, ids: Sequence[int]) -> list[int]:
        """[CLS] + head + tail + [SEP], at most ``max_len`` ids."""
        body, head = self.truncation.body, self.truncation.head
        ids = list(ids)
        if len(ids) > body:
            tail = body - head
            ids = ids[:head] + (ids[len(ids) - tail :] if tail > 0 else [])
        return [self.cls_id, *ids, self.sep_id]

    def windows(self, ids: Sequence[int]) -> list[list[int]]:
        """Overlapping windows covering every piece, each wrapped in [CLS] ... [SEP]."""
        body = self.truncation.body
        stride = self.truncation.window_stride or max(1, body // 2)
        ids = list(ids)
        if len(ids) <= body:
            return [[self.cls_id, *ids, self.sep_id]]
        starts = list(range(0, len(ids) - body, stride)) + [len(ids) - body]
        return [[self.cls_id, *ids[s : s + body], self.sep_id] for s in dict.fromkeys(starts)]

    def sentence_chunks(self, text: str) -> list[list[int]]:
        """Whole sentences packed greedily into inputs of at most ``max_len`` pieces (a sentence longer than
        one input is cut into windows), each wrapped in [CLS] ... [SEP]. Works on the raw text, so line breaks
        between paragraphs still end sentences."""
        body = self.truncation.body
        sentences = [s for s in (x.strip() for x in _SENTENCE_END.split(text)) if s and normalize(s)]
        if len(sentences) <= 1:
            return self.windows(self.encode([text])[0])
        chunks: list[list[int]] = []
        cur: list[int] = []
        for ids in self.encode(sentences):
            if len(ids) > body:
                if cur:
                    chunks.append(cur)
                    cur = []
                chunks.extend(w[1:-1] for w in self.windows(ids))
            elif len(cur) + len(ids) > body:
                chunks.append(cur)
                cur = list(ids)
            else:
                cur.extend(ids)
        if cur:
            chunks.append(cur)
        return [[self.cls_id, *c, self.sep_id] for c in chunks]

    def model_inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """Head+tail truncated model inputs (with special tokens), one per text."""
        return [self.truncate(ids) for ids in self.encode(texts)]

    def pad(self, batch: Sequence[Sequence[int]]) -> dict[str, Any]:
        """Right-pad to the longest sequence: ``{"input_ids", "attention_mask"}`` as int64 tensors."""
        import torch

        width = max((len(x) for x in batch), default=0)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, seq in enumerate(batch):
            input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def __call__(self, texts: Sequence[str]) -> dict[str, Any]:
        return self.pad(self.model_inputs(texts))

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        inv = {i: w for w, i in self.compound_ids.items()}
        base = self.hf.convert_ids_to_tokens([i if i not in inv else self.pad_id for i in ids])
        return [inv.get(i, t) for i, t in zip(ids, base, strict=True)]


def _read_compounds(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Words (in id order) and the base pieces each replaced, from a ``compound_tokens.txt``."""
    words: list[str] = []
    pieces: dict[str, list[int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        word, _, rest = line.partition("\t")
        words.append(word)
        pieces[word] = [int(x) for x in rest.split()] if rest else []
    return words, pieces


def _check_dir(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelDirError(
            f"model directory {p} not found: give a local Hugging Face checkpoint directory "
            "(e.g. ../shared/models/me5-small-zh-fin, or set FINSENT_BASE_MODEL)"
        )
    if not (p / "config.json").is_file():
        raise ModelDirError(f"{p / 'config.json'} is missing: {p} is not a Hugging Face model directory")
    return p
