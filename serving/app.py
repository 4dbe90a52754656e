"""Typed Serve application builder.

    serve run serving.app:build_app model_dir=/path/to/model max_batch_size=16
    serve deploy cluster/serve.yaml            # import_path: serving.app:build_app, args: {...}

Serve validates the ``key=value`` arguments (or the YAML ``args:``) into ``ServeConfig`` because that is the
annotation of ``build_app``'s only parameter. (No ``from __future__ import annotations`` in this module: Serve
reads the annotation as a class.)
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.serve import Application

from classifier.errors import ConfigError
from serving.config import ServeConfig, make_config

log = logging.getLogger(__name__)

#: the typed builder argument (Ray's "AppArgs" pattern); one config for the whole app
AppArgs = ServeConfig


def build_app(args: AppArgs) -> Application:
    """Bind the finsent deployment with the resources, autoscaling and limits of ``args``."""
    from serving.deployment import FinsentDeployment

    cfg = make_config(args) if isinstance(args, (Mapping, ServeConfig)) else _reject(args)
    if not cfg.model_dir:
        raise ConfigError(
            "model_dir is required: pass model_dir=/path/to/model (a directory written by `finsent finetune`)"
        )
    if not Path(cfg.model_dir).is_dir():
        raise ConfigError(
            f"model_dir {cfg.model_dir} is not a directory on this node: give the path of a finsent model "
            "directory that every Ray node can read"
        )
    options = cfg.deployment_options()
    log.info("building app %s: model_dir=%s resources=%s autoscaling=%s", cfg.app_name, cfg.model_dir,
             options["ray_actor_options"], options["autoscaling_config"])
    return FinsentDeployment.options(**options).bind(cfg.model_dump())


def _reject(args: Any) -> ServeConfig:
    raise ConfigError(f"build_app takes a ServeConfig or a mapping of its fields, got {type(args).__name__}")
