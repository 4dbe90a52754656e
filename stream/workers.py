"""Running the runner: one worker in this process, N local processes, or N Ray actors — one group.

Shutdown: the first SIGINT/SIGTERM asks every worker to finish its batch (produce, flush, commit) and leave
the group; a second one abandons the in-flight batch (uncommitted, so it is delivered again — nothing lost).
With worker processes, the parent owns Ctrl-C and forwards SIGTERM; the children ignore SIGINT so that one
Ctrl-C does not count twice.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from stream.classify import Classify, build_classify
from stream.config import StreamConfig
from stream.runner import RunSummary, StreamRunner

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


@contextlib.contextmanager
def graceful_signals(runner: StreamRunner) -> Iterator[None]:
    """SIGINT/SIGTERM → ``runner.stop()``; a second signal → KeyboardInterrupt. Main thread only."""

    def handler(signum: int, _frame: object) -> None:
        if runner.stopping:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: abandoning the in-flight batch")
        log.info("%s: finishing the current batch, then closing", signal.Signals(signum).name)
        runner.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_worker(
    config: StreamConfig, index: int = 0, *, classify: Classify | None = None, workers_on_host: int = 1
) -> RunSummary:
    """One worker in this process, stopped by SIGINT/SIGTERM (or ``idle_exit_s``)."""
    cfg = config.for_worker(index) if config.workers > 1 else config
    runner = StreamRunner(cfg, classify or build_classify(cfg, workers_on_host=workers_on_host), worker=index)
    with graceful_signals(runner):
        return runner.run()


def run_stream(config: StreamConfig, *, log_level: int = logging.INFO) -> int:
    """``finsent stream``: ``config.workers`` consumers in group ``config.group_id``; returns an exit code."""
    if config.workers == 1:
        run_worker(config)
        return 0
    if config.worker_backend == "process":
        return run_processes(config, log_level=log_level)
    return run_ray_actors(config)


# ---------------------------------------------------------------------------------------------- processes
def _process_main(config: StreamConfig, index: int, log_level: int) -> None:
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    logging.getLogger("kafka").setLevel(max(log_level, logging.WARNING))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards SIGTERM
    run_worker(config, index, workers_on_host=config.workers)


def run_processes(config: StreamConfig, *, log_level: int = logging.INFO) -> int:
    """``config.workers`` spawned processes; a worker that dies leaves its partitions to the others."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_process_main, args=(config, i, log_level), name=f"stream-worker-{i}")
        for i in range(config.workers)
    ]
    signals = {"count": 0}

    def handler(signum: int, _frame: object) -> None:
        signals["count"] += 1
        for p in procs:
            if p.is_alive() and p.pid is not None:
                (p.terminate if signals["count"] == 1 else p.kill)()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.start()
        log.info("started %d worker processes in group %s", len(procs), config.group_id)
        reported: set[int] = set()
        while any(p.is_alive() for p in procs):
            for i, p in enumerate(procs):
                if not p.is_alive() and p.exitcode not in (0, None) and i not in reported:
                    reported.add(i)
                    log.error("worker %d exited with code %s; its partitions move to the others", i, p.exitcode)
            time.sleep(0.2)
        for p in procs:
            p.join()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    codes = [p.exitcode or 0 for p in procs]
    return 0 if all(c == 0 for c in codes) else 1


# ---------------------------------------------------------------------------------------------- Ray
class StreamWorkerActor:
    """Body of a Ray actor worker (wrapped with ``ray.remote`` at run time; needs ``max_concurrency=2`` so
    ``stop`` can run while ``run`` blocks)."""

    def __init__(self, config: StreamConfig, index: int) -> None:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        cfg = config.for_worker(index)
        self.runner = StreamRunner(cfg, build_classify(cfg), worker=index)

    def run(self) -> dict[str, Any]:
        return asdict(self.runner.run())

    def stop(self) -> None:
        self.runner.stop()


def run_ray_actors(config: StreamConfig) -> int:
    """``config.workers`` Ray actors in one consumer group; SIGINT/SIGTERM stop them gracefully."""
    import ray

    if not ray.is_initialized():
        address = None if config.ray_address == "local" else config.ray_address
        ray.init(address=address)
    actor_cls = ray.remote(num_cpus=config.ray_num_cpus, max_concurrency=2)(StreamWorkerActor)
    actors = [actor_cls.remote(config, i) for i in range(config.workers)]
    pending = [a.run.remote() for a in actors]
    signals = {"count": 0}

    def handler(signum: int, _frame: object) -> None:
        signals["count"] += 1
        for a in actors:
            if signals["count"] == 1:
                a.stop.remote()
            else:
                ray.kill(a)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    failed = 0
    try:
        log.info("started %d Ray actor workers in group %s", len(actors), config.group_id)
        while pending:
            done, pending = ray.wait(pending, timeout=0.5)
            for ref in done:
                try:
                    summary = ray.get(ref)
                    log.info("actor worker finished: %d records", summary["records"])
                except Exception:
                    failed += 1
                    log.exception("an actor worker failed; its partitions move to the others")
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 0 if failed == 0 else 1
