"""Text normalisation (full/half width, whitespace) and jieba word segmentation with a finance lexicon."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from classifier.errors import DataError, InputError

log = logging.getLogger(__name__)

_WS = re.compile(r"\s+")
# control and format characters (zero-width space, BOM, ...) carry no meaning for the classifier
_CTRL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202f\ufeff]")


def normalize(text: str) -> str:
    """NFKC (full-width ASCII → half-width, compatibility forms folded), control chars removed, every run of
    whitespace collapsed to one space, ends stripped. Chinese punctuation like 。、 is kept as is."""
    text = unicodedata.normalize("NFKC", text)
    text = _CTRL.sub("", text)
    return _WS.sub(" ", text).strip()


def validate_text(text: object, max_chars: int | None = None) -> str:
    """Return the normalised text, or raise InputError saying what is wrong with it."""
    if not isinstance(text, str):
        raise InputError(f"text must be a string, got {type(text).__name__}")
    norm = normalize(text)
    if not norm:
        raise InputError("text is empty (or only whitespace): send the headline or article body to classify")
    if max_chars is not None and len(norm) > max_chars:
        raise InputError(f"text has {len(norm)} characters, over the limit of {max_chars}: shorten or split it")
    return norm


def read_lexicon(path: str | Path) -> list[str]:
    """Words of a lexicon file: one word a line, optionally followed by TAB/space and a tag
    (``word<TAB>pos|neg`` as in ../shared/data/lexicon). Blank lines and ``#`` comments are skipped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"lexicon {p} not found: give an existing word list (one word a line)")
    words: list[str] = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word = normalize(line.split("\t")[0].split(" ")[0])
        if word:
            words.append(word)
    return list(dict.fromkeys(words))


class Segmenter:
    """A private jieba tokenizer (no global state) with user words; HMM off, as in the seed."""

    def __init__(self, words_with_freq: Iterable[tuple[str, int | None]] = ()) -> None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        self._jieba = jieba.Tokenizer()
        self._jieba.initialize()
        self.freqs: dict[str, int] = {}
        for word, freq in words_with_freq:
            if not word or " " in word:
                continue
            self._jieba.add_word(word, freq)
            self.freqs[word] = int(self._jieba.FREQ.get(word, freq or 1))

    def cut(self, text: str) -> list[str]:
        return list(self._jieba.cut(text, HMM=False))

    def spans(self, text: str) -> Iterator[tuple[str, int, int]]:
        """(word, start, end) character spans of the segmentation."""
        pos = 0
        for w in self._jieba.cut(text, HMM=False):
            yield w, pos, pos + len(w)
            pos += len(w)

    def save_userdict(self, path: str | Path) -> None:
        """``word freq`` lines (jieba's user-dictionary format), so a reload segments identically."""
        Path(path).write_text("".join(f"{w} {f}\n" for w, f in self.freqs.items()), encoding="utf-8")

    @classmethod
    def from_userdict(cls, path: str | Path) -> Segmenter:
        items: list[tuple[str, int | None]] = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            parts = line.split(" ")
            if parts and parts[0]:
                items.append((parts[0], int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None))
        return cls(items)
