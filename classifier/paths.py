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


def shared_hint() -> str:
    """Where ``$FINSENT_SHARED`` points now, and, inside a Ray job (whose working directory is a copy, so
    ``../shared`` beside it does not exist), how to set it: for "file not found" messages."""
    where = os.environ.get("FINSENT_SHARED")
    text = f"$FINSENT_SHARED is {where}" if where else f"$FINSENT_SHARED is unset, so {shared_dir()} is used"
    if os.environ.get("RAY_JOB_ID") or "runtime_resources" in str(REPO_ROOT):
        text += ("; this runs as a Ray job in a copy of the working directory: export FINSENT_SHARED=/abs/path/shared "
                 "before `ray start`, or submit with --runtime-env-json '{\"env_vars\": {\"FINSENT_SHARED\": "
                 "\"/abs/path/shared\"}}', or give absolute paths")
    return text


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
