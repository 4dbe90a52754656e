"""``finsent serve`` and ``finsent classify`` (also ``python -m serving serve|classify``).

    finsent serve model_dir=runs/finetune/best               # local Ray, http://127.0.0.1:8000, Ctrl-C stops
    finsent serve --config my-serve.yaml max_replicas=2      # YAML of ServeConfig fields + overrides
    finsent serve --help-config                              # every field, its default and meaning
    finsent classify "央行宣布降准，释放长期资金" "公司预计全年亏损"   # prints one JSON line per text
    finsent classify file=news.txt url=http://127.0.0.1:8000

Both use the grammar of every finsent command (:func:`classifier.config.parse_command`); the old options
(``--file``, ``--url``, ``--set k=v``, ``--address``, ...) still work for one release.

Exit codes: 0 ok, 1 cannot reach the app / server error, 2 bad arguments or a 4xx answer.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from classifier.config import Alias, parse_command, run_command
from classifier.errors import DataError

log = logging.getLogger(__name__)


#: old spellings kept for one release (each use logs a deprecation note)
SERVE_ALIASES: dict[str, str | Alias] = {"--address": "ray_address", "--num-cpus": "ray_num_cpus"}
CLASSIFY_ALIASES: dict[str, str | Alias] = {
    "--file": "file", "--url": "url", "--explain": "explain=true", "--timeout": "timeout_s", "--set": Alias(""),
}
#: the config class of each command ("module:Class")
CONFIGS = {"serve": "serving.config:ServeCommandConfig", "classify": "serving.config:ClassifyConfig"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve": cmd_serve, "classify": cmd_classify}
    if not argv or argv[0] not in commands:
        asked = argv[:1] in (["-h"], ["--help"])
        print("usage: python -m serving {serve,classify} [--config FILE.yaml] [key=value ...] [--help-config] "
              "[--print-config]", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return run_command(f"finsent {argv[0]}", commands[argv[0]], argv[1:])


# --------------------------------------------------------------------------------------------------- serve
def cmd_serve(argv: list[str]) -> int:
    from serving.config import ServeCommandConfig

    command = parse_command(ServeCommandConfig, argv, prog="finsent serve", aliases=SERVE_ALIASES,
                            description="Start the finsent app on a local Ray (or ray_address) and block until "
                                        "Ctrl-C.")
    from classifier.console import quiet_terminal

    log_path = Path(command.log_file).expanduser().absolute()
    print(f"full log (Ray, Serve): {log_path}", file=sys.stderr)
    try:
        with quiet_terminal(log_path) as term:
            return _serve(command, term)
    except Exception:
        print(f"see {log_path} for the whole log", file=sys.stderr)
        raise


def _serve(command: Any, term: Any) -> int:
    cfg = command.app_config()

    import ray
    from ray import serve

    from serving.app import build_app
    from serving.client import ServeClient

    build_app(cfg)  # validates model_dir before Ray starts
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=command.ray_address, num_cpus=command.ray_num_cpus, include_dashboard=False)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    # by config (like `serve deploy`), so `finsent learn` can hot-swap its model through user_config
    from serving.swap import deploy_app

    deploy_app(cfg)
    info = ServeClient(cfg.base_url()).model()
    term.write(f"finsent serving {info['model_version']} at {cfg.base_url()}/v1/classify "
          f"(API docs: {cfg.base_url()}/docs); Ctrl-C stops\n")

    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    term.write("stopping finsent serve\n")
    if command.ray_address is None:
        serve.shutdown()
    else:
        serve.delete(cfg.app_name)  # a shared cluster keeps its other apps
    if started_ray:
        ray.shutdown()
    return 0


# --------------------------------------------------------------------------------------------------- classify
def cmd_classify(argv: list[str]) -> int:
    from serving.client import ServeClient, ServeHTTPError
    from serving.config import ClassifyConfig

    cfg = parse_command(ClassifyConfig, argv, prog="finsent classify", positional="texts",
                        aliases=CLASSIFY_ALIASES,
                        description="Send texts to a running finsent app; prints one JSON line per text.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    texts = list(cfg.texts) + list(_read_texts(cfg.file))
    if not texts:
        print('error: nothing to classify: give texts (finsent classify "文本") or file=PATH', file=sys.stderr)
        return 2
    url = cfg.url or cfg.base_url()
    chunk = cfg.max_explain_texts if cfg.explain else cfg.max_texts_per_request
    with ServeClient(url, timeout=cfg.timeout_s) as client:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            try:
                results = client.classify(part, explain=cfg.explain)
            except ServeHTTPError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2 if 400 <= e.status < 500 else 1
            except OSError as e:
                print(f"error: cannot reach the finsent app at {url} ({e}): start it with `finsent serve "
                      "model_dir=...` or pass url=...", file=sys.stderr)
                return 1
            for text, result in zip(part, results, strict=True):
                print(json.dumps({"text": text, **result}, ensure_ascii=False), flush=True)
    return 0


def _read_texts(path: str | None) -> Iterator[str]:
    if path is None:
        return
    if path != "-" and not Path(path).is_file():
        raise DataError(f"file: {path} not found: give a UTF-8 text file with one text per line (or file=- for "
                        "stdin)")
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    with stream:
        for line in stream:
            if line.strip():
                yield line.rstrip("\n")
