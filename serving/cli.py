"""``finsent serve`` and ``finsent classify`` (also ``python -m serving serve|classify``).

    finsent serve model_dir=runs/finetune/best               # local Ray, http://127.0.0.1:8000, Ctrl-C stops
    finsent serve --config my-serve.yaml max_replicas=2      # YAML of ServeConfig fields + overrides
    finsent serve --help-config                              # every field, its default and meaning
    finsent classify "央行宣布降准，释放长期资金" "公司预计全年亏损"   # prints one JSON line per text
    finsent classify --file news.txt --url http://127.0.0.1:8000

Exit codes: 0 ok, 1 cannot reach the app / server error, 2 bad arguments or a 4xx answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from classifier.errors import DataError, FinsentError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finsent", description="Serve the finsent classifier on Ray Serve.")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start the app on a local Ray (or --address) and block until Ctrl-C")
    s.add_argument("--config", type=Path, help="YAML file of ServeConfig fields (see --help-config)")
    s.add_argument("--address", default=None,
                   help="Ray cluster to join (e.g. auto, ray://host:10001); default: start a local Ray")
    s.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    s.add_argument("--help-config", action="store_true", help="list every config field and exit")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model_dir=DIR")

    c = sub.add_parser("classify", help="send texts to a running app; prints one JSON line per text")
    c.add_argument("texts", nargs="*", help="texts to classify")
    c.add_argument("--file", help="read texts from this file, one per line ('-' = stdin)")
    c.add_argument("--url", help="app base URL (default: from --config/overrides host, port, route_prefix)")
    c.add_argument("--config", type=Path, help="YAML file of ServeConfig fields (host, port, route_prefix)")
    c.add_argument("--explain", action="store_true", help="also print per-token attributions")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value",
                   help="config override (repeatable), e.g. --set port=8001")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            return cmd_serve(args)
        return cmd_classify(args)
    except FinsentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from serving.config import describe_fields, load_serve_config

    if args.help_config:
        print(describe_fields())
        return 0
    cfg = load_serve_config(args.config, args.overrides)

    import ray
    from ray import serve

    from serving.app import build_app
    from serving.client import ServeClient

    app = build_app(cfg)  # validates model_dir before Ray starts
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=args.address, num_cpus=args.num_cpus, include_dashboard=False)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    info = ServeClient(cfg.base_url()).model()
    print(f"finsent serving {info['model_version']} at {cfg.base_url()}/v1/classify "
          f"(API docs: {cfg.base_url()}/docs); Ctrl-C stops", flush=True)

    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("stopping finsent serve", flush=True)
    if args.address is None:
        serve.shutdown()
    else:
        serve.delete(cfg.app_name)  # a shared cluster keeps its other apps
    if started_ray:
        ray.shutdown()
    return 0


# --------------------------------------------------------------------------------------------------- classify
def cmd_classify(args: argparse.Namespace) -> int:
    from serving.client import ServeClient, ServeHTTPError
    from serving.config import load_serve_config

    cfg = load_serve_config(args.config, args.overrides)
    texts = list(args.texts) + list(_read_texts(args.file))
    if not texts:
        print('error: nothing to classify: give texts (finsent classify "文本") or --file PATH', file=sys.stderr)
        return 2
    url = args.url or cfg.base_url()
    chunk = cfg.max_explain_texts if args.explain else cfg.max_texts_per_request
    with ServeClient(url, timeout=args.timeout) as client:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            try:
                results = client.classify(part, explain=args.explain)
            except ServeHTTPError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2 if 400 <= e.status < 500 else 1
            except OSError as e:
                print(f"error: cannot reach the finsent app at {url} ({e}): start it with `finsent serve "
                      "model_dir=...` or pass --url", file=sys.stderr)
                return 1
            for text, result in zip(part, results, strict=True):
                print(json.dumps({"text": text, **result}, ensure_ascii=False), flush=True)
    return 0


def _read_texts(path: str | None) -> Iterator[str]:
    if path is None:
        return
    if path != "-" and not Path(path).is_file():
        raise DataError(f"--file {path} not found: give a UTF-8 text file with one text per line (or - for stdin)")
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    with stream:
        for line in stream:
            if line.strip():
                yield line.rstrip("\n")
