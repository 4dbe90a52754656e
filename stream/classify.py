"""The classifier seam of the runner: ``Classify = Callable[[list[str]], list[dict]]``.

Two adapters build one from a ``StreamConfig``: the in-process core ``Predictor`` (``model_dir``), or a
running Ray Serve app (``serve_app``) through its ``DeploymentHandle``. The runner knows nothing else about
the model, so tests and benchmarks can pass any callable with the same contract: one prediction dict
(``label``, ``probabilities``, ``score``, ``model_version``) per text, in order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from stream.config import StreamConfig

log = logging.getLogger(__name__)

Classify = Callable[[list[str]], list[dict[str, Any]]]


def predictor_classify(
    model_dir: str, *, device: str = "cpu", batch_size: int = 32, num_threads: int | None = None,
    backend: str = "torch", quantize: str = "none",
) -> Classify:
    """``Predictor.from_dir(model_dir).predict`` (the core's one inference path); ``backend`` / ``quantize``
    apply on CPU (on cuda: torch, bf16)."""
    import torch

    from classifier.predict import Predictor

    if num_threads is not None:
        torch.set_num_threads(max(1, num_threads))
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    predictor = Predictor.from_dir(model_dir, device=device, batch_size=batch_size,
                                   backend=backend if on_cpu else "torch", quantize=quantize if on_cpu else "none",
                                   threads=num_threads)
    return predictor.predict


class ServeClassify:
    """Classify through a running Serve app's handle (``serving.deployment.FinsentDeployment.classify``).

    A batch is cut into calls of ``chunk`` texts (keep it <= the app's ``max_texts_per_request``) that run
    concurrently, so Serve can spread them over replicas and ``@serve.batch`` can merge them. Calls use
    ``errors="return"``: a text the app rejects comes back as ``{"error": ..., "error_type": ...}`` in its place
    and only that record goes to the DLQ."""

    def __init__(self, app_name: str, method: str, *, chunk: int = 32, ray_address: str = "auto",
                 timeout_s: float = 120.0) -> None:
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=ray_address, log_to_driver=False)
        self.handle = serve.get_app_handle(app_name)
        self.method = method
        self.chunk = max(1, chunk)
        self.timeout_s = timeout_s
        log.info("classifying through Serve app %r (handle method %s)", app_name, method)

    def __call__(self, texts: list[str]) -> list[dict[str, Any]]:
        call = getattr(self.handle, self.method)
        responses = [
            call.remote(texts[i : i + self.chunk], errors="return") for i in range(0, len(texts), self.chunk)
        ]
        out: list[dict[str, Any]] = []
        for r in responses:
            out.extend(_as_dicts(r.result(timeout_s=self.timeout_s)))
        return out


def _as_dicts(results: Any) -> list[dict[str, Any]]:
    """Serve may answer dicts, pydantic models, or a response object with ``results``."""
    if hasattr(results, "results"):
        results = results.results
    elif isinstance(results, dict) and "results" in results:
        results = results["results"]
    return [r.model_dump() if hasattr(r, "model_dump") else dict(r) for r in results]


def build_classify(config: StreamConfig, *, workers_on_host: int = 1) -> Classify:
    """The classifier ``config`` asks for: Serve handle when ``serve_app`` is set, else a local Predictor.

    Torch threads: ``torch_threads`` if set; else, with several worker processes on one host, each Predictor
    gets ``cpu_count / workers`` (unless OMP_NUM_THREADS is set) so that the workers do not fight over cores."""
    if config.serve_app is not None:
        return ServeClassify(
            config.serve_app, config.serve_method, chunk=config.predict_batch_size, ray_address=config.ray_address
        )
    if config.model_dir is None:  # StreamConfig validation prevents this
        raise ValueError("model_dir is not set")
    threads = config.torch_threads
    if threads is None and workers_on_host > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers_on_host)
    return predictor_classify(
        config.model_dir, device=config.device, batch_size=config.predict_batch_size, num_threads=threads,
        backend=config.backend, quantize=config.quantize,
    )
