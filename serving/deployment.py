"""The finsent Serve deployment: one replica = one ``Predictor`` behind a FastAPI ingress and a handle API.

Request flow inside a replica::

    POST /v1/classify ─┐  parse + validate (4xx)           ┌─ _predict_batch(text)  ×N  ──► @serve.batch
    handle.classify  ──┴─► classify_valid(texts) ──────────┤    (texts of all callers share batches;
                                                            │     one batch = one model forward)
                                                            └─ explain=true: predict + attributions, unbatched

Model work runs on one dedicated thread (``_model_executor``) so the event loop keeps accepting requests and
filling the next batch while the current one runs. The ``Predictor`` sorts each batch by token length.

Hot swap: ``reconfigure(user_config)`` with a new ``model_dir`` loads the new ``Predictor`` on another thread,
then replaces the reference in one assignment. A batch takes its predictor reference when it starts, so
batches in flight finish on the old model; every answer carries the ``model_version`` that produced it.

No ``from __future__ import annotations`` here: FastAPI must see ``request: Request`` as a class in the
methods that Serve's ingress wraps.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve

from classifier.drift import DriftConfig, DriftMonitor, DriftStatus, load_reference
from classifier.errors import ConfigError, InputError
from serving.config import MAX_BATCH_SIZE_LIMIT, BatchingUpdate, ServeConfig, format_validation_error
from serving.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorBody,
    Health,
    Limits,
    ModelInfo,
    RequestError,
    check_content_length,
    openapi_with_limits,
    parse_classify_body,
    validate_texts,
)

log = logging.getLogger(__name__)

#: name of the deployment inside the app (``serve status`` shows it; serve.yaml's ``deployments[].name``)
DEPLOYMENT_NAME = "FinsentClassifier"
#: validation failures that concern the whole call, not one text (raised even with errors="return")
_WHOLE_REQUEST_ERRORS = frozenset({"texts_not_a_list", "too_many_texts", "too_many_texts_to_explain"})

api = FastAPI(
    title="finsent",
    version="1",
    description="Sentiment of Chinese financial news: 利多 (bullish) / 利空 (bearish) / 其他 (neutral).",
    # served by the deployment itself (http_openapi, http_docs): the schema carries the configured limits
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "body is not UTF-8 JSON"},
    413: {"model": ErrorBody, "description": "a limit was hit (`limit` names it)"},
    422: {"model": ErrorBody, "description": "JSON of the wrong shape, empty list or empty text"},
}


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(RequestError(422, "invalid_request", f"invalid request: {exc.errors()}").body(), 422)


# Helpers live above the class: @serve.deployment pickles the class (by value, through serve.ingress)
# when it is defined, so names defined after it would be missing in the replica.
def _predict_isolated(predictor: Any, texts: list[str]) -> tuple[list[dict[str, Any] | Exception], int]:
    """Predict a batch; if one text is rejected, retry one by one so only that text fails."""
    before = predictor.forward_calls
    try:
        results: list[dict[str, Any] | Exception] = list(predictor.predict(texts))
    except InputError:
        results = []
        for t in texts:
            try:
                results.append(predictor.predict([t])[0])
            except InputError as e:
                results.append(e)
    return results, predictor.forward_calls - before


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (unit tests)
        return "local"


def _pick_device(device: str) -> str:
    """``auto`` → cuda when this replica got a GPU (Ray sets CUDA_VISIBLE_DEVICES), else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but this replica sees no GPU: set num_gpus=1 (or device=auto)")
    return device


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress(api)
class FinsentDeployment:
    """Serve deployment; build it with ``serving.app.build_app`` (which sets resources and autoscaling)."""

    def __init__(self, config: dict[str, Any]) -> None:
        from serving.metrics import ReplicaMetrics

        self._cfg = ServeConfig.model_validate(config)
        if not self._cfg.model_dir:
            raise ConfigError("model_dir is not set: pass model_dir=/path/to/model to build_app")
        self._limits = Limits.of(self._cfg)
        self._openapi: dict[str, Any] | None = None  # built on first GET /openapi.json
        self._device = _pick_device(self._cfg.device)
        # one thread owns the model: batches and explanations never run concurrently on it
        self._model_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finsent-model")
        self._metrics = ReplicaMetrics()
        # drift alarm over this replica's predictions (reference: the model directory's, else its first texts)
        self._drift = DriftMonitor(DriftConfig(), load_reference(self._cfg.model_dir))
        self._replica_id = _replica_id()
        self._model_dir = self._cfg.model_dir
        self._predictor = self._load(self._model_dir)
        self._set_batching(self._cfg.max_batch_size, self._cfg.batch_wait_timeout_s)
        self._started = False  # becomes True after the first reconfigure (Serve calls it right after __init__)
        self._last_update_error: str | None = None

    # ------------------------------------------------------------------------------------------- lifecycle
    def _load(self, model_dir: str, quantize: str | None = None, backend: str | None = None) -> Any:
        from classifier.predict import Predictor

        t0 = time.perf_counter()
        if quantize is None:
            quantize = self._cfg.quantize if self._device == "cpu" else "none"
        if backend is None:
            backend = self._cfg.backend if self._device == "cpu" else "torch"
        # batch_size at the ceiling of max_batch_size: one Serve batch is exactly one forward call
        predictor = Predictor.from_dir(model_dir, device=self._device, batch_size=MAX_BATCH_SIZE_LIMIT,
                                       quantize=quantize, backend=backend)
        log.info("replica loaded %s from %s on %s in %.1fs", predictor.model_version, model_dir,
                 self._device, time.perf_counter() - t0)
        return predictor

    def _set_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        self._predict_batch.set_max_batch_size(max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self._batching = (max_batch_size, batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Live changes from ``user_config``: batch size, wait timeout, model directory (hot swap).

        At startup (the first call, right after ``__init__``) a bad user_config raises, so the deploy fails
        loudly. Later, on a running replica, it must not: Serve would stop the replica and every retry would
        fail the same way, turning a typo into an outage. So a bad update is logged at ERROR, counted, shown
        as ``last_update_error`` in ``stats()`` and ``GET /v1/model``, and the replica keeps its current model
        and settings.
        """
        try:
            await self._apply(user_config)
            self._last_update_error = None
        except Exception as e:
            if not self._started:
                raise
            self._last_update_error = f"{type(e).__name__}: {e}"
            self._metrics.record_rejection("bad_user_config")
            log.error("user_config update rejected, still serving %s: %s", self._predictor.model_version, e)
        finally:
            self._started = True

    async def _apply(self, user_config: dict[str, Any]) -> None:
        from pydantic import ValidationError

        try:
            update = BatchingUpdate.model_validate(user_config or {})
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, BatchingUpdate)) from None
        if update.model_dir and update.model_dir != self._model_dir:
            # load on the default executor so batches keep running on the model thread meanwhile
            new = await asyncio.get_running_loop().run_in_executor(None, self._load, update.model_dir)
            reference = load_reference(update.model_dir)  # before the swap: a bad file keeps the old model
            old_version = self._predictor.model_version
            self._predictor, self._model_dir = new, update.model_dir  # the swap: one reference assignment
            self._drift.set_reference(reference)  # None: learned from the new model's first predictions
            self._metrics.record_swap()
            log.info("hot-swapped model %s -> %s", old_version, new.model_version)
        # Serve itself warns if max_batch_size exceeds the deployment's max_ongoing_requests
        self._set_batching(update.max_batch_size, update.batch_wait_timeout_s)

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy and replaces it."""
        if self._predictor is None:
            raise RuntimeError("no model loaded")

    # ------------------------------------------------------------------------------------------- handle API
    async def classify(
        self, texts: list[str], explain: bool = False, errors: str = "raise"
    ) -> list[dict[str, Any]]:
        """Handle path (used by ``stream/``): texts → prediction dicts, batched with all other callers.

        ``errors="raise"`` raises ``InputError`` for the first bad text (nothing is classified).
        ``errors="return"`` classifies the good texts and puts ``{"error": "...", "error_type": "InputError"}``
        in place of each bad one, so one bad record never costs the others. Too many texts always raises.
        """
        if errors not in ("raise", "return"):
            raise InputError(f"errors={errors!r}: use 'raise' or 'return'")
        try:
            validate_texts(texts, self._limits, explain=explain)
        except RequestError as e:
            if errors == "raise" or e.code in _WHOLE_REQUEST_ERRORS:
                raise InputError(e.message) from None
            return await self._classify_some(texts, explain)
        return await self.classify_valid(texts, explain)

    async def _classify_some(self, texts: list[str], explain: bool) -> list[dict[str, Any]]:
        """errors="return" with some bad texts: classify the good ones, report each bad one in its place."""
        out: list[dict[str, Any]] = [{} for _ in texts]
        good: list[int] = []
        for i, t in enumerate(texts):
            try:
                validate_texts([t], self._limits)
                good.append(i)
            except RequestError as e:
                out[i] = {"error": e.message.replace("texts[0]", f"texts[{i}]"), "error_type": "InputError"}
        if good:
            results = await self.classify_valid([texts[i] for i in good], explain)
            for i, r in zip(good, results, strict=True):
                out[i] = r
        return out

    async def stats(self) -> dict[str, Any]:
        """Counters of this replica (forward calls, batch sizes, labels, swaps) and its live settings."""
        return {
            **self._metrics.snapshot(),
            "model_version": self._predictor.model_version,
            "model_dir": self._model_dir,
            "max_batch_size": self._batching[0],
            "batch_wait_timeout_s": self._batching[1],
            "device": str(self._device),
            "replica": self._replica_id,
            "last_update_error": self._last_update_error,
        }

    async def model_info(self) -> dict[str, Any]:
        return {
            **self._predictor.info(),
            "device": str(self._device),
            "max_batch_size": self._batching[0],
            "batch_wait_timeout_s": self._batching[1],
            "last_update_error": self._last_update_error,
        }

    # ------------------------------------------------------------------------------------------- prediction
    async def classify_valid(self, texts: list[str], explain: bool = False) -> list[dict[str, Any]]:
        """Texts already validated → predictions (each text joins the shared batch queue)."""
        if explain:
            return await self._explain(texts)
        results = await asyncio.gather(*(self._predict_batch(t) for t in texts))
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)  # real values set from config in __init__
    async def _predict_batch(self, texts: list[str]) -> list[dict[str, Any] | Exception]:
        predictor = self._predictor  # snapshot: a hot swap mid-batch never mixes models within a batch
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        results, n_forward = await loop.run_in_executor(self._model_executor, _predict_isolated, predictor, texts)
        self._metrics.record_batch(len(texts), n_forward, (time.perf_counter() - t0) * 1000)
        ok = [r for r in results if not isinstance(r, Exception)]
        self._metrics.record_predictions(ok, predictor.labels)
        self._watch_drift(ok)
        return results

    def _watch_drift(self, predictions: list[dict[str, Any]]) -> None:
        """Feed the drift monitor; an alert is a WARNING line and a counter (best effort, never fails a batch)."""
        try:
            alerts = self._drift.update(predictions)
        except Exception:
            log.exception("the drift monitor failed on a batch; serving goes on")
            return
        for a in alerts:
            top = a["top_shifted_label"]
            log.warning("DRIFT ALERT %s window (last %g %s): %s = %.3f crossed %g; label %s share %.1f%% -> %.1f%%; "
                        "model %s", a["window"]["kind"], a["window"]["size"], a["window"]["unit"], a["statistic"],
                        a["value"], a["threshold"], top["label"], 100 * top["reference_share"],
                        100 * top["window_share"], a["model_version"])
        self._metrics.record_drift(self._drift.gauges(), alerts)

    async def drift(self) -> dict[str, Any]:
        """This replica's drift monitor: reference, thresholds, each window's latest statistics, last alert."""
        return self._drift.status()

    async def _explain(self, texts: list[str]) -> list[dict[str, Any]]:
        from classifier.explain import explain

        predictor = self._predictor
        if not predictor.explainable:
            # gradients need float weights: keep one fp32 copy of the current model for explanations
            if getattr(self, "_explain_fp32", None) is None or self._explain_fp32[0] != self._model_dir:
                self._explain_fp32 = (self._model_dir, self._load(self._model_dir, quantize="none", backend="torch"))
            predictor = self._explain_fp32[1]
        cfg = self._cfg

        def work() -> tuple[list[dict[str, Any]], int]:
            before = predictor.forward_calls
            preds = predictor.predict(texts)
            exps = explain(predictor, texts, targets=[p["label"] for p in preds], method=cfg.explain_method,
                           steps=cfg.explain_steps)
            for p, e in zip(preds, exps, strict=True):
                p["explanation"] = e
            return preds, predictor.forward_calls - before

        results, n_forward = await asyncio.get_running_loop().run_in_executor(self._model_executor, work)
        self._metrics.record_forward(n_forward)
        self._metrics.record_predictions(results, predictor.labels)
        self._metrics.n_explained += len(texts)
        return results

    # ------------------------------------------------------------------------------------------- HTTP API
    @api.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=_ERRORS,
        summary="Classify texts",
        openapi_extra={
            "requestBody": {
                "required": True,
                # the shape only; GET /openapi.json serves it with the configured limits (openapi_with_limits)
                "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
            }
        },
    )
    async def http_classify(self, request: Request) -> JSONResponse:
        """Per text: label, probabilities, score = P(利多) − P(利空), model_version (+ explanation)."""
        try:
            check_content_length(request.headers.get("content-length"), self._limits)
            raw = await request.body()
            req = parse_classify_body(raw, self._limits)
        except RequestError as e:
            self._metrics.record_rejection(e.code)
            return JSONResponse(e.body(), status_code=e.status)
        results = await self.classify_valid(req.texts, req.explain)
        versions = {r["model_version"] for r in results}
        return JSONResponse({"results": results, "model_version": versions.pop() if len(versions) == 1 else None})

    @api.get("/v1/model", response_model=ModelInfo, summary="The model this replica serves")
    async def http_model(self) -> JSONResponse:
        return JSONResponse(await self.model_info())

    @api.get("/v1/drift", response_model=DriftStatus, summary="Drift of this replica's predictions")
    async def http_drift(self) -> JSONResponse:
        """Label, confidence and score distributions of the recent predictions against the reference."""
        return JSONResponse(await self.drift())

    @api.get("/healthz", response_model=Health, summary="Liveness: the replica has a model loaded")
    async def http_health(self) -> JSONResponse:
        return JSONResponse({"status": "ok", "model_version": self._predictor.model_version})

    @api.get("/openapi.json", include_in_schema=False)
    async def http_openapi(self, request: Request) -> JSONResponse:
        """The OpenAPI document with this app's configured request limits (see ``openapi_with_limits``)."""
        if self._openapi is None:
            # off the event loop: the first call computes the "not blank" pattern (under a second)
            self._openapi = await asyncio.to_thread(openapi_with_limits, request.app.openapi(), self._limits)
        doc = self._openapi
        root_path = request.scope.get("root_path", "").rstrip("/")
        if root_path:  # behind a route_prefix: tell clients where the API lives (as FastAPI's own route does)
            doc = {**doc, "servers": [{"url": root_path}]}
        return JSONResponse(doc)

    @api.get("/docs", include_in_schema=False)
    async def http_docs(self, request: Request) -> HTMLResponse:
        root_path = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root_path}/openapi.json", title="finsent - Swagger UI")
