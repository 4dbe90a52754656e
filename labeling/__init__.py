"""Batch labelling of news archives on Ray Data (``finsent label``): JSONL/CSV/Parquet/txt in, one row per
document with label, probabilities, score and model version out, in resumable shards.

Importing this package is cheap (no Ray, no torch); the run lives in :mod:`labeling.batch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labeling.batch import LabelSummary, run_label
    from labeling.config import LabelConfig

__all__ = ["LabelConfig", "LabelSummary", "run_label"]


def __getattr__(name: str) -> Any:
    if name == "LabelConfig":
        from labeling.config import LabelConfig

        return LabelConfig
    if name in ("LabelSummary", "run_label"):
        from labeling import batch

        return getattr(batch, name)
    raise AttributeError(name)
