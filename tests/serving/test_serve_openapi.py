"""The served OpenAPI document against the served app: schemathesis generates requests from
``GET /openapi.json`` of a real local Ray Serve app (tiny random model) and checks every answer.

Checks: no 5xx, every status is documented, every body matches its response schema, and no schema-valid
request is refused (``positive_data_acceptance``: a 4xx for a positive case fails). The limits are set so
that no schema-valid body can exceed ``max_body_bytes`` (the one limit JSON Schema cannot express).
"""

from __future__ import annotations

import urllib.request

import pytest
from serving_testutil import free_port, start_serve_http

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("ray.serve")

from hypothesis import HealthCheck, given, settings  # noqa: E402 - after the skips
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_TEXTS, MAX_CHARS, MAX_EXPLAIN = 4, 48, 2
#: longest schema-valid body: every character sent as a 12-byte surrogate-pair escape, plus the punctuation
WORST_CASE_BODY = MAX_TEXTS * (MAX_CHARS * 12 + 4) + 64
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, positive_data_acceptance]


@pytest.fixture(scope="module")
def served(ray_local, tiny_model_dir):
    from ray import serve

    from serving.app import build_app
    from serving.config import make_config

    port = free_port()
    cfg = make_config(
        model_dir=str(tiny_model_dir), num_cpus=0.5, num_gpus=0, min_replicas=1, max_replicas=1,
        max_batch_size=8, batch_wait_timeout_s=0.0, max_ongoing_requests=16, max_texts_per_request=MAX_TEXTS,
        max_chars_per_text=MAX_CHARS, max_body_bytes=WORST_CASE_BODY, max_explain_texts=MAX_EXPLAIN,
        explain_steps=4, app_name="finsent-openapi", port=port,
    )
    start_serve_http(port)
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
    yield cfg
    serve.shutdown()


@pytest.fixture(scope="module")
def served_schema(served):
    return schemathesis.openapi.from_url(f"{served.base_url()}/openapi.json")


def test_served_schema_carries_the_configured_limits(served_schema, served):
    op = served_schema.raw_schema["paths"]["/v1/classify"]["post"]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    texts = body["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, MAX_TEXTS)
    assert (texts["items"]["minLength"], texts["items"]["maxLength"]) == (1, MAX_CHARS)
    assert body["then"]["properties"]["texts"]["maxItems"] == MAX_EXPLAIN
    assert body["x-max-body-bytes"] == op["requestBody"]["x-max-body-bytes"] == served.max_body_bytes
    assert {"/v1/classify", "/v1/model", "/healthz"} <= set(served_schema.raw_schema["paths"])
    assert "/openapi.json" not in served_schema.raw_schema["paths"]  # served, not listed
    with urllib.request.urlopen(f"{served.base_url()}/docs", timeout=30) as r:  # Swagger UI on the same doc
        assert r.status == 200 and "/openapi.json" in r.read().decode()


#: examples per operation and mode; the app answers a tiny-model request in ~10-50 ms on a busy 2-CPU box
EXAMPLES = 100


def _run(operation, mode, examples: int = EXAMPLES) -> int:
    """Generate ``examples`` cases of ``operation`` in ``mode`` and call the app with each; return how many
    ran. Any check failing raises (Hypothesis reports the smallest failing request)."""
    sent = []

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case):
        case.call_and_validate(checks=CHECKS)
        sent.append(case)

    call()
    return len(sent)


def test_generated_requests_pass_every_check(served_schema):
    """Every operation of the served schema. Positive cases (valid against it) must get 200; negative ones
    (invalid bodies) a documented 4xx; never a 5xx or an answer that does not match its documented schema."""
    from schemathesis import GenerationMode

    ran = {}
    for result in served_schema.get_all_operations():
        op = result.ok()
        ran[(op.label, "positive")] = _run(op, GenerationMode.POSITIVE)
        if op.method.upper() == "POST":
            ran[(op.label, "negative")] = _run(op, GenerationMode.NEGATIVE)
    labels = {label for label, _ in ran}
    assert {"POST /v1/classify", "GET /v1/model", "GET /healthz"} <= labels  # and any newer endpoint
    assert ran[("POST /v1/classify", "positive")] >= EXAMPLES // 2
    assert ran[("POST /v1/classify", "negative")] >= EXAMPLES // 2


@pytest.mark.parametrize(
    "body",
    [
        {"texts": ["涨" * MAX_CHARS] * MAX_TEXTS},  # every limit at its maximum
        {"texts": ["\U0001f4c8" * MAX_CHARS] * MAX_TEXTS},  # astral characters: 1 code point each
        {"texts": ["利好"] * MAX_EXPLAIN, "explain": True},
        {"texts": [" \u3000\u200b好 "]},  # one character that survives normalisation is enough
        {"texts": ["\u0301"], "explain": False},
    ],
    ids=["max-everything", "astral", "max-explain", "blanks-around-one-char", "combining-mark"],
)
def test_boundary_requests_valid_against_the_schema_are_answered(served_schema, body):
    import jsonschema

    op = served_schema["/v1/classify"]["POST"]
    raw = served_schema.raw_schema["paths"]["/v1/classify"]["post"]
    jsonschema.validate(body, raw["requestBody"]["content"]["application/json"]["schema"])
    case = op.Case(body=body, media_type="application/json")
    response = case.call()
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(body["texts"])
    assert all(set(r["probabilities"]) == {"其他", "利多", "利空"} for r in results)
    case.validate_response(response, checks=CHECKS[:3])
