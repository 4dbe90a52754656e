"""The one typed config of the finsent Serve application.

``ServeConfig`` is a flat pydantic model so that it doubles as the *typed builder argument* of
``serving.app:build_app`` (``serve run serving.app:build_app model_dir=...`` hands every ``key=value`` to
it) and as the body of ``cluster/serve.yaml``'s ``args:``. It derives from :class:`classifier.config.Config`,
so ``finsent serve`` / ``finsent classify`` read it with the grammar of every finsent command (``--config
x.yaml max_batch_size=16``, ``--help-config``, ``--print-config``); ``load_serve_config`` does the same in code.

Fields fall in five groups: model, batching (changeable live through ``user_config``), scaling and
back-pressure, request limits, HTTP. Importing this module is cheap (pydantic only; no Ray, no torch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from classifier import config as _config
from classifier.config import Config
from classifier.errors import ConfigError

log = logging.getLogger(__name__)

#: Upper bound of ``max_batch_size``; the replica's ``Predictor`` is built with this batch size so that a
#: Serve batch is always exactly one model forward call.
MAX_BATCH_SIZE_LIMIT = 512


class ServeConfig(Config):
    """Settings of the finsent Serve application (one deployment with a FastAPI ingress)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
    example_overrides = ("model_dir=runs/finetune",)

    # ---- model -------------------------------------------------------------------------------------------
    model_dir: str | None = Field(
        None,
        description="finsent model directory (written by `finsent finetune`) that replicas load. Required to "
        "build the app. Changing it live through user_config hot-swaps the model without dropping requests.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where replicas run the model: auto = cuda when the replica got a GPU, else cpu. On cuda "
        "the forward pass runs under bf16 autocast.",
    )
    quantize: Literal["none", "int8", "auto"] = Field(
        "none",
        description="int8 = dynamic int8 Linear layers (per-channel weights) on CPU replicas, for about half a "
        "point of macro-F1; the speed-up depends on the CPU (about 3x with AVX-512 VNNI, about 1.05x with torch "
        "on an AVX2-only host: see docs/serving.md). auto = measure fp32 and int8 on the replica's CPU at load "
        "time and keep the faster one within tolerance. model_version ends in +int8 (+onnx-int8 with "
        "backend=onnx). Explanations still use fp32 weights (loaded on first use). Ignored on cuda replicas.",
    )
    backend: Literal["torch", "onnx", "auto"] = Field(
        "torch",
        description="what runs the model on CPU replicas: torch (eager), onnx (ONNX Runtime; the graph is "
        "exported once and cached in the model directory's onnx/, model_version ends in +onnx), or auto "
        "(measure torch and onnx on the replica's CPU at load time, keep the fastest within tolerance of torch "
        "fp32, cache the decision). Ignored on cuda replicas (torch + bf16).",
    )

    # ---- batching (live: user_config) ---------------------------------------------------------------------
    max_batch_size: int = Field(
        32,
        ge=1,
        le=MAX_BATCH_SIZE_LIMIT,
        description="most texts one @serve.batch call (= one model forward) takes; texts from different "
        "requests share a batch. Changeable live via user_config.",
    )
    batch_wait_timeout_s: float = Field(
        0.01,
        ge=0.0,
        le=10.0,
        description="seconds a replica waits for a batch to fill before running it anyway; higher = bigger "
        "batches, more latency. Changeable live via user_config.",
    )

    # ---- scaling and back-pressure -----------------------------------------------------------------------
    min_replicas: int = Field(1, ge=0, description="autoscaling floor (0 allows scale to zero).")
    max_replicas: int = Field(4, ge=1, description="autoscaling ceiling; must be >= min_replicas.")
    initial_replicas: int | None = Field(
        None, ge=0, description="replicas at deploy time (default: min_replicas); within [min, max]."
    )
    target_ongoing_requests: float = Field(
        16.0,
        gt=0,
        description="autoscaler's target of in-flight requests per replica; near max_batch_size keeps batches "
        "full without queueing for long.",
    )
    upscale_delay_s: float = Field(10.0, ge=0, description="seconds load must stay high before adding replicas.")
    downscale_delay_s: float = Field(
        300.0, ge=0, description="seconds load must stay low before removing replicas."
    )
    max_ongoing_requests: int = Field(
        64,
        ge=1,
        description="in-flight requests one replica accepts; must be >= max_batch_size or batches can never "
        "fill from single-text requests.",
    )
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="requests that may wait for a replica (per caller) before new ones get HTTP 503 "
        "(back-pressure); -1 = unbounded.",
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica (fractions allowed, e.g. 0.5).")
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs per replica; unset = auto: 1 when the Ray cluster (or, before Ray starts, this "
        "machine) has a GPU, else 0. Fractions share a GPU.",
    )

    # ---- request limits ------------------------------------------------------------------------------------
    max_texts_per_request: int = Field(
        64, ge=1, description="most texts one POST /v1/classify (or handle call) may carry; more → 413."
    )
    max_chars_per_text: int = Field(
        10_000,
        ge=1,
        description="most characters per text, counted as sent (Unicode code points, like JSON Schema "
        "maxLength, so /openapi.json states it exactly); longer → 413.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=64, description="largest accepted HTTP request body in bytes; larger → 413."
    )
    max_explain_texts: int = Field(
        8, ge=1, description="most texts per request when explain=true (attributions cost ~steps forwards each)."
    )
    explain_method: Literal["integrated_gradients", "grad_x_input"] = Field(
        "integrated_gradients", description="attribution method for explain=true."
    )
    explain_steps: int = Field(
        32, ge=1, le=512, description="interpolation steps of integrated gradients (ignored by grad_x_input)."
    )

    # ---- HTTP / application ----------------------------------------------------------------------------------
    app_name: str = Field("finsent", min_length=1, description="Serve application name (handles look it up).")
    route_prefix: str = Field("/", description="HTTP path prefix of the app; the API lives at <prefix>/v1/...")
    host: str = Field(
        "127.0.0.1",
        description="address the Serve HTTP proxy binds (used by `finsent serve` and `finsent classify`); "
        "keep loopback unless the port is firewalled.",
    )
    port: int = Field(8000, ge=1, le=65535, description="port of the Serve HTTP proxy.")

    # ---- validators ------------------------------------------------------------------------------------------
    @field_validator("model_dir")
    @classmethod
    def _model_dir_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not str(v).strip():
            raise ValueError("is empty: pass model_dir=/path/to/model (a directory from `finsent finetune`)")
        return str(Path(v).expanduser()) if v is not None else None

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix_slash(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"{v!r} must start with '/': write e.g. route_prefix=/ or route_prefix=/finsent")
        return v.rstrip("/") or "/"

    @model_validator(mode="after")
    def _cross_field(self) -> ServeConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas}): "
                "raise max_replicas or lower min_replicas"
            )
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError(
                f"initial_replicas ({self.initial_replicas}) must lie within min_replicas..max_replicas "
                f"({self.min_replicas}..{self.max_replicas}): change it or leave it unset"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size ({self.max_batch_size}): "
                "a replica could never fill a batch; set max_ongoing_requests >= max_batch_size"
            )
        if self.max_explain_texts > self.max_texts_per_request:
            raise ValueError(
                f"max_explain_texts ({self.max_explain_texts}) > max_texts_per_request "
                f"({self.max_texts_per_request}): lower max_explain_texts"
            )
        return self

    # ---- derived settings ----------------------------------------------------------------------------------
    def user_config(self) -> dict[str, Any]:
        """The part a running deployment can change live (``reconfigure``): batching and the model."""
        return {
            "model_dir": self.model_dir,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
        }

    def autoscaling_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }
        if self.initial_replicas is not None:
            cfg["initial_replicas"] = self.initial_replicas
        return cfg

    def resolved_num_gpus(self) -> float:
        """``num_gpus``, or when unset 1.0 if GPUs are visible to Ray (or, without Ray, to torch), else 0."""
        if self.num_gpus is not None:
            return float(self.num_gpus)
        return 1.0 if _gpus_available() else 0.0

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options`` (resources, autoscaling, back-pressure, user_config)."""
        return {
            "autoscaling_config": self.autoscaling_config(),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.resolved_num_gpus()},
            "user_config": self.user_config(),
        }

    def base_url(self) -> str:
        """``http://host:port<prefix>`` without a trailing slash (what `finsent classify` calls)."""
        prefix = "" if self.route_prefix == "/" else self.route_prefix
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{prefix}"


class BatchingUpdate(Config):
    """Validated ``user_config`` of a running deployment (what ``reconfigure`` accepts)."""

    model_dir: str | None = ServeConfig.model_fields["model_dir"]
    max_batch_size: int = ServeConfig.model_fields["max_batch_size"]
    batch_wait_timeout_s: float = ServeConfig.model_fields["batch_wait_timeout_s"]

    # same normalisation as ServeConfig, so an unchanged directory never triggers a reload
    _model_dir_not_blank = field_validator("model_dir")(ServeConfig._model_dir_not_blank.__func__)


def _gpus_available() -> bool:
    try:
        import ray

        if ray.is_initialized():
            return ray.cluster_resources().get("GPU", 0) > 0
    except Exception:  # pragma: no cover - Ray missing or not reachable: fall back to the local machine
        log.debug("could not ask Ray for GPUs", exc_info=True)
    import torch

    return torch.cuda.is_available()


def describe_fields() -> str:
    """``name = default`` plus the help line of every field (for ``finsent serve --help-config``)."""
    return _config.describe(ServeConfig)


def format_validation_error(err: ValidationError, cls: type[BaseModel] = ServeConfig) -> str:
    """One line per problem: the field, what is wrong, what was given, and the fix (the shape of every
    finsent config error, :func:`classifier.config.format_validation_error`)."""
    return _config.format_validation_error(err, cls)


def make_config(values: Mapping[str, Any] | ServeConfig | None = None, **overrides: Any) -> ServeConfig:
    """Validate a mapping (plus keyword overrides) into a ``ServeConfig``; errors become ``ConfigError``."""
    if isinstance(values, ServeConfig):
        values = values.model_dump(include=set(ServeConfig.model_fields))
    return _config.build(ServeConfig, {**dict(values or {}), **overrides})


def load_serve_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ServeConfig:
    """Defaults ← YAML file ← ``key=value`` overrides (the project-wide convention), validated."""
    overrides = list(overrides)
    nested = [o.split("=", 1)[0] for o in overrides if "." in o.split("=", 1)[0]]
    if nested:
        raise ConfigError(f"serve config keys are flat: {nested[0]} is not a key; write e.g. max_replicas=2")
    return _config.load_config(ServeConfig, path, overrides)


class ServeCommandConfig(ServeConfig):
    """Settings of ``finsent serve``: the Serve application (every ServeConfig field) and the Ray it runs on."""

    example_overrides = ("model_dir=runs/finetune",)

    ray_address: str | None = Field(
        None,
        description="Ray cluster to join (e.g. auto, ray://host:10001); unset = start a local Ray for this "
        "command (it stops with it).",
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray this command starts; "
                                     "unset = all of the machine's.")
    log_file: str = Field(
        "runs/serve.log",
        description="file that receives Ray's and Serve's messages (the terminal shows finsent's own lines: the "
        "URL, model swaps, errors)",
    )

    def app_config(self) -> ServeConfig:
        """The Serve application's own config (what ``build_app`` takes)."""
        return make_config(self)


class ClassifyConfig(ServeConfig):
    """Settings of ``finsent classify``: the texts and where the app listens (host, port, route_prefix or url;
    the request limits split long inputs). Every ServeConfig field is accepted, so the YAML of
    ``finsent serve --config`` works here unchanged."""

    example_overrides = ("port=8000",)

    texts: list[str] = Field([], description="texts to classify (also the command's bare arguments).")
    file: str | None = Field(
        None, description="also read texts from this UTF-8 file, one per line ('-' = stdin)."
    )
    url: str | None = Field(
        None, description="base URL of the app; unset = http://host:port<route_prefix> from these settings."
    )
    explain: bool = Field(False, description="also print per-token attributions (max_explain_texts per request).")
    timeout_s: float = Field(60.0, gt=0, description="seconds to wait for each answer.")
