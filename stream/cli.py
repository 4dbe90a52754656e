"""``finsent broker|produce|stream|tail|replay-dlq`` (also ``python -m stream <command> ...``).

``main(argv)`` takes the subcommand as ``argv[0]``. Every command reads its typed config with the grammar of
every finsent command (:func:`classifier.config.parse_command`): ``--config FILE.yaml``, then ``key=value``
overrides (``security.sasl_mechanism=PLAIN``, ``drift.window_records=1000``), ``--help-config``,
``--print-config``. The old options (one ``--<field>`` flag per StreamConfig field, ``--model``, ``--serve``,
``-X KEY=VALUE``, ``--file``, ...) still work for one release and log a deprecation note.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pydantic import Field, model_validator

from classifier.config import Alias, Config, LogLevel, field_flag_aliases, parse_command, run_command
from classifier.errors import ConfigError
from stream.config import SECURITY_PREFIXES, StreamConfig

log = logging.getLogger(__name__)

COMMANDS = ("broker", "produce", "stream", "tail", "replay-dlq")

_STREAM_DEFAULTS = StreamConfig.model_fields
DEFAULT_BOOTSTRAP: str = _STREAM_DEFAULTS["bootstrap_servers"].default
DEFAULT_INPUT_TOPIC: str = _STREAM_DEFAULTS["input_topic"].default


# ---------------------------------------------------------------------------------------------- configs
class KafkaClientConfig(Config):
    """Connection settings shared by produce, tail and replay-dlq."""

    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description=_STREAM_DEFAULTS["bootstrap_servers"].description)
    security: dict[str, Any] = Field({}, description=_STREAM_DEFAULTS["security"].description)
    log_level: LogLevel = Field("INFO", description="logging level: DEBUG, INFO, WARNING or ERROR.")

    @model_validator(mode="after")
    def _check_connection(self) -> KafkaClientConfig:
        if not self.bootstrap_servers.strip() or any(":" not in s for s in self.bootstrap_servers.split(",")):
            raise ConfigError(f"bootstrap_servers={self.bootstrap_servers!r} must be host:port[,host:port...]: "
                              f"write e.g. bootstrap_servers={DEFAULT_BOOTSTRAP}")
        bad = [k for k in self.security if not k.startswith(SECURITY_PREFIXES)]
        if bad:
            raise ConfigError(f"security: {bad} are not security settings; only keys starting with "
                              f"{', '.join(SECURITY_PREFIXES)} pass through (e.g. security.sasl_mechanism=PLAIN)")
        return self

    def kafka_common(self) -> dict[str, Any]:
        """kafka-python settings of every client (bootstrap + security pass-through)."""
        return {"bootstrap_servers": self.bootstrap_servers.split(","), **self.security}


class BrokerConfig(Config):
    """Run the embedded Kafka-protocol broker (Tansu, in memory) on 127.0.0.1 until Ctrl-C."""

    port: int = Field(int(DEFAULT_BOOTSTRAP.rsplit(":", 1)[1]), ge=0, le=65535,
                      description="port on 127.0.0.1 (0 = any free port).")
    topics: list[str] = Field(
        [], description="topics to create at start, e.g. [finance.news,finance.news.sentiment,finance.news.dlq]."
    )
    partitions: int = Field(_STREAM_DEFAULTS["partitions"].default, ge=1,
                            description="partitions of the topics created from `topics`.")
    log_level: LogLevel = Field("INFO", description="logging level: DEBUG, INFO, WARNING or ERROR.")


class ProduceConfig(KafkaClientConfig):
    """Replay a news file into a topic."""

    example_overrides = ("file=news.jsonl",)

    file: str = Field("", description=".jsonl (one news object a line) or label|||text file to send.")
    topic: str = Field(DEFAULT_INPUT_TOPIC, description="topic to write to.")
    rate: float | None = Field(None, gt=0, description="records per second; unset = as fast as possible.")
    limit: int | None = Field(None, ge=0, description="send at most this many records; unset = the whole file.")
    partitions: int | None = Field(None, ge=1,
                                   description="create the topic with this many partitions if it is missing.")

    @model_validator(mode="after")
    def _needs_file(self) -> ProduceConfig:
        if not self.file.strip():
            raise ConfigError("file is not set: pass file=news.jsonl (one news object a line) or a label|||text file")
        return self


class TailConfig(KafkaClientConfig):
    """Print labelled records as a live table."""

    topic: str = Field(_STREAM_DEFAULTS["output_topic"].default, description="topic to read.")
    latest: bool = Field(False, description="only records that arrive from now on (default: from the start).")
    limit: int | None = Field(None, ge=0, description="stop after this many records; unset = until Ctrl-C.")
    idle_exit_s: float | None = Field(None, gt=0, description="stop after this many seconds without records.")
    as_json: bool = Field(False, description="print the raw JSON values instead of a table.")
    log_level: LogLevel = Field("WARNING", description="logging level: DEBUG, INFO, WARNING or ERROR.")


class ReplayDlqConfig(KafkaClientConfig):
    """Send dead letters back to the topic they came from (after fixing the cause)."""

    dlq_topic: str = Field(f"{DEFAULT_INPUT_TOPIC}.dlq", description="dead-letter topic to read.")
    to_topic: str | None = Field(None, description="send here instead of each record's source topic.")
    error: str | None = Field(None, description="replay only records with this error code (e.g. bad_json).")
    group_id: str = Field("finsent-replay-dlq", description="consumer group that keeps the replay cursor.")
    from_beginning: bool = Field(False, description="ignore the cursor: read the whole DLQ again.")


#: the config class of each command ("module:Class")
CONFIGS = {"broker": "stream.cli:BrokerConfig", "produce": "stream.cli:ProduceConfig",
           "stream": "stream.config:StreamConfig", "tail": "stream.cli:TailConfig",
           "replay-dlq": "stream.cli:ReplayDlqConfig"}

#: old spellings kept for one release (each use logs a deprecation note)
_KAFKA_ALIASES: dict[str, str | Alias] = {
    "--bootstrap-servers": "bootstrap_servers", "-X": Alias("security."), "--kafka-option": Alias("security."),
    "--log-level": "log_level",
}
STREAM_ALIASES: dict[str, str | Alias] = {
    **field_flag_aliases(StreamConfig, exclude=("security",)),
    "--model": "model_dir",
    "--serve": Alias("serve_app", value="finsent", optional=True),
}
ALIASES: dict[str, dict[str, str | Alias]] = {
    "broker": {"--port": "port", "--topics": "topics", "--partitions": "partitions", "--log-level": "log_level"},
    "produce": {**_KAFKA_ALIASES, "--file": "file", "--topic": "topic", "--rate": "rate", "--limit": "limit",
                "--partitions": "partitions"},
    "stream": STREAM_ALIASES,
    "tail": {**_KAFKA_ALIASES, "--topic": "topic", "--latest": "latest=true", "--limit": "limit",
             "--idle-exit": "idle_exit_s", "--json": "as_json=true"},
    "replay-dlq": {**_KAFKA_ALIASES, "--dlq-topic": "dlq_topic", "--to": "to_topic", "--error": "error",
                   "--group": "group_id", "--from-beginning": "from_beginning=true"},
}


def _config(name: str, cls: type[Any], argv: list[str], **kw: Any) -> Any:
    return parse_command(cls, argv, prog=f"finsent {name}", aliases=ALIASES[name], **kw)


def _setup_logging(level: str) -> int:
    from stream.workers import LOG_FORMAT

    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, format=LOG_FORMAT)
    logging.getLogger("kafka").setLevel(max(lvl, logging.WARNING))
    return lvl


# ---------------------------------------------------------------------------------------------- commands
def stream_config(argv: list[str]) -> StreamConfig:
    """The StreamConfig of a ``finsent stream`` command line."""
    return _config("stream", StreamConfig, argv,
                   description="Label news from a Kafka topic into a sentiment topic (consumer group, "
                               "at-least-once).")


def cmd_stream(argv: list[str]) -> int:
    from pathlib import Path

    from classifier.console import quiet_terminal

    cfg = stream_config(argv)
    from stream.workers import run_stream

    log_path = Path(cfg.log_file).expanduser().absolute()
    print(f"full log (Kafka client, Ray): {log_path}", file=sys.stderr)
    try:
        with quiet_terminal(log_path, level=getattr(logging, cfg.log_level.upper(), logging.INFO)):
            level = _setup_logging(cfg.log_level)
            return run_stream(cfg, log_level=level)
    except Exception:
        print(f"see {log_path} for the whole log", file=sys.stderr)
        raise


def cmd_broker(argv: list[str]) -> int:
    cfg: BrokerConfig = _config("broker", BrokerConfig, argv)
    _setup_logging(cfg.log_level)
    from stream.broker import run_foreground

    return run_foreground(port=cfg.port, topics=cfg.topics, partitions=cfg.partitions)


def cmd_produce(argv: list[str]) -> int:
    cfg: ProduceConfig = _config("produce", ProduceConfig, argv)
    _setup_logging(cfg.log_level)
    from stream.tools import produce_file

    n = produce_file(cfg.kafka_common(), cfg.file, cfg.topic, rate=cfg.rate, limit=cfg.limit,
                     partitions=cfg.partitions)
    print(f"produced {n} records to {cfg.topic}")
    return 0


def cmd_tail(argv: list[str]) -> int:
    cfg: TailConfig = _config("tail", TailConfig, argv)
    _setup_logging(cfg.log_level)
    from stream.tools import tail

    tail(cfg.kafka_common(), cfg.topic, from_beginning=not cfg.latest, limit=cfg.limit, idle_exit_s=cfg.idle_exit_s,
         as_json=cfg.as_json)
    return 0


def cmd_replay_dlq(argv: list[str]) -> int:
    cfg: ReplayDlqConfig = _config("replay-dlq", ReplayDlqConfig, argv)
    _setup_logging(cfg.log_level)
    from stream.tools import replay_dlq

    counts = replay_dlq(cfg.kafka_common(), cfg.dlq_topic, to_topic=cfg.to_topic, error=cfg.error,
                        group_id=cfg.group_id, from_beginning=cfg.from_beginning)
    print(f"replay-dlq: read {counts['read']}, replayed {counts['replayed']}, skipped {counts['skipped']}")
    return 0


HANDLERS = {
    "broker": cmd_broker,
    "produce": cmd_produce,
    "stream": cmd_stream,
    "tail": cmd_tail,
    "replay-dlq": cmd_replay_dlq,
}


def main(argv: list[str] | None = None) -> int:
    """Run ``argv[0]`` (one of broker, produce, stream, tail, replay-dlq) with the rest of ``argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m stream {{{','.join(COMMANDS)}}} [--config FILE.yaml] [key=value ...] "
              "[--help-config] [--print-config]")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in HANDLERS:
        print(f"unknown command {name!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(f"finsent {name}", HANDLERS[name], rest)
