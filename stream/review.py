"""Review routing: labelled records the model is unsure of ALSO go to a review topic (pure, no Kafka).

A record whose top probability is below ``review_threshold`` is produced twice: to the output topic as usual
and, unchanged (same key, value and headers) plus the header ``finsent-review-threshold``, to the review topic
(default ``<output_topic>.review``), where people or a labelling tool pick it up and post corrections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stream.codec import OutputRecord

#: header on review records: the threshold the record's top probability fell below
HEADER_REVIEW_THRESHOLD = "finsent-review-threshold"


def top_probability(prediction: Mapping[str, Any]) -> float:
    """The largest class probability of a prediction dict (its confidence)."""
    return float(max(prediction["probabilities"].values()))


def needs_review(prediction: Mapping[str, Any], threshold: float | None) -> bool:
    """True when review is on (threshold set and > 0) and the top probability is below the threshold."""
    return bool(threshold) and top_probability(prediction) < float(threshold)  # type: ignore[arg-type]


def review_record(output: OutputRecord, threshold: float) -> OutputRecord:
    """The review copy of an output record: the same key and value, plus the threshold header."""
    headers = [(k, v) for k, v in output.headers if k != HEADER_REVIEW_THRESHOLD]
    headers.append((HEADER_REVIEW_THRESHOLD, f"{threshold:g}".encode()))
    return OutputRecord(key=output.key, value=output.value, headers=headers)
