"""``finsent broker|produce|stream|tail|replay-dlq`` (also ``python -m stream <command> ...``).

``main(argv)`` takes the subcommand as ``argv[0]``. ``stream`` reads a ``StreamConfig`` the project-wide way:
``--config stream.yaml``, then one ``--<field>`` flag per config field, then ``key=value`` overrides
(``security.sasl_mechanism=PLAIN``); ``--help-config`` lists every field with its help.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any

from classifier.errors import FinsentError
from stream.config import StreamConfig

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
COMMANDS = ("broker", "produce", "stream", "tail", "replay-dlq")


def _setup_logging(level: str) -> int:
    from stream.workers import LOG_FORMAT

    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, format=LOG_FORMAT)
    logging.getLogger("kafka").setLevel(max(lvl, logging.WARNING))
    return lvl


def _kafka_options(items: list[str]) -> dict[str, Any]:
    from classifier.config import parse_overrides
    from classifier.errors import ConfigError
    from stream.config import SECURITY_PREFIXES

    opts = parse_overrides(items)
    bad = [k for k in opts if not k.startswith(SECURITY_PREFIXES)]
    if bad:
        raise ConfigError(f"-X {bad[0]}: only security settings (security_*, sasl_*, ssl_*) can be passed")
    return opts


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {"bootstrap_servers": args.bootstrap_servers.split(","), **_kafka_options(args.kafka_option)}


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap-servers", default=DEFAULT_BOOTSTRAP, help="Kafka bootstrap servers host:port[,...]")
    p.add_argument(
        "-X", "--kafka-option", action="append", default=[], metavar="KEY=VALUE",
        help="security setting passed to kafka-python, e.g. -X security_protocol=SASL_SSL (repeatable)",
    )


# ---------------------------------------------------------------------------------------------- parsers
def _stream_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finsent stream",
        description="Label news from a Kafka topic into a sentiment topic (consumer group, at-least-once).",
        epilog="Settings apply in order: defaults, --config YAML, flags, key=value overrides.",
    )
    p.add_argument("--config", help="YAML file of StreamConfig fields")
    p.add_argument("--help-config", action="store_true", help="list every config field with its help and exit")
    p.add_argument(
        "--serve", nargs="?", const="finsent", default=None, metavar="APP",
        help="classify through the running Ray Serve app APP (default name: finsent) instead of model_dir",
    )
    p.add_argument("--model", dest="model_dir_alias", metavar="DIR", help="same as --model-dir")
    p.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    for f in dataclasses.fields(StreamConfig):
        if f.name == "security":
            continue  # a mapping: use security.<key>=<value> overrides
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f"cfg_{f.name}", action=argparse.BooleanOptionalAction, default=None,
                           help=help_)
        else:
            p.add_argument(flag, dest=f"cfg_{f.name}", default=None, metavar=f.name.upper(), help=help_)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. batch_size=32")
    return p


def _stream_config(args: argparse.Namespace) -> StreamConfig:
    from classifier.config import load_config

    overrides: list[str] = []
    extra = list(args.overrides)
    for f in dataclasses.fields(StreamConfig):
        value = getattr(args, f"cfg_{f.name}", None)
        if value is not None:
            overrides.append(f"{f.name}={str(value).lower() if isinstance(value, bool) else value}")
    if args.model_dir_alias is not None:
        overrides.append(f"model_dir={args.model_dir_alias}")
    if args.serve is not None:
        if "=" in args.serve:  # `--serve key=value`: a bare --serve followed by an override
            extra.insert(0, args.serve)
            args.serve = "finsent"
        overrides.append(f"serve_app={args.serve}")
    return load_config(StreamConfig, args.config, overrides + extra)


def cmd_stream(argv: list[str]) -> int:
    args = _stream_parser().parse_args(argv)
    if args.help_config:
        from classifier.config import describe

        print(describe(StreamConfig))
        return 0
    level = _setup_logging(args.log_level)
    cfg = _stream_config(args)
    from stream.workers import run_stream

    return run_stream(cfg, log_level=level)


def cmd_broker(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="finsent broker",
        description="Run the embedded Kafka-protocol broker (Tansu, in memory) on 127.0.0.1 until Ctrl-C.",
    )
    p.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (0 = any free port)")
    p.add_argument(
        "--topics", default="",
        help="comma-separated topics to create at start, e.g. finance.news,finance.news.sentiment,finance.news.dlq",
    )
    p.add_argument("--partitions", type=int, default=4, help="partitions of the topics created with --topics")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    _setup_logging(args.log_level)
    from stream.broker import run_foreground

    topics = [t.strip() for t in args.topics.split(",") if t.strip()]
    return run_foreground(port=args.port, topics=topics, partitions=args.partitions)


def cmd_produce(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="finsent produce", description="Replay a news file into a topic.")
    p.add_argument("--file", required=True, help=".jsonl (one news object a line) or label|||text file")
    p.add_argument("--topic", default="finance.news", help="topic to write to")
    p.add_argument("--rate", type=float, default=None, help="records per second (default: as fast as possible)")
    p.add_argument("--limit", type=int, default=None, help="send at most this many records")
    p.add_argument("--partitions", type=int, default=None, help="create the topic with this many partitions if missing")
    p.add_argument("--log-level", default="INFO")
    _add_connection(p)
    args = p.parse_args(argv)
    _setup_logging(args.log_level)
    from stream.tools import produce_file

    n = produce_file(_common(args), args.file, args.topic, rate=args.rate, limit=args.limit,
                     partitions=args.partitions)
    print(f"produced {n} records to {args.topic}")
    return 0


def cmd_tail(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="finsent tail", description="Print labelled records as a live table.")
    p.add_argument("--topic", default="finance.news.sentiment", help="topic to read")
    p.add_argument("--latest", action="store_true", help="only records that arrive from now on")
    p.add_argument("--limit", type=int, default=None, help="stop after this many records")
    p.add_argument("--idle-exit", type=float, default=None, metavar="S", help="stop after S seconds without records")
    p.add_argument("--json", action="store_true", help="print the raw JSON values instead of a table")
    p.add_argument("--log-level", default="WARNING")
    _add_connection(p)
    args = p.parse_args(argv)
    _setup_logging(args.log_level)
    from stream.tools import tail

    tail(_common(args), args.topic, from_beginning=not args.latest, limit=args.limit, idle_exit_s=args.idle_exit,
         as_json=args.json)
    return 0


def cmd_replay_dlq(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="finsent replay-dlq",
        description="Send dead letters back to the topic they came from (after fixing the cause).",
    )
    p.add_argument("--dlq-topic", default="finance.news.dlq", help="dead-letter topic to read")
    p.add_argument("--to", default=None, metavar="TOPIC", help="send here instead of each record's source topic")
    p.add_argument("--error", default=None, metavar="CODE", help="replay only records with this error code")
    p.add_argument("--group", default="finsent-replay-dlq", help="consumer group that keeps the replay cursor")
    p.add_argument("--from-beginning", action="store_true", help="ignore the cursor: read the whole DLQ again")
    p.add_argument("--log-level", default="INFO")
    _add_connection(p)
    args = p.parse_args(argv)
    _setup_logging(args.log_level)
    from stream.tools import replay_dlq

    counts = replay_dlq(_common(args), args.dlq_topic, to_topic=args.to, error=args.error, group_id=args.group,
                        from_beginning=args.from_beginning)
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
        print(f"usage: python -m stream {{{','.join(COMMANDS)}}} [options]")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in HANDLERS:
        print(f"unknown command {name!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return HANDLERS[name](rest)
    except FinsentError as e:
        log.debug("%s failed", name, exc_info=True)
        print(f"finsent {name}: error: {e}", file=sys.stderr)
        return 2
