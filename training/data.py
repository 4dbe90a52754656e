"""Training data: read and mix the labelled files, encode them with the model's tokenizer, and batch them.

Plain functions and torch ``Dataset``/samplers; nothing here knows about Ray. Every sampler takes its
``rank``/``num_replicas`` explicitly so the same code runs on 1 process or N DDP workers, and every worker
gets the same number of batches (DDP needs equal step counts).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from classifier.data import Example, read_examples
from classifier.errors import ConfigError, DataError
from classifier.labels import LabelSet
from classifier.tokenization import FinsentTokenizer

log = logging.getLogger(__name__)

#: the label id of an example without a gold label (cross-entropy ignores it; nn.CrossEntropyLoss's default)
IGNORE_INDEX = -100


@dataclass
class FinetuneData:
    """The examples of one run and where they came from."""

    train: list[Example]
    dev: list[Example]
    sha256: dict[str, str] = field(default_factory=dict)
    skipped_lines: int = 0

    def summary(self, labels: Sequence[str]) -> dict[str, Any]:
        tc, dc = Counter(e.label for e in self.train), Counter(e.label for e in self.dev)
        return {
            "train_examples": len(self.train),
            "dev_examples": len(self.dev),
            "train_label_counts": {lab: tc.get(lab, 0) for lab in labels},
            "dev_label_counts": {lab: dc.get(lab, 0) for lab in labels},
            "skipped_lines": self.skipped_lines,
            "sha256": dict(self.sha256),
        }


def load_finetune_data(cfg: Any) -> FinetuneData:
    """Read train (+ extra train files, + rehearsal mix, optionally subsampled) and dev examples of ``cfg``
    (a :class:`training.config.ClassifierSettings` with resolved paths: fine-tuning or distillation)."""
    labels = LabelSet.of(cfg.labels)
    train = read_examples([*cfg.train_files, *cfg.extra_train_files], labels, on_error=cfg.on_bad_line)
    dev = read_examples(cfg.dev_files, labels, on_error=cfg.on_bad_line)
    sha = {**train.sha256, **dev.sha256}
    examples = list(train.examples)
    skipped = len(train.bad) + len(dev.bad)
    if getattr(cfg, "rehearsal_files", None) and cfg.rehearsal_fraction > 0:  # fine-tuning only
        from training.forgetting import mix_rehearsal

        old = read_examples(cfg.rehearsal_files, labels, on_error=cfg.on_bad_line)
        sha.update(old.sha256)
        skipped += len(old.bad)
        examples = list(mix_rehearsal(examples, list(old.examples), cfg.rehearsal_fraction, cfg.seed))
    if cfg.max_train_examples is not None and cfg.max_train_examples < len(examples):
        examples = random.Random(cfg.seed).sample(examples, cfg.max_train_examples)
    if not examples:
        raise DataError(f"no usable training examples in {cfg.train_files}: check the files and their labels")
    if not dev.examples:
        raise DataError(f"no usable dev examples in {cfg.dev_file}: check the file and its labels")
    return FinetuneData(train=examples, dev=list(dev.examples), sha256=sha, skipped_lines=skipped)


class EncodedDataset(Dataset):
    """Truncated model inputs (``[CLS] ... [SEP]`` id lists) with label ids (``IGNORE_INDEX`` = no gold
    label) and, for distillation, the teacher's probabilities of each example (``None`` = none)."""

    def __init__(self, input_ids: list[list[int]], labels: list[int],
                 soft: list[list[float] | None] | None = None) -> None:
        if len(input_ids) != len(labels):
            raise ValueError(f"{len(input_ids)} inputs but {len(labels)} labels")
        if soft is not None and len(soft) != len(labels):
            raise ValueError(f"{len(labels)} examples but {len(soft)} soft targets")
        self.input_ids = input_ids
        self.labels = labels
        self.soft = soft

    @classmethod
    def concat(cls, parts: Sequence[EncodedDataset]) -> EncodedDataset:
        """One dataset of ``parts`` in order; with soft targets when any part has them."""
        ids = [x for p in parts for x in p.input_ids]
        labels = [y for p in parts for y in p.labels]
        if all(p.soft is None for p in parts):
            return cls(ids, labels)
        soft = [s for p in parts for s in (p.soft if p.soft is not None else [None] * len(p))]
        return cls(ids, labels, soft)

    @classmethod
    def from_examples(cls, examples: Sequence[Example], tokenizer: FinsentTokenizer, labels: LabelSet
                      ) -> EncodedDataset:
        ids = tokenizer.model_inputs([e.text for e in examples])
        return cls(ids, [labels.id(e.label) for e in examples])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int] | tuple[list[int], int, list[float] | None]:
        if self.soft is None:
            return self.input_ids[i], self.labels[i]
        return self.input_ids[i], self.labels[i], self.soft[i]

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


class Collator:
    """Pads a list of ``(ids, label)`` with the tokenizer's pad id → ``{input_ids, attention_mask, labels}``;
    items ``(ids, label, probs | None)`` add ``soft`` (``[B, K]``, zeros where None) and ``has_soft`` (bool)."""

    def __init__(self, tokenizer: FinsentTokenizer, num_labels: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.num_labels = num_labels

    def __call__(self, batch: Sequence[tuple[Any, ...]]) -> dict[str, torch.Tensor]:
        out = self.tokenizer.pad([item[0] for item in batch])
        out["labels"] = torch.tensor([item[1] for item in batch], dtype=torch.long)
        if batch and len(batch[0]) > 2:
            k = self.num_labels or next((len(item[2]) for item in batch if item[2] is not None), 1)
            out["soft"] = torch.tensor([item[2] if item[2] is not None else [0.0] * k for item in batch],
                                       dtype=torch.float32)
            out["has_soft"] = torch.tensor([item[2] is not None for item in batch], dtype=torch.bool)
        return out


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar-length examples, in random order, split across DDP ranks.

    Each epoch: shuffle all indices (seed + epoch), cut them into blocks of ``group_batches`` batches, sort
    each block by length and cut it into batches, shuffle the batches, then give rank ``r`` batches
    ``r, r + R, r + 2R, ...``. Every rank gets ``floor(n_batches / R)`` batches (a few examples of the last
    batches may be dropped so ranks stay in step).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0, group_batches: int = 50) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        idx = list(range(len(self.lengths)))
        rng.shuffle(idx)
        block = self.batch_size * self.group_batches
        batches: list[list[int]] = []
        for start in range(0, len(idx), block):
            chunk = sorted(idx[start : start + block], key=lambda i: self.lengths[i])
            batches.extend(chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size))
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        n = len(batches) // self.num_replicas
        if n == 0:
            raise DataError(f"{len(self.lengths)} training examples make fewer batches than the "
                            f"{self.num_replicas} workers: lower batch_size or num_workers")
        yield from batches[self.rank : n * self.num_replicas : self.num_replicas]

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size) // self.num_replicas


def class_weight_vector(label_ids: Sequence[int], num_labels: int, mode: str | Sequence[float]) -> torch.Tensor | None:
    """Cross-entropy weights: ``None`` (mode ``none``), ``n / (k * count_c)`` (``balanced``), its square root
    (``sqrt``), or the given numbers."""
    if not isinstance(mode, str):
        if len(mode) != num_labels:
            raise ConfigError(f"class_weights: got {len(mode)} weights for {num_labels} labels")
        return torch.tensor([float(w) for w in mode], dtype=torch.float32)
    if mode == "none":
        return None
    counts = Counter(label_ids)
    missing = [c for c in range(num_labels) if counts.get(c, 0) == 0]
    if missing:
        raise DataError(f"class_weights={mode}: label ids {missing} never occur in the training data; "
                        "use class_weights=none or add examples of every label")
    n = len(label_ids)
    w = torch.tensor([n / (num_labels * counts[c]) for c in range(num_labels)], dtype=torch.float32)
    if mode == "balanced":
        return w
    if mode == "sqrt":
        return w.sqrt()
    raise ConfigError(f"class_weights: unknown mode {mode!r}; choose none, balanced or sqrt")
