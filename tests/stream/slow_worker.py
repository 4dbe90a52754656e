"""A stream worker whose classifier takes ``--delay`` seconds per batch and announces each batch in
``--marker`` before classifying it — so a test can signal it while a batch is in flight.

    python tests/stream/slow_worker.py --config '{"bootstrap_servers": ..., ...}' --delay 2 --marker FILE
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from classifier.config import build
from stream.classify import build_classify
from stream.config import StreamConfig
from stream.workers import LOG_FORMAT, run_worker


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="StreamConfig fields as a JSON object")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--marker", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    cfg = build(StreamConfig, json.loads(args.config))
    predict = build_classify(cfg)

    def slow(texts: list[str]) -> list[dict]:
        with args.marker.open("a", encoding="utf-8") as f:
            f.write(f"batch {len(texts)}\n")
        time.sleep(args.delay)
        return predict(texts)

    summary = run_worker(cfg, classify=slow)
    print(json.dumps({"records": summary.records, "labelled": summary.labelled}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
