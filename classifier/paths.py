"""Where shared inputs live by default. Every path here can be overridden by the user."""

from __future__ import annotations

import os
from pathlib import Path

from classifier.errors import ModelDirError

#: repository root (the folder that holds pyproject.toml) when running from a checkout
REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``$FINSENT_SHARED``, else ``../shared`` beside the checkout, else ``./../shared``."""
    env = os.environ.get("FINSENT_SHARED")
    if env:
        return Path(env).expanduser()
    for cand in (REPO_ROOT.parent / "shared", Path.cwd().parent / "shared"):
        if cand.is_dir():
            return cand
    return REPO_ROOT.parent / "shared"


def default_base_model(explicit: str | Path | None = None) -> Path:
    """The base encoder: ``explicit`` → ``$FINSENT_BASE_MODEL`` → ``<shared>/models/me5-small-zh-fin``."""
    cand = explicit or os.environ.get("FINSENT_BASE_MODEL") or shared_dir() / "models" / "me5-small-zh-fin"
    p = Path(cand).expanduser()
    if not (p / "config.json").is_file():
        raise ModelDirError(
            f"base model {p} not found (no config.json there). Pass --base-model DIR (or base_model=DIR), or set "
            "FINSENT_BASE_MODEL to a local Hugging Face checkpoint directory, e.g. a downloaded "
            "hfl/chinese-roberta-wwm-ext; weights are never downloaded at run time"
        )
    return p


def default_lexicon() -> Path:
    return shared_dir() / "data" / "lexicon" / "fin_sentiment_words.tsv"
