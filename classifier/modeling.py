"""The classifier module: a Hugging Face encoder + dropout + linear head on the [CLS] position (the seed's shape).

Building a fresh classifier on a base checkpoint lives here; how a trained one is written to and read from disk
(the model directory, the contract between training, serving and the stream) is owned by
:mod:`classifier.modeldir`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier.errors import ModelDirError
from classifier.labels import LabelSet
from classifier.tokenization import FinsentTokenizer, TruncationConfig, _check_dir

log = logging.getLogger(__name__)


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
