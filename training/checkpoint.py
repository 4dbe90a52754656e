"""Training checkpoints: a complete finsent model directory plus the optimizer state and the run's progress.

Layout of one checkpoint directory::

    model/            finsent model directory (classifier.modeling.save_model_dir): loads with Predictor
    train_state.pt    optimizer / LR scheduler / grad scaler state dicts (read with weights_only=True)
    progress.json     epoch, global step, per-epoch metrics history, best epoch so far

Nothing here knows about Ray: :mod:`training.finetune` hands these directories to ``ray.train.report``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from classifier.errors import ModelDirError
from classifier.modeling import WEIGHTS_FILE, FinsentClassifier, ModelMeta, save_model_dir
from classifier.tokenization import FinsentTokenizer

MODEL_SUBDIR = "model"
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


def load_weights(model: FinsentClassifier, model_dir: str | Path) -> None:
    """Load a model directory's safetensors weights into an existing classifier of the same shape."""
    from safetensors.torch import load_file

    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirError(f"{weights} is missing: the checkpoint is incomplete; start a new run (resume=false)")
    state = load_file(str(weights))
    prefix = model.encoder.base_model_prefix + "."
    enc = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.encoder.load_state_dict(enc, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelDirError(f"{weights} does not fit the model being trained (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}): resume with the same base_model, lexicon and labels")
    model.classifier.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})


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
