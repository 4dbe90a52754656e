"""Request/response schemas of the HTTP API and the strict parser of ``POST /v1/classify`` bodies.

The parser works on raw bytes (not FastAPI's body binding) so that every malformed request gets a 4xx with
a message that says what to fix: invalid UTF-8 and invalid JSON → 400, well-formed JSON of the wrong shape
→ 422, a limit hit → 413 naming the limit. Pure Python + pydantic: testable without Ray.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from classifier.errors import InputError


class ClassifyRequest(BaseModel):
    """Body of ``POST /v1/classify``."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str] = Field(
        ..., min_length=1, description="texts to classify (headlines, posts, article bodies); non-empty strings"
    )
    explain: bool = Field(
        False, description="also return per-token attributions (integrated gradients over the embeddings)"
    )


class Explanation(BaseModel):
    tokens: list[str] = Field(..., description="the tokens the model sees, [CLS] … [SEP], after truncation")
    attributions: list[float] = Field(..., description="one value per token; > 0 pushes towards `target`")
    target: str = Field(..., description="label the attributions explain (the predicted one)")
    method: str
    steps: int
    delta: float = Field(..., description="completeness gap: sum(attributions) − (P(x) − P(baseline))")


class Prediction(BaseModel):
    label: str = Field(..., description="predicted label, e.g. 利多 / 利空 / 其他")
    probabilities: dict[str, float] = Field(..., description="probability per label")
    score: float = Field(..., description="P(利多) − P(利空), in [-1, 1]")
    model_version: str = Field(..., description="<name>@<8 hex of the weights' sha256> of the model that answered")
    explanation: Explanation | None = None


class ClassifyResponse(BaseModel):
    results: list[Prediction]
    model_version: str = Field(..., description="model that answered (all results share it)")


class ModelInfo(BaseModel):
    model_version: str
    labels: list[str]
    base_model: str | None = None
    max_len: int
    truncation: Any = None
    num_compound_tokens: int | None = None
    training_report: dict[str, Any] | None = None
    device: str
    max_batch_size: int
    batch_wait_timeout_s: float
    last_update_error: str | None = Field(
        None, description="why the last live user_config update was rejected (the replica kept its model)"
    )


class Health(BaseModel):
    status: str
    model_version: str


class ErrorBody(BaseModel):
    detail: str = Field(..., description="what is wrong and how to fix it")
    error: str = Field(..., description="machine-readable code, e.g. too_many_texts, invalid_json")
    limit: str | None = Field(None, description="the config limit that was hit, when one was")


@dataclass
class RequestError(Exception):
    """A client error: HTTP ``status``, machine ``code``, human ``message``, optional ``limit`` name."""

    status: int
    code: str
    message: str
    limit: str | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, "error": self.code, "limit": self.limit}


@dataclass(frozen=True)
class Limits:
    max_texts_per_request: int
    max_chars_per_text: int
    max_body_bytes: int
    max_explain_texts: int


def check_content_length(header: str | None, limits: Limits) -> None:
    """Reject a declared body size over the limit before reading the body."""
    if header is None:
        return
    try:
        n = int(header)
    except ValueError:
        raise RequestError(400, "bad_content_length", f"Content-Length {header!r} is not a number") from None
    if n > limits.max_body_bytes:
        raise _body_too_large(n, limits)


def _body_too_large(n: int, limits: Limits) -> RequestError:
    return RequestError(
        413,
        "body_too_large",
        f"request body is {n} bytes, over max_body_bytes={limits.max_body_bytes}: send fewer or shorter texts "
        "per request",
        "max_body_bytes",
    )


def parse_classify_body(raw: bytes, limits: Limits) -> ClassifyRequest:
    """Bytes → validated ``ClassifyRequest``, or ``RequestError``."""
    if len(raw) > limits.max_body_bytes:
        raise _body_too_large(len(raw), limits)
    if not raw.strip():
        raise RequestError(400, "empty_body", 'request body is empty: send JSON like {"texts": ["文本"]}')
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(
            400,
            "invalid_utf8",
            f"request body is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}): encode the JSON "
            "as UTF-8",
        ) from None
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise RequestError(
            400,
            "invalid_json",
            f"request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): send "
            '{"texts": ["文本", ...]}',
        ) from None
    except RecursionError:
        raise RequestError(400, "invalid_json", "request body JSON is nested too deeply") from None
    return validate_classify_payload(data, limits)


def validate_classify_payload(data: Any, limits: Limits) -> ClassifyRequest:
    """Decoded JSON → ``ClassifyRequest``; the checks behind every 422/413 of ``/v1/classify``."""
    if not isinstance(data, dict):
        raise RequestError(
            422, "not_an_object", f'body must be a JSON object like {{"texts": ["文本"]}}, got {_kind(data)}'
        )
    unknown = sorted(set(data) - set(ClassifyRequest.model_fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(ClassifyRequest.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RequestError(
            422, "unknown_field", f"unknown field {unknown[0]!r}{hint}: allowed fields are 'texts' and 'explain'"
        )
    if "texts" not in data:
        raise RequestError(422, "missing_texts", 'field "texts" is missing: send {"texts": ["文本", ...]}')
    texts = data["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, "texts_not_a_list", f'"texts" must be a list of strings, got {_kind(texts)}')
    if not texts:
        raise RequestError(422, "empty_texts", '"texts" is an empty list: send at least one text')
    explain = data.get("explain", False)
    if not isinstance(explain, bool):
        raise RequestError(422, "explain_not_bool", f'"explain" must be true or false, got {_kind(explain)}')
    normalized = validate_texts(texts, limits, explain=explain)
    return ClassifyRequest(texts=normalized, explain=explain)


def validate_texts(texts: Any, limits: Limits, explain: bool = False) -> list[str]:
    """Check count and each text (type, emptiness, normalised length); return the texts unchanged.

    Shared by HTTP and the handle path so both reject exactly the same inputs. The texts go to the
    ``Predictor`` as given (it normalises them itself), so served answers equal in-process ones."""
    from classifier.text import validate_text

    if not isinstance(texts, (list, tuple)):
        raise RequestError(422, "texts_not_a_list", f"texts must be a list of strings, got {_kind(texts)}")
    if len(texts) > limits.max_texts_per_request:
        raise RequestError(
            413,
            "too_many_texts",
            f"{len(texts)} texts in one request, over max_texts_per_request={limits.max_texts_per_request}: "
            "split them over several requests",
            "max_texts_per_request",
        )
    if explain and len(texts) > limits.max_explain_texts:
        raise RequestError(
            413,
            "too_many_texts_to_explain",
            f"explain=true with {len(texts)} texts, over max_explain_texts={limits.max_explain_texts}: "
            "explain fewer texts per request",
            "max_explain_texts",
        )
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise RequestError(422, "text_not_a_string", f"texts[{i}] must be a string, got {_kind(t)}")
        try:
            norm = validate_text(t)
        except InputError as e:
            raise RequestError(422, "empty_text", f"texts[{i}]: {e}") from None
        if len(norm) > limits.max_chars_per_text:
            raise RequestError(
                413,
                "text_too_long",
                f"texts[{i}] has {len(norm)} characters, over max_chars_per_text={limits.max_chars_per_text}: "
                "shorten or split it",
                "max_chars_per_text",
            )
        out.append(t)
    return out


def _kind(v: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if type(v) in names:
        return names[type(v)]
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    return type(v).__name__
