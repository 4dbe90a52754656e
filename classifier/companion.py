"""The linear companion: char n-gram TF-IDF + finance-lexicon counts → logistic regression (scikit-learn).

A strong, cheap model on these data (TF-IDF char 1–3-grams + balanced LR is within a few points of the fine-tuned
encoder on forum posts), and its errors differ from the encoder's, so a blend of the two fitted on dev
(:mod:`classifier.calibration`) beats either. It is trained in the same run as the encoder and stored in the model
directory's ``companion/`` folder as JSON (vocabulary, settings, lexicon words) + safetensors (idf, coefficients):
never pickle. Inference rebuilds the scikit-learn vectorizer from the stored vocabulary and idf, so the features
are exactly those it was trained on.

Lexicon features: for each text, jieba (with the lexicon as user words) segments it, and the counts of positive
and of negative lexicon words (log1p) plus whether any occurs are appended to the TF-IDF vector.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classifier.errors import ModelDirError

log = logging.getLogger(__name__)

META_FILE = "companion.json"
ARRAYS_FILE = "companion.safetensors"
KIND = "char_tfidf_lexicon_lr"


def read_polar_lexicon(path: str | Path) -> tuple[list[str], list[str]]:
    """Positive and negative words of a ``word<TAB>pos|neg`` lexicon (lines without a polarity are skipped)."""
    from classifier.text import normalize

    pos: list[str] = []
    neg: list[str] = []
    p = Path(path)
    if not p.is_file():
        raise ModelDirError(f"lexicon {p} not found: give the finance word list (word<TAB>pos|neg)")
    for line in p.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split("\t")
        if len(parts) < 2:
            continue
        word = normalize(parts[0])
        tag = parts[1].strip().lower()
        if word and " " not in word:
            (pos if tag == "pos" else neg if tag == "neg" else []).append(word)
    return list(dict.fromkeys(pos)), list(dict.fromkeys(neg))


class LexiconCounter:
    """Counts positive / negative lexicon words in jieba segmentations (HMM off, lexicon as user words)."""

    def __init__(self, pos: Sequence[str], neg: Sequence[str]) -> None:
        self.pos = frozenset(pos)
        self.neg = frozenset(neg)
        self._segmenter: Any = None

    @property
    def segmenter(self) -> Any:
        if self._segmenter is None:
            from classifier.text import Segmenter

            self._segmenter = Segmenter((w, None) for w in sorted(self.pos | self.neg))
        return self._segmenter

    def counts(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, 2]`` counts of positive and negative words."""
        out = np.zeros((len(texts), 2), dtype=np.float64)
        for i, t in enumerate(texts):
            for w in self.segmenter.cut(t):
                if w in self.pos:
                    out[i, 0] += 1
                elif w in self.neg:
                    out[i, 1] += 1
        return out

    def features(self, texts: Sequence[str]) -> np.ndarray:
        c = self.counts(texts)
        return np.hstack([np.log1p(c), (c > 0).astype(np.float64)])


def char_vectorizer(ngram_max: int = 3, min_df: int = 2, vocabulary: dict[str, int] | None = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(1, ngram_max), sublinear_tf=True, min_df=min_df,
                           vocabulary=vocabulary, dtype=np.float64)


class LinearCompanion:
    """char n-gram TF-IDF (+ lexicon counts) multinomial logistic regression over ``labels``."""

    def __init__(self, labels: Sequence[str], vectorizer: Any, coef: np.ndarray, intercept: np.ndarray,
                 lexicon: LexiconCounter | None, settings: dict[str, Any]) -> None:
        self.labels = tuple(labels)
        self.vectorizer = vectorizer
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.lexicon = lexicon
        self.settings = dict(settings)
        if self.coef.shape[0] != len(self.labels):
            raise ModelDirError(f"companion: {self.coef.shape[0]} coefficient rows for {len(self.labels)} labels")

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[str], label_names: Sequence[str],
            lexicon_path: str | Path | None = None, *, C: float = 2.0, ngram_max: int = 3, min_df: int = 2,
            class_weight: str | None = "balanced", max_iter: int = 2000, seed: int = 0) -> LinearCompanion:
        """Fit on training texts (normalised, as the model sees them) and their label names."""
        from scipy import sparse
        from sklearn.linear_model import LogisticRegression

        names = list(label_names)
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ValueError(f"companion: labels {unknown} are not among {names}")
        y = np.array([names.index(lab) for lab in labels])
        vec = char_vectorizer(ngram_max, min_df)
        x = vec.fit_transform(texts)
        lexicon = None
        if lexicon_path is not None:
            lexicon = LexiconCounter(*read_polar_lexicon(lexicon_path))
            x = sparse.hstack([x, sparse.csr_matrix(lexicon.features(texts))], format="csr")
        clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=seed)
        clf.fit(x, y)
        coef = np.zeros((len(names), x.shape[1]))
        intercept = np.zeros(len(names))
        coef[clf.classes_] = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_, clf.coef_])
        intercept[clf.classes_] = clf.intercept_ if len(clf.classes_) > 2 else [-clf.intercept_[0],
                                                                                   clf.intercept_[0]]
        if len(clf.classes_) < len(names):
            intercept[[i for i in range(len(names)) if i not in set(clf.classes_)]] = -30.0
        settings = {"kind": KIND, "C": C, "ngram_max": ngram_max, "min_df": min_df, "class_weight": class_weight,
                    "train_examples": len(texts), "features": int(x.shape[1])}
        return cls(names, vec, coef, intercept, lexicon, settings)

    # ------------------------------------------------------------------ predict
    def features(self, texts: Sequence[str]) -> Any:
        from scipy import sparse

        x = self.vectorizer.transform(texts)
        if self.lexicon is not None:
            x = sparse.hstack([x, sparse.csr_matrix(self.lexicon.features(texts))], format="csr")
        return x

    def decision_function(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.features(texts) @ self.coef.T) + self.intercept

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        z = self.decision_function(texts)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    # ------------------------------------------------------------------ storage
    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        vocab = sorted(self.vectorizer.vocabulary_.items(), key=lambda kv: kv[1])
        if [i for _, i in vocab] != list(range(len(vocab))):
            raise ValueError("companion: vectorizer vocabulary indices are not 0..n-1")
        meta = {"labels": list(self.labels), "settings": self.settings,
                "vocabulary": [t for t, _ in vocab],
                "lexicon": {"pos": sorted(self.lexicon.pos), "neg": sorted(self.lexicon.neg)} if self.lexicon else None}
        (out / META_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        save_file({"idf": np.ascontiguousarray(self.vectorizer.idf_), "coef": np.ascontiguousarray(self.coef),
                   "intercept": np.ascontiguousarray(self.intercept)}, str(out / ARRAYS_FILE))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> LinearCompanion:
        from safetensors.numpy import load_file

        d = Path(folder)
        for name in (META_FILE, ARRAYS_FILE):
            if not (d / name).is_file():
                raise ModelDirError(f"{d / name} is missing: the companion model is incomplete; re-export the "
                                    "model directory (or delete companion/ and calibration.json to use the encoder alone)")
        try:
            meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
            arrays = load_file(str(d / ARRAYS_FILE))
            settings = meta["settings"]
            if settings.get("kind") != KIND:
                raise ModelDirError(f"{d}: unknown companion kind {settings.get('kind')!r}")
            vocab = {t: i for i, t in enumerate(meta["vocabulary"])}
            vec = char_vectorizer(int(settings["ngram_max"]), vocabulary=vocab)
            vec.idf_ = arrays["idf"]
            lex = meta.get("lexicon")
            lexicon = LexiconCounter(lex["pos"], lex["neg"]) if lex else None
            return cls(meta["labels"], vec, arrays["coef"], arrays["intercept"], lexicon, settings)
        except ModelDirError:
            raise
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            raise ModelDirError(f"{d} holds a malformed companion model ({e!r}): re-export the model directory") from None
