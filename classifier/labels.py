"""Label sets. The default is the seed's three classes; any list of names can be configured."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from classifier.errors import ConfigError

#: neutral, bullish, bearish — in the seed's order (ids 0, 1, 2).
DEFAULT_LABELS: tuple[str, ...] = ("其他", "利多", "利空")
#: label whose probability counts positively in ``score``
POSITIVE_LABEL = "利多"
#: label whose probability counts negatively in ``score``
NEGATIVE_LABEL = "利空"


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of label names; ids are positions."""

    names: tuple[str, ...] = DEFAULT_LABELS
    positive: str | None = POSITIVE_LABEL
    negative: str | None = NEGATIVE_LABEL

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if len(names) < 2:
            raise ConfigError(f"labels: need at least two label names, got {list(names)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"labels: names must be unique, got {list(names)}")
        if any(not n or "|||" in n for n in names):
            raise ConfigError(f"labels: names must be non-empty and must not contain '|||', got {list(names)}")
        # score = P(positive) - P(negative) only when both exist in this label set
        if self.positive not in names:
            object.__setattr__(self, "positive", None)
        if self.negative not in names:
            object.__setattr__(self, "negative", None)

    @classmethod
    def of(cls, names: Sequence[str] | LabelSet | None) -> LabelSet:
        if isinstance(names, LabelSet):
            return names
        return cls(tuple(names) if names else DEFAULT_LABELS)

    def __len__(self) -> int:
        return len(self.names)

    def id(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"unknown label {name!r}: expected one of {list(self.names)}") from None

    def name(self, idx: int) -> str:
        return self.names[idx]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    def score(self, probs: Sequence[float]) -> float:
        """``P(利多) − P(利空)``; 0.0 when the label set has no such pair."""
        pos = probs[self.id(self.positive)] if self.positive else 0.0
        neg = probs[self.id(self.negative)] if self.negative else 0.0
        return float(pos - neg)
