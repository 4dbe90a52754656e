"""The classifier: a Hugging Face encoder + dropout + linear head on the [CLS] position (the seed's shape).

Model directory layout (see docs/CONTRACT.md): ``config.json`` is the encoder's Hugging Face config plus
``id2label``/``label2id`` and a ``finsent`` section; ``model.safetensors`` holds the encoder under its
``base_model_prefix`` (``bert.``, ``roberta.``, ...) and the head as ``classifier.weight``/``classifier.bias``,
so plain ``transformers.AutoModel.from_pretrained(dir)`` loads the encoder. Weights are read with safetensors
only: nothing is ever unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier.errors import ModelDirError
from classifier.labels import LabelSet
from classifier.tokenization import FinsentTokenizer, TruncationConfig, _check_dir

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "training_report.json"


def load_encoder(base_dir: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The base encoder of a local checkpoint directory, without pooler (the head reads [CLS] directly)."""
    from transformers import AutoModel

    path = str(_check_dir(base_dir))
    try:
        return AutoModel.from_pretrained(path, add_pooling_layer=False, dtype=dtype)
    except TypeError:  # encoders without a pooler option (DistilBERT, ...)
        return AutoModel.from_pretrained(path, dtype=dtype)


class FinsentClassifier(nn.Module):
    """``logits = Linear(Dropout(encoder(x).last_hidden_state[:, 0]))``; softmax gives the probabilities."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)
        std = float(getattr(encoder.config, "initializer_range", 0.02))
        nn.init.normal_(self.classifier.weight, mean=0.0, std=std)
        nn.init.zeros_(self.classifier.bias)

    @property
    def config(self) -> Any:
        return self.encoder.config

    @property
    def word_embeddings(self) -> nn.Embedding:
        """The input embedding matrix (FGM perturbs it; compound tokens live in it)."""
        return self.encoder.get_input_embeddings()

    def cls_vector(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)
        return out.last_hidden_state[:, 0]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.classifier(self.dropout(self.cls_vector(input_ids, attention_mask, inputs_embeds)))

    def l1_penalty(self) -> torch.Tensor:
        """Sum of absolute values of the output layer's weights (training adds ``l1 * l1_penalty()``)."""
        return self.classifier.weight.abs().sum()


def add_compound_embeddings(encoder: nn.Module, tokenizer: FinsentTokenizer) -> None:
    """Grow the embedding matrix to ``tokenizer.vocab_size`` rows and set each *new* compound token's row to
    the mean of the rows of the pieces it replaced. Rows the encoder already has (compound tokens inherited
    from a domain-pretrained encoder) keep their trained values."""
    emb = encoder.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    if not tokenizer.compound_base_id <= old_rows <= tokenizer.vocab_size:
        raise ModelDirError(
            f"the encoder has {old_rows} embedding rows but the tokenizer numbers compound tokens from "
            f"{tokenizer.compound_base_id} to {tokenizer.vocab_size - 1}: build the tokenizer from the same base "
            "checkpoint"
        )
    if tokenizer.vocab_size == old_rows:
        return
    encoder.resize_token_embeddings(tokenizer.vocab_size, mean_resizing=False)
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        for word in tokenizer.compound_words:
            idx = tokenizer.compound_ids[word]
            if idx >= old_rows:
                weight[idx] = weight[tokenizer.compound_pieces[word]].mean(dim=0)


@dataclass
class ModelMeta:
    """The ``finsent`` section of a model directory's config.json."""

    labels: tuple[str, ...]
    base_model: str
    truncation: TruncationConfig
    dropout: float = 0.1
    name: str = "finsent"
    compound_base_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        t = self.truncation
        return {
            "labels": list(self.labels),
            "base_model": self.base_model,
            "truncation": {"max_len": t.max_len, "head_tokens": t.head_tokens, "strategy": t.strategy,
                           "window_stride": t.window_stride},
            "dropout": self.dropout,
            "name": self.name,
            "compound_base_id": self.compound_base_id,
            **self.extra,
        }


def build_classifier(
    base_dir: str | Path,
    labels: LabelSet | Sequence[str],
    lexicon_paths: Sequence[str | Path] = (),
    extra_words: Sequence[str] = (),
    truncation: TruncationConfig | None = None,
    dropout: float = 0.1,
) -> tuple[FinsentClassifier, FinsentTokenizer]:
    """A fresh classifier on a base encoder, with compound tokens added and initialised."""
    labelset = LabelSet.of(labels)
    tokenizer = FinsentTokenizer.from_base(base_dir, lexicon_paths, extra_words, truncation)
    encoder = load_encoder(base_dir)
    add_compound_embeddings(encoder, tokenizer)
    return FinsentClassifier(encoder, len(labelset), dropout), tokenizer


def weights_version(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:8]


def save_model_dir(
    out_dir: str | Path,
    model: FinsentClassifier,
    tokenizer: FinsentTokenizer,
    meta: ModelMeta,
    report: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete finsent model directory; returns its path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labelset = LabelSet.of(meta.labels)
    config = copy.deepcopy(model.encoder.config)
    config.id2label = labelset.id2label
    config.label2id = labelset.label2id
    config.num_labels = len(labelset)
    config.architectures = [type(model.encoder).__name__]
    config.vocab_size = tokenizer.vocab_size
    config.dtype = "float32"
    meta.compound_base_id = tokenizer.compound_base_id
    meta.truncation = tokenizer.truncation
    config.finsent = meta.to_json()
    config.save_pretrained(str(out))
    prefix = model.encoder.base_model_prefix
    state = {f"{prefix}.{k}": v.detach().to("cpu", torch.float32).contiguous()
             for k, v in model.encoder.state_dict().items()}
    state["classifier.weight"] = model.classifier.weight.detach().cpu().float().contiguous()
    state["classifier.bias"] = model.classifier.bias.detach().cpu().float().contiguous()
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save(out)
    if report is not None:
        (out / REPORT_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    return out


def read_meta(model_dir: str | Path) -> tuple[dict[str, Any], ModelMeta]:
    d = _check_dir(model_dir)
    cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    fs = cfg.get("finsent")
    if not isinstance(fs, dict):
        raise ModelDirError(
            f"{d / 'config.json'} has no 'finsent' section: {d} is a plain Hugging Face checkpoint, not a finsent "
            "model. Fine-tune it first: `finsent finetune base_model=" + str(d) + "`"
        )
    known = {"labels", "base_model", "truncation", "dropout", "name", "compound_base_id"}
    meta = ModelMeta(
        labels=tuple(fs["labels"]),
        base_model=str(fs.get("base_model", "")),
        truncation=TruncationConfig(**fs.get("truncation", {})),
        dropout=float(fs.get("dropout", 0.1)),
        name=str(fs.get("name", d.name)),
        compound_base_id=int(fs.get("compound_base_id", 0)),
        extra={k: v for k, v in fs.items() if k not in known},
    )
    return cfg, meta


def load_model_dir(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[FinsentClassifier, FinsentTokenizer, ModelMeta]:
    """Load a finsent model directory (safetensors only) → (model in eval mode, tokenizer, meta)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    d = _check_dir(model_dir)
    _, meta = read_meta(d)
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirError(f"{weights} is missing: re-export the model directory (only safetensors weights are read)")
    config = AutoConfig.from_pretrained(str(d))
    try:
        encoder = AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        encoder = AutoModel.from_config(config)
    state = load_file(str(weights))
    prefix = encoder.base_model_prefix + "."
    enc_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = encoder.load_state_dict(enc_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelDirError(f"{weights} does not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model = FinsentClassifier(encoder, len(meta.labels), meta.dropout)
    model.classifier.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    tokenizer = FinsentTokenizer.from_dir(d, meta.truncation)
    model.to(device).eval()
    return model, tokenizer, meta
