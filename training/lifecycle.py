"""The one training lifecycle every recipe (fine-tuning, pretraining, distillation) runs through.

Driver — :func:`run_recipe`, on the machine that starts the run::

    resolve paths → check inputs → plan / resume → start or join Ray → prepare → TorchTrainer → export

* *resolve*: every path absolute, defaults filled in (:func:`training.config.resolve_paths`), so workers
  started elsewhere read the same files;
* *check inputs*: a missing file fails here, before Ray starts, naming the setting;
* *plan / resume* (:func:`plan_run`): a new run gets a fresh Ray run name and must not overwrite an exported
  model; ``resume=true`` continues the run recorded in ``output_dir/run.json`` and refuses settings that
  differ from it (the recipe's ``resume_must_match``);
* *start or join Ray* (:func:`ensure_ray`): ``$RAY_ADDRESS`` (``ray job submit`` sets it) or a new local
  instance — never a stale cluster a crashed run left behind;
* *prepare*: the recipe's driver-side work on the cluster (data counts for the report, the teacher's labels of
  the corpus for distillation);
* *TorchTrainer*: ``num_workers`` DDP workers run the recipe's ``train_func``; Ray keeps the checkpoints the
  recipe ranks (:meth:`Recipe.checkpoint_config`) and restarts workers from the latest after a crash;
* *export*: the recipe writes its output directory and report from Ray's result.

Workers — :func:`run_worker`, called by each recipe's ``train_func``: rebuild the config, create the recipe's
worker object, ``setup`` (restoring Ray's latest checkpoint when there is one), ``train`` (the recipe's loop:
train, evaluate, report metrics with a checkpoint). Ray Train's worker calls are behind :class:`WorkerContext`
(:class:`RayWorkerContext` on a worker; the base class runs a recipe in one process without Ray, for tests).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from classifier.config import build, replace, to_dict
from classifier.errors import ConfigError
from classifier.modeldir import WEIGHTS_FILE
from training.config import TrainSettings, resolve_paths

log = logging.getLogger(__name__)

#: the run record in output_dir: which Ray run wrote it and with which settings (what resume=true reads)
RUN_FILE = "run.json"


# ================================================================================================ workers
@dataclass
class WorkerContext:
    """What a recipe's worker sees of the cluster. This base class is one process without Ray: models and
    loaders stay as they are and reports are collected in :attr:`reports` (tests, debugging)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reports: list[dict[str, Any]] = field(default_factory=list)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in its distributed form (DDP on the worker's device)."""
        return model

    def prepare_loader(self, loader: Any) -> Any:
        """The loader moving its batches to the worker's device (its sampler already shards the data)."""
        return loader

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """The directory of the checkpoint to resume from, or ``None`` on a fresh start."""
        yield None

    def report(self, metrics: dict[str, Any], save: Callable[[Path], Any] | None = None) -> None:
        """Report ``metrics`` (every worker, in step); with ``save``, rank 0 writes a checkpoint directory
        with it that Ray keeps with the metrics."""
        self.reports.append(metrics)


class RayWorkerContext(WorkerContext):
    """The context of a Ray Train worker: the only worker-side code that calls Ray Train."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        super().__init__(rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                         device=ray.train.torch.get_device())

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # moves to device; DDP (gloo/nccl) when world > 1

    def prepare_loader(self, loader: Any) -> Any:
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield Path(d)

    def report(self, metrics: dict[str, Any], save: Callable[[Path], Any] | None = None) -> None:
        import ray.train

        if save is None or self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="finsent-ckpt-") as tmp:
            save(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def setup_worker_logging(rank: int) -> None:
    """INFO on rank 0, warnings elsewhere; the chatty libraries quiet."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("jieba", "transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def run_worker(recipe: type[Recipe], config: dict[str, Any]) -> Any:
    """One Ray Train worker of ``recipe``: config → worker object → setup (from the latest checkpoint) →
    train."""
    ctx = RayWorkerContext()
    cfg = build(recipe.config_class, config)
    setup_worker_logging(ctx.rank)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(cfg.cpus_per_worker)
    worker = recipe(cfg, ctx)
    with ctx.latest_checkpoint() as d:
        worker.setup(d)
    return worker.train()


# ================================================================================================ recipes
@dataclass
class Outcome:
    """What the Ray Train run left for the export step."""

    result: Any  #: ray.train.Result
    wall_time_s: float
    resumed: bool
    use_gpu: bool


class Recipe:
    """A training recipe: driver-side class methods (check inputs, prepare, export) and a worker object
    (setup / train, with the recipe's own train-step and evaluate) that only talks to the cluster through its
    :class:`WorkerContext`. Subclasses set ``name``, ``config_class`` and ``resume_must_match``."""

    #: command name; also the prefix of generated Ray run names
    name: ClassVar[str] = "run"
    config_class: ClassVar[type[TrainSettings]] = TrainSettings
    #: settings a resumed run must share with the run it continues (data, model, batching, schedule)
    resume_must_match: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, ctx: WorkerContext | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx if ctx is not None else WorkerContext()

    # ------------------------------------------------------------------ driver side
    @classmethod
    def resolve(cls, cfg: Any) -> Any:
        return resolve_paths(cfg)

    @classmethod
    def check_inputs(cls, cfg: Any) -> None:
        """Raise naming the setting when a file the run needs is missing (before Ray starts)."""

    @classmethod
    def prepare(cls, cfg: Any, resumed: bool) -> tuple[Any, Any]:
        """Driver-side work once Ray is up; returns the config the workers get and what export needs."""
        return cfg, None

    @classmethod
    def checkpoint_config(cls, cfg: Any) -> dict[str, Any]:
        """``ray.train.CheckpointConfig`` arguments: which checkpoints Ray keeps (default: the latest)."""
        return {"num_to_keep": cfg.keep_checkpoints}

    @classmethod
    def export(cls, outcome: Outcome, cfg: Any, prepared: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def train_func(cls, config: dict[str, Any]) -> Any:
        """What every Ray Train worker runs (``TorchTrainer``'s ``train_loop_per_worker``)."""
        return run_worker(cls, config)

    # ------------------------------------------------------------------ worker side
    def setup(self, checkpoint_dir: Path | None = None) -> None:
        raise NotImplementedError

    def train(self) -> Any:
        raise NotImplementedError


# ================================================================================================ driver
def check_resume(saved: dict[str, Any], cfg: Any, keys: tuple[str, ...]) -> None:
    """Refuse to resume when a setting in ``keys`` differs from the saved config of the run."""
    now = to_dict(cfg)
    changed = [k for k in keys if k in saved and saved[k] != now.get(k)]
    if changed:
        raise ConfigError("resume: " + ", ".join(f"{k}={now.get(k)!r} (the run used {saved[k]!r})" for k in changed)
                          + " differ from the run being resumed; resume with its settings (see run.json in "
                          "output_dir) or start a new run")


def plan_run(cfg: Any, recipe: type[Recipe] = Recipe) -> tuple[Any, bool]:
    """Pick the Ray run name (new, or the one recorded in output_dir/run.json when resuming); refuse to
    overwrite an exported model unless asked to, and to resume with changed settings."""
    out = Path(cfg.output_dir)
    record = out / RUN_FILE
    saved = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    if cfg.resume:
        if cfg.run_name is None:
            if saved is None:
                raise ConfigError(f"resume: {record} not found, so there is no run to resume in {out}; start a new "
                                  "run (resume=false) or give run_name=... and storage_path=... of the run")
            cfg = replace(cfg, run_name=saved["run_name"], storage_path=saved["storage_path"])
        if saved is not None and saved.get("run_name") == cfg.run_name:
            check_resume(saved.get("config", {}), cfg, recipe.resume_must_match)
        run_dir = Path(cfg.storage_path) / str(cfg.run_name)
        if not run_dir.is_dir():
            raise ConfigError(f"resume: run directory {run_dir} not found; check run_name and storage_path")
        return cfg, True
    if (out / WEIGHTS_FILE).is_file() and not cfg.overwrite:
        raise ConfigError(f"output_dir: {out} already holds a model; pick another output_dir, pass overwrite=true, "
                          "or resume=true to continue its run")
    name = cfg.run_name or f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    if (Path(cfg.storage_path) / name).exists():
        raise ConfigError(f"run_name: {Path(cfg.storage_path) / name} already exists and would be resumed; pick a "
                          "new run_name or pass resume=true")
    return replace(cfg, run_name=name), False


def write_run_record(cfg: Any, recipe: type[Recipe]) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_FILE
    path.write_text(json.dumps({"recipe": recipe.name, "run_name": cfg.run_name, "storage_path": cfg.storage_path,
                                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": to_dict(cfg)},
                               ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def ensure_ray() -> None:
    """Join the cluster at $RAY_ADDRESS (``ray job submit`` sets it) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:  # "local": a new instance, never a stale cluster remembered in $TMPDIR/ray/ray_current_cluster
        ray.init(address="local", include_dashboard=False, log_to_driver=True)


def resolve_use_gpu(cfg: Any) -> bool:
    import ray

    if cfg.use_gpu != "auto":
        return bool(cfg.use_gpu)
    return ray.cluster_resources().get("GPU", 0) >= 1


def run_recipe(recipe: type[Recipe], cfg: Any) -> Any:
    """Run ``recipe`` with ``cfg`` through the whole lifecycle (see the module docstring); returns what the
    recipe's export returns."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = recipe.resolve(cfg)
    recipe.check_inputs(cfg)
    cfg, resumed = plan_run(cfg, recipe)
    ensure_ray()
    use_gpu = resolve_use_gpu(cfg)
    if cfg.precision != "fp32" and not use_gpu:
        raise ConfigError(f"precision: {cfg.precision} needs GPU workers but the cluster has none; use precision=fp32")
    write_run_record(cfg, recipe)
    cfg, prepared = recipe.prepare(cfg, resumed)
    log.info("%s run %s%s: %d workers (%s), storage %s", recipe.name, cfg.run_name, " (resumed)" if resumed else "",
             cfg.num_workers, "GPU" if use_gpu else f"{cfg.cpus_per_worker} CPU each", cfg.storage_path)
    trainer = TorchTrainer(
        recipe.train_func,
        train_loop_config=to_dict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=cfg.run_name, storage_path=cfg.storage_path,
                             checkpoint_config=CheckpointConfig(**recipe.checkpoint_config(cfg)),
                             failure_config=FailureConfig(max_failures=cfg.max_failures)),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if getattr(result, "error", None) is not None:
        raise result.error
    return recipe.export(Outcome(result=result, wall_time_s=wall, resumed=resumed, use_gpu=use_gpu), cfg, prepared)
