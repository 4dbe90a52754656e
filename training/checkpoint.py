"""Training checkpoints: a complete finsent model directory plus the optimizer state and the run's progress.

Layout of one checkpoint directory::

    model/            finsent model directory (classifier.modeldir.save_model_dir): loads with Predictor
    model_ema/        the same with the averaged weights (runs with ema_decay > 0)
    train_state.pt    optimizer / LR scheduler / grad scaler state dicts (read with weights_only=True)
    progress.json     epoch, global step, per-epoch metrics history, best epoch so far

Nothing here knows about Ray: :mod:`training.finetune` hands these directories to ``ray.train.report``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from classifier.modeldir import ModelMeta, load_weights, save_model_dir
from classifier.modeling import FinsentClassifier
from classifier.tokenization import FinsentTokenizer

MODEL_SUBDIR = "model"
#: the averaged (EMA) weights, when the run keeps them (a model directory too)
EMA_SUBDIR = "model_ema"
STATE_FILE = "train_state.pt"
PROGRESS_FILE = "progress.json"


def save_checkpoint(path: str | Path, model: FinsentClassifier, tokenizer: FinsentTokenizer, meta: ModelMeta,
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, progress: dict[str, Any]) -> Path:
    out = Path(path)
    save_model_dir(out / MODEL_SUBDIR, model, tokenizer, meta)
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
             "scaler": scaler.state_dict() if scaler is not None else None}
    torch.save(state, out / STATE_FILE)
    (out / PROGRESS_FILE).write_text(json.dumps(progress, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def read_progress(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / PROGRESS_FILE).read_text(encoding="utf-8"))


def load_checkpoint(path: str | Path, model: FinsentClassifier, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: Any = None) -> dict[str, Any]:
    """Restore weights (and optimizer/scheduler/scaler state when given) from a checkpoint directory; returns
    its progress record."""
    d = Path(path)
    load_weights(model, d / MODEL_SUBDIR)
    if optimizer is not None or scheduler is not None or scaler is not None:
        state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
    return read_progress(d)
