"""``StreamConfig``: the one typed config of the stream runner (``finsent stream``).

A pydantic model (:class:`classifier.config.Config`), loaded the project-wide way — defaults ← YAML file ←
``key=value`` overrides (``finsent stream --config stream.yaml batch_size=32``, or in code)::

    from classifier.config import load_config
    cfg = load_config(StreamConfig, "stream.yaml", ["batch_size=32", "security.security_protocol=SASL_SSL"])

Every field has a description and is checked in ``_check``; a bad value raises ``ConfigError`` naming the
field and the fix. The same object is handed to every worker (process or Ray actor): no globals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from classifier.config import Config, LogLevel, replace
from classifier.drift import DriftConfig
from classifier.errors import ConfigError

#: prefixes of the kafka-python settings ``security`` may pass through (SASL, SSL, security_protocol)
SECURITY_PREFIXES: tuple[str, ...] = ("security_", "sasl_", "ssl_")


class StreamConfig(Config):
    """Settings of the stream runner: Kafka, topics, batching, classifier, delivery, scale-out, metrics."""

    example_overrides = ("serve_app=finsent",)

    # ---- Kafka connection -----------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers, comma-separated host:port (`finsent broker` prints one).",
    )
    security: dict[str, Any] = Field(
        {},
        description="kafka-python security settings passed to consumer, producer and admin as they are, "
        "e.g. security.security_protocol=SASL_SSL security.sasl_mechanism=PLAIN security.ssl_cafile=ca.pem; "
        "keys must start with security_, sasl_ or ssl_.",
    )
    client_id: str = Field("finsent-stream", description="Kafka client id (worker index appended).")

    # ---- topics ------------------------------------------------------------------------------------------
    input_topic: str = Field("finance.news", description="topic the news records are read from.")
    output_topic: str = Field(
        "finance.news.sentiment",
        description="topic the labelled records are written to.",
    )
    dlq_topic: str | None = Field(
        None,
        description="dead-letter topic for records that cannot be labelled; default <input_topic>.dlq.",
    )
    create_topics: bool = Field(
        True,
        description="create input, output and DLQ topics at start when they are missing.",
    )
    partitions: int = Field(
        4,
        description="partitions of topics this runner creates; also the most workers that get work.",
    )
    replication_factor: int = Field(1, description="replication factor of topics this runner creates.")

    # ---- consumer group and batching --------------------------------------------------------------------
    group_id: str = Field(
        "finsent-stream",
        description="consumer group id; workers with the same id split the input partitions.",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="where a new group starts: earliest (label the backlog) or latest (only new news).",
    )
    batch_size: int = Field(
        64,
        description="most records per poll; a batch is classified, produced, flushed and committed "
        "together. Keep batch_size / (slowest classifier texts/s) well under max_poll_interval_ms.",
    )
    poll_timeout_ms: int = Field(
        500,
        description="how long one poll waits for records; also bounds the shutdown delay.",
    )
    max_poll_interval_ms: int = Field(
        300_000,
        description="most time between polls before the group evicts this worker; must cover one batch with "
        "all its classifier retries, or a slow classifier causes a rebalance storm.",
    )
    session_timeout_ms: int = Field(
        10_000,
        description="heartbeat session timeout; a group join waits about half of it (use 6000 for "
        "tests/demo).",
    )
    heartbeat_interval_ms: int = Field(
        3_000,
        description="heartbeat interval; at most a third of session_timeout_ms.",
    )

    # ---- classifier ---------------------------------------------------------------------------------------
    model_dir: str | None = Field(
        None,
        description="finsent model directory for the in-process Predictor (ignored when serve_app is set).",
    )
    device: str = Field("cpu", description="device of the in-process Predictor: cpu, cuda or auto.")
    predict_batch_size: int = Field(
        32,
        description="texts per forward pass of the in-process Predictor, or per Serve handle call (keep it "
        "<= the app's max_texts_per_request).",
    )
    backend: Literal["torch", "onnx", "auto"] = Field(
        "torch",
        description="what runs the in-process Predictor on CPU: torch, onnx (ONNX Runtime, export cached in the "
        "model directory), or auto (measure both on this CPU at start, keep the fastest within tolerance of "
        "torch fp32; see docs/serving.md). On cuda: torch.",
    )
    quantize: Literal["none", "int8", "auto"] = Field(
        "none",
        description="precision of the in-process Predictor on CPU: none (fp32), int8 (dynamic int8; fast with "
        "AVX-512 VNNI, about 1.05x with torch on AVX2-only CPUs), or auto (measured at start).",
    )
    torch_threads: int | None = Field(
        None,
        description="CPU threads of the in-process Predictor; unset = torch's default, or cores / workers "
        "when this command starts several worker processes. Set it when the container's CPU limit is below "
        "the host's core count (oversubscribed threads can be many times slower).",
    )
    serve_app: str | None = Field(
        None,
        description="name of a running Ray Serve finsent app to classify through (its DeploymentHandle); "
        "unset = in-process Predictor from model_dir.",
    )
    serve_method: str = Field(
        "classify",
        description="handle method of the Serve app that takes a list of texts (and errors='return') and "
        "returns one prediction dict per text; predict_batch_size texts go in each call.",
    )
    ray_address: str = Field("auto", description="Ray cluster to join for serve_app or worker_backend=ray.")
    max_text_chars: int = Field(
        10_000,
        description="longer texts (title + content, after normalisation) go to the DLQ as text_too_long; "
        "with serve_app keep it <= the app's max_chars_per_text.",
    )
    retries: int = Field(
        2,
        description="extra attempts of a failed classifier call before records go to the DLQ.",
    )
    retry_backoff_s: float = Field(
        0.5,
        description="wait before the first retry; doubles with every further retry.",
    )

    # ---- delivery -----------------------------------------------------------------------------------------
    exactly_once: bool = Field(
        False,
        description="wrap each batch and its offsets in a Kafka transaction (send_offsets_to_transaction) "
        "and read input read_committed. Needs a broker with transactions (Apache Kafka); the embedded Tansu "
        "accepts the calls but does not isolate aborted records.",
    )
    transactional_id: str = Field(
        "finsent-stream",
        description="transactional id prefix for exactly_once (worker index appended).",
    )
    linger_ms: int = Field(5, description="producer linger: how long a send waits to fill a batch.")
    compression_type: Literal["none", "gzip"] = Field(
        "none",
        description="producer compression (gzip needs no extra library; snappy/lz4/zstd are not offered).",
    )
    flush_timeout_s: float = Field(
        60.0,
        description="most seconds to wait for a batch's outputs to be acknowledged.",
    )

    # ---- scale-out -----------------------------------------------------------------------------------------
    workers: int = Field(
        1,
        description="consumers in the group started by this command (processes or Ray actors).",
    )
    worker_backend: Literal["process", "ray"] = Field(
        "process",
        description="how workers > 1 run: local processes, or Ray actors on the cluster at ray_address "
        "(ray_address=local starts a private Ray).",
    )
    ray_num_cpus: float = Field(1.0, description="CPUs each Ray actor worker reserves.")

    # ---- drift alarm and review ----------------------------------------------------------------------------
    drift: DriftConfig = Field(
        default_factory=DriftConfig,
        description="drift alarm over the predictions (drift.<key>=value; see classifier.drift.DriftConfig); "
        "alerts go to drift.alerts_topic, default <output_topic>.alerts.",
    )
    review_threshold: float | None = Field(
        0.5,
        description="labelled records whose top probability is below this ALSO go to review_topic, for "
        "people to check; null or 0 = off.",
    )
    review_topic: str | None = Field(
        None,
        description="topic of the records to review; default <output_topic>.review.",
    )

    # ---- observability and lifetime ------------------------------------------------------------------------
    log_level: LogLevel = Field(
        "INFO", description="logging level of the stream command and its workers: DEBUG, INFO, WARNING or ERROR."
    )
    log_file: str = Field(
        "runs/stream.log",
        description="file that receives the Kafka client's and Ray's messages (the terminal shows the stream's "
        "own lines: progress, errors, alerts).",
    )
    metrics_port: int | None = Field(
        None,
        description="serve Prometheus metrics on this port (worker i uses port + i); unset = off.",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="address of the metrics server; keep loopback unless firewalled.",
    )
    idle_exit_s: float | None = Field(
        None,
        description="stop after this many seconds without records once the assigned partitions are caught "
        "up (batch jobs, benchmarks); unset = run until SIGINT/SIGTERM.",
    )

    @field_validator("model_dir")
    @classmethod
    def _expand_model_dir(cls, v: str | None) -> str | None:
        return str(Path(v).expanduser()) if v is not None else None

    @model_validator(mode="after")
    def _check(self) -> StreamConfig:
        if self.dlq_topic is None or not str(self.dlq_topic).strip():
            self.dlq_topic = f"{self.input_topic}.dlq"
        self._validate()
        self._validate_review_and_alerts()
        return self

    # ------------------------------------------------------------------------------------------ checks
    def _validate(self) -> None:
        if not self.bootstrap_servers.strip() or any(
            ":" not in s.strip() for s in self.bootstrap_servers.split(",")
        ):
            raise ConfigError(
                f"bootstrap_servers={self.bootstrap_servers!r} must be host:port[,host:port...]: "
                "write e.g. bootstrap_servers=127.0.0.1:9092"
            )
        for name in ("input_topic", "output_topic", "dlq_topic", "group_id", "client_id"):
            value = getattr(self, name)
            if not value or not str(value).strip() or any(c.isspace() for c in str(value)):
                raise ConfigError(f"{name}={value!r} must be a non-empty name without spaces: set {name}=NAME")
        topics = {"input_topic": self.input_topic, "output_topic": self.output_topic, "dlq_topic": self.dlq_topic}
        if len(set(topics.values())) != 3:
            raise ConfigError(
                f"input_topic, output_topic and dlq_topic must differ, got {topics}: outputs written to the "
                "input topic would be classified again"
            )
        for name in ("batch_size", "poll_timeout_ms", "max_poll_interval_ms", "session_timeout_ms",
                     "heartbeat_interval_ms", "partitions", "replication_factor", "predict_batch_size",
                     "max_text_chars", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1: set {name}=N with N >= 1")
        for name in ("retries", "linger_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.retry_backoff_s < 0 or self.flush_timeout_s <= 0 or self.ray_num_cpus < 0:
            raise ConfigError("retry_backoff_s and ray_num_cpus must be >= 0, flush_timeout_s > 0")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ConfigError(
                f"heartbeat_interval_ms={self.heartbeat_interval_ms} must be at most a third of "
                f"session_timeout_ms={self.session_timeout_ms}: lower heartbeat_interval_ms or raise "
                "session_timeout_ms (tests use 2000 and 6000)"
            )
        if self.poll_timeout_ms >= self.max_poll_interval_ms:
            raise ConfigError(
                f"poll_timeout_ms={self.poll_timeout_ms} must be below max_poll_interval_ms="
                f"{self.max_poll_interval_ms}"
            )
        retry_wait_ms = 1000 * self.retry_backoff_s * (2**self.retries - 1)
        if retry_wait_ms >= self.max_poll_interval_ms / 2:
            raise ConfigError(
                f"retries={self.retries} with retry_backoff_s={self.retry_backoff_s} wait "
                f"{retry_wait_ms / 1000:.0f} s, over half of max_poll_interval_ms={self.max_poll_interval_ms}: "
                "a failing classifier would get this worker evicted; lower retries/retry_backoff_s or raise "
                "max_poll_interval_ms"
            )
        bad_keys = [k for k in self.security if not k.startswith(SECURITY_PREFIXES)]
        if bad_keys:
            raise ConfigError(
                f"security: {bad_keys} are not security settings; only keys starting with "
                f"{', '.join(SECURITY_PREFIXES)} pass through (e.g. security.sasl_mechanism=PLAIN)"
            )
        if self.serve_app is None:
            if not self.model_dir:
                raise ConfigError(
                    "model_dir is not set: pass model_dir=DIR (a finsent model directory) or serve_app=NAME "
                    "(a running `finsent serve` app)"
                )
            if not Path(self.model_dir).is_dir():
                raise ConfigError(
                    f"model_dir={self.model_dir} is not a directory: pass a model directory written by "
                    "`finsent finetune`"
                )
        elif not self.serve_app.strip():
            raise ConfigError("serve_app is blank: pass the Serve app name (default of `finsent serve`: finsent)")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads={self.torch_threads} must be >= 1, or unset for torch's default")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port={self.metrics_port} must be a port number 0..65535 (0 = any free)")
        if self.idle_exit_s is not None and self.idle_exit_s <= 0:
            raise ConfigError(f"idle_exit_s={self.idle_exit_s} must be > 0, or unset to run until stopped")
        if self.exactly_once and self.workers > 1 and not self.transactional_id.strip():
            raise ConfigError("transactional_id is blank: exactly_once needs a transactional id prefix")

    def _validate_review_and_alerts(self) -> None:
        if self.review_threshold is not None and not 0 <= self.review_threshold <= 1:
            raise ConfigError(f"review_threshold={self.review_threshold} must be a probability in [0, 1] "
                              "(e.g. 0.5), or null/0 to send nothing to review")
        for name, value in (("review_topic", self.review_topic), ("drift.alerts_topic", self.drift.alerts_topic)):
            if value is not None and value in (self.input_topic, self.output_topic, self.dlq_topic):
                raise ConfigError(f"{name}={value!r} must differ from input_topic, output_topic and dlq_topic: "
                                  "leave it unset for <output_topic>.review / <output_topic>.alerts")

    # ------------------------------------------------------------------------------------------ derived
    def kafka_common(self) -> dict[str, Any]:
        """Settings shared by consumer, producer and admin client (bootstrap + security pass-through)."""
        return {"bootstrap_servers": self.bootstrap_servers.split(","), **self.security}

    def for_worker(self, index: int) -> StreamConfig:
        """A copy for worker ``index``: distinct client id, transactional id and metrics port."""
        changes: dict[str, Any] = {"client_id": f"{self.client_id}-{index}"}
        if self.exactly_once:
            changes["transactional_id"] = f"{self.transactional_id}-{index}"
        if self.metrics_port:
            changes["metrics_port"] = self.metrics_port + index
        return replace(self, **changes)
