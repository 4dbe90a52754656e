"""Serving throughput and latency, one run, same model and texts for every variant:

  (a) a plain Hugging Face ``pipeline("text-classification")`` over the same weights, one text per call
  (b) the in-process ``classifier.predict.Predictor``, one text per call
  (c) Ray Serve over HTTP (FastAPI ingress, @serve.batch), one text per request
  (d) Ray Serve over a ``DeploymentHandle``, one text per call

each at concurrency 1 and 32 (concurrent clients, each sending its next text when the last one answered).
Prints sequences/s, p50/p99 latency and the throughput ratio to (a) at the same concurrency.

Run it inside a private network namespace (Serve opens gRPC on [::]:0), from the repository root:

    python bench/serve_throughput.py --model DIR

Without --model it builds a model directory from --base (the default encoder, untrained head: same cost as a
fine-tuned model) or, with --base tiny, the random tiny test model. The plain pipeline tokenizes with the
base tokenizer only (no jieba compound tokens), as an off-the-shelf pipeline would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.serve_throughput")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEXTS = ROOT.parent / "shared" / "data" / "finfe" / "dev.txt"
DEFAULT_BASE = ROOT.parent / "shared" / "models" / "me5-small-zh-fin"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="finsent model directory to serve (default: built from --base)")
    p.add_argument("--base", default=str(DEFAULT_BASE),
                   help="without --model: base encoder dir to build an untrained-head model from, or 'tiny'")
    p.add_argument("--texts", type=Path, default=DEFAULT_TEXTS, help="label|||text file (FinFE dev by default)")
    p.add_argument("--requests", type=int, default=256, help="texts sent per variant and concurrency")
    p.add_argument("--concurrency", default="1,32", help="comma-separated client concurrencies")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the Serve replica and torch threads in-process")
    p.add_argument("--max-batch-size", type=int, default=32, help="Serve @serve.batch max_batch_size")
    p.add_argument("--batch-wait-s", type=float, default=0.005, help="Serve batch_wait_timeout_s")
    p.add_argument("--skip", default="", help="comma-separated variants to skip, e.g. c,d")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="variants (b)-(d) with dynamic int8 Linear layers (the baseline (a) stays fp32)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ inputs
def load_texts(path: Path, n: int) -> list[str]:
    texts: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("|||", 1)[-1].strip()
        if text:
            texts.append(text)
        if len(texts) == n:
            break
    if not texts:
        raise SystemExit(f"no texts in {path}: give a label|||text file with --texts")
    return (texts * (n // len(texts) + 1))[:n]


def prepare_model(args: argparse.Namespace, workdir: Path) -> Path:
    if args.model:
        return args.model
    if args.base == "tiny" or not Path(args.base).is_dir():
        from classifier.testing import make_tiny_model_dir

        log.info("no --model and no base encoder: benchmarking the tiny random model")
        return make_tiny_model_dir(workdir / "tiny")
    from classifier.labels import DEFAULT_LABELS
    from classifier.modeldir import ModelMeta, save_model_dir
    from classifier.modeling import build_classifier
    from classifier.tokenization import TruncationConfig

    trunc = TruncationConfig(max_len=128)
    model, tok = build_classifier(args.base, DEFAULT_LABELS, truncation=trunc)
    meta = ModelMeta(labels=DEFAULT_LABELS, base_model=str(args.base), truncation=trunc, name="bench-untrained")
    return save_model_dir(workdir / "base-untrained", model, tok, meta)


# ------------------------------------------------------------------------------------------------ measuring
def summarize(name: str, concurrency: int, latencies: list[float], wall: float) -> dict[str, Any]:
    lat = sorted(latencies)
    return {
        "variant": name,
        "concurrency": concurrency,
        "requests": len(lat),
        "seq_per_s": len(lat) / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))],
    }


def run_threads(call: Callable[[str], Any], texts: list[str], concurrency: int) -> tuple[list[float], float]:
    """``concurrency`` workers; each takes the next text when its previous call returned."""
    it = iter(texts)
    lock = threading.Lock()
    latencies: list[float] = []

    def worker() -> None:
        while True:
            with lock:
                text = next(it, None)
            if text is None:
                return
            t0 = time.perf_counter()
            call(text)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return latencies, time.perf_counter() - start


async def run_async(call: Callable[[str], Any], texts: list[str], concurrency: int) -> tuple[list[float], float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in texts:
        queue.put_nowait(t)
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            text = queue.get_nowait()
            t0 = time.perf_counter()
            await call(text)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ variants
def hf_pipeline(model_dir: Path) -> Callable[[str], Any]:
    """transformers' text-classification pipeline over the finsent weights (a thin output adapter only)."""
    import torch
    from transformers import AutoTokenizer, pipeline
    from transformers.modeling_outputs import SequenceClassifierOutput
    from transformers.utils import logging as hf_logging

    from classifier.modeldir import load_model_dir

    model, tok, _ = load_model_dir(model_dir, "cpu")

    class Adapter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.config = model, model.config
            self.device, self.dtype = torch.device("cpu"), torch.float32

        def can_generate(self) -> bool:
            return False

        def forward(self, input_ids=None, attention_mask=None, **_: Any) -> SequenceClassifierOutput:
            return SequenceClassifierOutput(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask))

    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    hf_logging.set_verbosity(logging.CRITICAL)  # "The model 'Adapter' is not supported for text-classification"
    pipe = pipeline("text-classification", model=Adapter().eval(), tokenizer=hf_tok, device="cpu", top_k=None,
                    truncation=True, max_length=tok.truncation.max_len)
    hf_logging.set_verbosity_warning()
    return lambda text: pipe(text)


def run_in_process(args: argparse.Namespace, model_dir: Path, texts: list[str], concs: list[int]) -> list[dict]:
    import torch

    from classifier.predict import Predictor

    torch.set_num_threads(args.cpus)
    rows = []
    skip = set(args.skip.split(","))
    if "a" not in skip:
        pipe = hf_pipeline(model_dir)
        for _ in range(5):
            pipe(texts[0])
        for c in concs:
            rows.append(summarize("(a) HF pipeline", c, *run_threads(pipe, texts, c)))
            log.info("%s", rows[-1])
    if "b" not in skip:
        predictor = Predictor.from_dir(model_dir, device="cpu", quantize=args.quantize)
        predictor.predict(texts[:8])
        # reference first (before many client threads have entered torch): offline, batches of 32 by length
        t0 = time.perf_counter()
        predictor.predict(texts)
        wall = time.perf_counter() - t0
        offline = {"variant": "(b) Predictor, one call with all texts", "concurrency": 0,
                   "requests": len(texts), "seq_per_s": len(texts) / wall, "p50_ms": None, "p99_ms": None}
        for c in concs:
            rows.append(summarize("(b) Predictor", c, *run_threads(lambda t: predictor.predict([t]), texts, c)))
            log.info("%s", rows[-1])
        rows.append(offline)
    return rows


def run_serve(args: argparse.Namespace, model_dir: Path, texts: list[str], concs: list[int]) -> list[dict]:
    import aiohttp
    import ray
    from ray import serve

    from serving.app import build_app
    from serving.config import make_config

    skip = set(args.skip.split(","))
    if {"c", "d"} <= skip:
        return []
    port = _free_port()
    cfg = make_config(model_dir=str(model_dir), num_cpus=args.cpus, num_gpus=0, min_replicas=1, max_replicas=1,
                      max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_s,
                      max_ongoing_requests=max(64, 2 * args.max_batch_size), port=port, app_name="bench",
                      quantize=args.quantize)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    handle = serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
    url = cfg.base_url() + "/v1/classify"
    rows = []

    async def measure() -> None:
        conn = aiohttp.TCPConnector(limit=max(concs))
        async with aiohttp.ClientSession(connector=conn) as session:

            async def http_call(text: str) -> Any:
                async with session.post(url, json={"texts": [text]}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
                    return await resp.json()

            async def handle_call(text: str) -> Any:
                return await handle.classify.remote([text])

            for name, key, call in (("(c) Serve HTTP", "c", http_call), ("(d) Serve handle", "d", handle_call)):
                if key in skip:
                    continue
                for t in texts[:16]:
                    await call(t)
                for c in concs:
                    before = await handle.stats.remote()
                    row = summarize(name, c, *await run_async(call, texts, c))
                    after = await handle.stats.remote()
                    row["forward_calls"] = after["forward_calls"] - before["forward_calls"]
                    rows.append(row)
                    log.info("%s", row)

    try:
        asyncio.run(measure())
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------ report
def report(rows: list[dict], model_dir: Path, args: argparse.Namespace) -> str:
    base = {r["concurrency"]: r["seq_per_s"] for r in rows if r["variant"].startswith("(a)")}
    lines = [
        f"model {model_dir}  texts {args.texts.name} ×{args.requests}  cpus {args.cpus}  "
        f"serve max_batch_size {args.max_batch_size} wait {args.batch_wait_s}s",
        f"{'variant':40} {'conc':>4} {'seq/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'fwd':>5} {'vs (a)':>7}",
    ]
    for r in rows:
        ratio = r["seq_per_s"] / base[r["concurrency"]] if r["concurrency"] in base else None
        fmt = lambda v: f"{v:8.1f}" if v is not None else f"{'-':>8}"  # noqa: E731
        lines.append(
            f"{r['variant']:40} {r['concurrency'] or '-':>4} {r['seq_per_s']:8.1f} {fmt(r['p50_ms'])} "
            f"{fmt(r['p99_ms'])} {r.get('forward_calls', '-')!s:>5} "
            + (f"{ratio:6.2f}x" if ratio is not None else f"{'-':>7}")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    concs = [int(c) for c in args.concurrency.split(",") if c]
    texts = load_texts(args.texts, args.requests)
    with tempfile.TemporaryDirectory(prefix="finsent-bench-") as tmp:
        model_dir = prepare_model(args, Path(tmp))
        rows = run_in_process(args, model_dir, texts, concs) + run_serve(args, model_dir, texts, concs)
        out = report(rows, model_dir, args)
    print(out)
    if args.json:
        args.json.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
