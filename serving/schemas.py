"""Request/response schemas of the HTTP API and the strict parser of ``POST /v1/classify`` bodies.

The parser works on raw bytes (not FastAPI's body binding) so that every malformed request gets a 4xx with
a message that says what to fix: invalid UTF-8 and invalid JSON → 400, well-formed JSON of the wrong shape
→ 422, a limit hit → 413 naming the limit. Pure Python + pydantic: testable without Ray.

The OpenAPI document states exactly what the parser enforces, from the configured ``Limits``
(``openapi_with_limits``): ``minItems``/``maxItems`` on ``texts`` (``maxItems`` drops to ``max_explain_texts``
when ``explain`` is true), ``minLength``/``maxLength`` and a "not blank" ``pattern`` on each text, and the
body-size limit (``x-max-body-bytes``, which JSON Schema cannot express). So a request that is valid against
the schema and within ``max_body_bytes`` is never rejected.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
import sys
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
    model_version: str | None = Field(
        None,
        description="model that answered every text; null when a hot swap happened during the request "
        "(each result names its own model_version)",
    )


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
    """The request limits a replica enforces (the ``ServeConfig`` fields of the same names)."""

    max_texts_per_request: int
    max_chars_per_text: int
    max_body_bytes: int
    max_explain_texts: int

    @classmethod
    def of(cls, config: Any) -> Limits:
        """The limits of a ``ServeConfig`` (or any object with the four fields)."""
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})


#: an unpaired UTF-16 surrogate: JSON's "\\ud800" escape decodes to one, and the tokenizer cannot take it
_SURROGATE = re.compile("[\ud800-\udfff]")


# ---------------------------------------------------------------------------------------------- OpenAPI
#: the path whose request body ``openapi_with_limits`` rewrites
CLASSIFY_PATH = "/v1/classify"
#: OpenAPI extension carrying ``max_body_bytes`` (JSON Schema has no keyword for a body's size in bytes)
MAX_BODY_BYTES_KEY = "x-max-body-bytes"


@functools.cache
def not_blank_pattern() -> str:
    """A regex (valid in ECMA-262 and Python) that a text matches iff it is not blank once normalised.

    "Blank" is what ``classifier.text.validate_text`` rejects: nothing left after NFKC, dropping control and
    zero-width characters and stripping whitespace. A text keeps something iff one of its characters does
    on its own (NFKC composition only ever merges characters into a non-blank one), so the pattern is a
    search for one character outside the set of characters that normalise to nothing. The set is computed
    from ``normalize`` itself (under a second, once per process), so it follows this Python's Unicode tables.
    """
    import unicodedata

    from classifier.text import normalize

    blank: list[int] = []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # lone surrogates cannot be sent in valid UTF-8
        c = chr(cp)
        if (c.isspace() or not c.isprintable() or not unicodedata.is_normalized("NFKC", c)) and not normalize(c):
            blank.append(cp)
    ranges: list[tuple[int, int]] = []
    for cp in blank:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    body = "".join(_esc(a) if a == b else f"{_esc(a)}-{_esc(b)}" for a, b in ranges)
    return f"[^{body}]"


def _esc(cp: int) -> str:
    if cp > 0xFFFF:  # no such blank character today; \u{...} would need the ECMA "u" flag
        raise ValueError(f"U+{cp:X} normalises to nothing: not expressible as a \\uXXXX escape")
    return f"\\u{cp:04x}"


def classify_request_schema(limits: Limits) -> dict[str, Any]:
    """JSON Schema of the ``POST /v1/classify`` body with every check of ``validate_classify_payload``."""
    schema = ClassifyRequest.model_json_schema()
    texts = schema["properties"]["texts"]
    texts.update(
        minItems=1,
        maxItems=limits.max_texts_per_request,
        description=f"{limits.max_texts_per_request} texts at most ({limits.max_explain_texts} with "
        'explain=true): headlines, posts, article bodies',
        items={
            "type": "string",
            "minLength": 1,
            "maxLength": limits.max_chars_per_text,
            "pattern": not_blank_pattern(),
            "description": f"at most {limits.max_chars_per_text} characters (Unicode code points, as sent); "
            "not blank: something must remain after NFKC normalisation and dropping whitespace, control "
            "and zero-width characters; valid Unicode (no unpaired \\ud800-\\udfff escape)",
        },
    )
    schema["if"] = {"properties": {"explain": {"const": True}}, "required": ["explain"]}
    schema["then"] = {"properties": {"texts": {"maxItems": limits.max_explain_texts}}}
    schema[MAX_BODY_BYTES_KEY] = limits.max_body_bytes
    return schema


def openapi_with_limits(openapi: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """A copy of the app's OpenAPI document whose ``/v1/classify`` body schema carries ``limits``."""
    doc = copy.deepcopy(openapi)
    op = doc["paths"][CLASSIFY_PATH]["post"]
    body_note = (
        f"The body may be at most {limits.max_body_bytes} bytes (`max_body_bytes`, also given as "
        f"`{MAX_BODY_BYTES_KEY}`); a larger one gets 413 even when it is valid against the schema."
    )
    op["requestBody"] = {
        "required": True,
        "description": body_note,
        MAX_BODY_BYTES_KEY: limits.max_body_bytes,
        "content": {"application/json": {"schema": classify_request_schema(limits)}},
    }
    op["description"] = f"{op.get('description', '').strip()}\n\n{body_note}".strip()
    op["responses"]["413"]["description"] = (
        f"a limit was hit (`limit` names it): body over {limits.max_body_bytes} bytes (`max_body_bytes`), "
        f"more than {limits.max_texts_per_request} texts (`max_texts_per_request`), more than "
        f"{limits.max_explain_texts} with explain (`max_explain_texts`), or a text over "
        f"{limits.max_chars_per_text} characters (`max_chars_per_text`)"
    )
    return doc


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
    """Check count and each text (type, blank after normalisation, length); return the texts unchanged.

    Shared by HTTP and the handle path so both reject exactly the same inputs. The length limit counts the
    characters (code points) as sent, like JSON Schema's ``maxLength``, so the published schema is exact.
    The texts go to the ``Predictor`` as given (it normalises them itself), so served answers equal
    in-process ones."""
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
        bad = _SURROGATE.search(t)
        if bad:
            raise RequestError(
                422,
                "invalid_unicode",
                f"texts[{i}] has an unpaired surrogate \\u{ord(bad.group()):04x} at character {bad.start()}: send "
                "valid Unicode (a character outside the BMP is one \\ud83d\\ude00-style pair, or raw UTF-8)",
            )
        if len(t) > limits.max_chars_per_text:
            raise RequestError(
                413,
                "text_too_long",
                f"texts[{i}] has {len(t)} characters, over max_chars_per_text={limits.max_chars_per_text}: "
                "shorten or split it",
                "max_chars_per_text",
            )
        try:
            validate_text(t)
        except InputError as e:
            raise RequestError(422, "empty_text", f"texts[{i}]: {e}") from None
        out.append(t)
    return out


def _kind(v: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if type(v) in names:
        return names[type(v)]
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    return type(v).__name__
