"""``StreamConfig``: the one typed config of the stream runner (``finsent stream``).

Load it the project-wide way — defaults ← YAML file ← ``key=value`` overrides::

    from classifier.config import load_config
    cfg = load_config(StreamConfig, "stream.yaml", ["batch_size=32", "security.security_protocol=SASL_SSL"])

Every field has a help text and is checked in ``__post_init__``; a bad value raises ``ConfigError`` naming
the field and the fix. The same object is handed to every worker (process or Ray actor): no globals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from classifier.errors import ConfigError

#: prefixes of the kafka-python settings ``security`` may pass through (SASL, SSL, security_protocol)
SECURITY_PREFIXES: tuple[str, ...] = ("security_", "sasl_", "ssl_")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class StreamConfig:
    """Settings of the stream runner: Kafka, topics, batching, classifier, delivery, scale-out, metrics."""

    # ---- Kafka connection -----------------------------------------------------------------------------
    bootstrap_servers: str = field(
        default="127.0.0.1:9092",
        metadata=_help("Kafka bootstrap servers, comma-separated host:port (`finsent broker` prints one)."),
    )
    security: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "kafka-python security settings passed to consumer, producer and admin as they are, e.g. "
            "security.security_protocol=SASL_SSL security.sasl_mechanism=PLAIN security.ssl_cafile=ca.pem; "
            "keys must start with security_, sasl_ or ssl_."
        ),
    )
    client_id: str = field(default="finsent-stream", metadata=_help("Kafka client id (worker index appended)."))

    # ---- topics ------------------------------------------------------------------------------------------
    input_topic: str = field(default="finance.news", metadata=_help("topic the news records are read from."))
    output_topic: str = field(
        default="finance.news.sentiment", metadata=_help("topic the labelled records are written to.")
    )
    dlq_topic: str | None = field(
        default=None,
        metadata=_help("dead-letter topic for records that cannot be labelled; default <input_topic>.dlq."),
    )
    create_topics: bool = field(
        default=True, metadata=_help("create input, output and DLQ topics at start when they are missing.")
    )
    partitions: int = field(
        default=4,
        metadata=_help("partitions of topics this runner creates; also the most workers that get work."),
    )
    replication_factor: int = field(default=1, metadata=_help("replication factor of topics this runner creates."))

    # ---- consumer group and batching --------------------------------------------------------------------
    group_id: str = field(
        default="finsent-stream",
        metadata=_help("consumer group id; workers with the same id split the input partitions."),
    )
    auto_offset_reset: Literal["earliest", "latest"] = field(
        default="earliest",
        metadata=_help("where a new group starts: earliest (label the backlog) or latest (only new news)."),
    )
    batch_size: int = field(
        default=64,
        metadata=_help(
            "most records per poll; a batch is classified, produced, flushed and committed together. Keep "
            "batch_size / (slowest classifier texts/s) well under max_poll_interval_ms."
        ),
    )
    poll_timeout_ms: int = field(
        default=500, metadata=_help("how long one poll waits for records; also bounds the shutdown delay.")
    )
    max_poll_interval_ms: int = field(
        default=300_000,
        metadata=_help(
            "most time between polls before the group evicts this worker; must cover one batch with all its "
            "classifier retries, or a slow classifier causes a rebalance storm."
        ),
    )
    session_timeout_ms: int = field(
        default=10_000,
        metadata=_help(
            "heartbeat session timeout; a group join waits about half of it (use 6000 for tests/demo)."
        ),
    )
    heartbeat_interval_ms: int = field(
        default=3_000, metadata=_help("heartbeat interval; at most a third of session_timeout_ms.")
    )

    # ---- classifier ---------------------------------------------------------------------------------------
    model_dir: str | None = field(
        default=None,
        metadata=_help("finsent model directory for the in-process Predictor (ignored when serve_app is set)."),
    )
    device: str = field(default="cpu", metadata=_help("device of the in-process Predictor: cpu, cuda or auto."))
    predict_batch_size: int = field(
        default=32,
        metadata=_help(
            "texts per forward pass of the in-process Predictor, or per Serve handle call (keep it <= the "
            "app's max_texts_per_request)."
        ),
    )
    torch_threads: int | None = field(
        default=None,
        metadata=_help(
            "CPU threads of the in-process Predictor; unset = torch's default, or cores / workers when this "
            "command starts several worker processes. Set it when the container's CPU limit is below the "
            "host's core count (oversubscribed threads can be many times slower)."
        ),
    )
    serve_app: str | None = field(
        default=None,
        metadata=_help(
            "name of a running Ray Serve finsent app to classify through (its DeploymentHandle); unset = "
            "in-process Predictor from model_dir."
        ),
    )
    serve_method: str = field(
        default="classify",
        metadata=_help(
            "handle method of the Serve app that takes a list of texts (and errors='return') and returns one "
            "prediction dict per text; predict_batch_size texts go in each call."
        ),
    )
    ray_address: str = field(
        default="auto", metadata=_help("Ray cluster to join for serve_app or worker_backend=ray.")
    )
    max_text_chars: int = field(
        default=10_000,
        metadata=_help(
            "longer texts (title + content, after normalisation) go to the DLQ as text_too_long; with serve_app "
            "keep it <= the app's max_chars_per_text."
        ),
    )
    retries: int = field(
        default=2, metadata=_help("extra attempts of a failed classifier call before records go to the DLQ.")
    )
    retry_backoff_s: float = field(
        default=0.5, metadata=_help("wait before the first retry; doubles with every further retry.")
    )

    # ---- delivery -----------------------------------------------------------------------------------------
    exactly_once: bool = field(
        default=False,
        metadata=_help(
            "wrap each batch and its offsets in a Kafka transaction (send_offsets_to_transaction) and read "
            "input read_committed. Needs a broker with transactions (Apache Kafka); the embedded Tansu "
            "accepts the calls but does not isolate aborted records."
        ),
    )
    transactional_id: str = field(
        default="finsent-stream",
        metadata=_help("transactional id prefix for exactly_once (worker index appended)."),
    )
    linger_ms: int = field(default=5, metadata=_help("producer linger: how long a send waits to fill a batch."))
    compression_type: Literal["none", "gzip"] = field(
        default="none",
        metadata=_help("producer compression (gzip needs no extra library; snappy/lz4/zstd are not offered)."),
    )
    flush_timeout_s: float = field(
        default=60.0, metadata=_help("most seconds to wait for a batch's outputs to be acknowledged.")
    )

    # ---- scale-out -----------------------------------------------------------------------------------------
    workers: int = field(
        default=1, metadata=_help("consumers in the group started by this command (processes or Ray actors).")
    )
    worker_backend: Literal["process", "ray"] = field(
        default="process",
        metadata=_help(
            "how workers > 1 run: local processes, or Ray actors on the cluster at ray_address "
            "(ray_address=local starts a private Ray)."
        ),
    )
    ray_num_cpus: float = field(default=1.0, metadata=_help("CPUs each Ray actor worker reserves."))

    # ---- observability and lifetime ------------------------------------------------------------------------
    metrics_port: int | None = field(
        default=None,
        metadata=_help("serve Prometheus metrics on this port (worker i uses port + i); unset = off."),
    )
    metrics_host: str = field(
        default="127.0.0.1", metadata=_help("address of the metrics server; keep loopback unless firewalled.")
    )
    idle_exit_s: float | None = field(
        default=None,
        metadata=_help(
            "stop after this many seconds without records once the assigned partitions are caught up "
            "(batch jobs, benchmarks); unset = run until SIGINT/SIGTERM."
        ),
    )

    def __post_init__(self) -> None:
        if self.dlq_topic is None or not str(self.dlq_topic).strip():
            self.dlq_topic = f"{self.input_topic}.dlq"
        if self.model_dir is not None:
            self.model_dir = str(Path(self.model_dir).expanduser())
        self._validate()

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
        return dataclasses.replace(self, **changes)
