"""ServeConfig validation, YAML loading, derived Serve options and the shipped cluster/serve*.yaml (no Ray)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from classifier.errors import ConfigError
from serving.config import BatchingUpdate, ServeConfig, describe_fields, load_serve_config, make_config

ROOT = Path(__file__).resolve().parents[2]
SERVE_YAMLS = [ROOT / "cluster" / "serve.yaml", ROOT / "cluster" / "serve-gpu.yaml"]


def test_defaults_are_valid_and_every_field_documented():
    cfg = ServeConfig()
    assert (cfg.max_batch_size, cfg.batch_wait_timeout_s, cfg.host, cfg.port) == (32, 0.01, "127.0.0.1", 8000)
    assert all(f.description for f in ServeConfig.model_fields.values())
    assert all(f"  {name} = " in describe_fields() for name in ServeConfig.model_fields)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"max_batch_size": 0}, ["max_batch_size", "greater than or equal to 1", "got 0"]),
        ({"max_batch_size": 64, "max_ongoing_requests": 32}, ["max_ongoing_requests (32) < max_batch_size (64)",
                                                               "set max_ongoing_requests >= max_batch_size"]),
        ({"min_replicas": 3, "max_replicas": 2}, ["max_replicas (2) < min_replicas (3)", "raise max_replicas"]),
        ({"initial_replicas": 9}, ["initial_replicas (9) must lie within", "leave it unset"]),
        ({"route_prefix": "api"}, ["route_prefix", "must start with '/'"]),
        ({"device": "tpu"}, ["device", "'auto', 'cpu' or 'cuda'"]),
        ({"max_batch_sise": 8}, ["unknown config key(s): max_batch_sise", "did you mean max_batch_size?"]),
        ({"model_dir": "  "}, ["model_dir", "pass model_dir=/path/to/model"]),
        ({"max_explain_texts": 100}, ["max_explain_texts (100) > max_texts_per_request (64)"]),
    ],
)
def test_invalid_values_name_the_field_and_the_fix(overrides, words):
    with pytest.raises(ConfigError) as e:
        make_config(**overrides)
    for w in words:
        assert w in str(e.value)


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "serve.yaml"
    f.write_text("model_dir: /m/a\nmax_batch_size: 8\nmax_replicas: 2\n", encoding="utf-8")
    cfg = load_serve_config(f, ["max_batch_size=16", "port=8123", "route_prefix=/finsent/"])
    assert (cfg.model_dir, cfg.max_batch_size, cfg.max_replicas, cfg.port) == ("/m/a", 16, 2, 8123)
    assert cfg.route_prefix == "/finsent" and cfg.base_url() == "http://127.0.0.1:8123/finsent"
    with pytest.raises(ConfigError, match="not found"):
        load_serve_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="keys are flat"):
        load_serve_config(None, ["autoscaling.min_replicas=2"])


def test_deployment_options_and_user_config():
    cfg = make_config(model_dir="/m", num_cpus=0.5, num_gpus=0, min_replicas=1, max_replicas=3,
                      initial_replicas=2, max_batch_size=8, max_ongoing_requests=20, max_queued_requests=50)
    opts = cfg.deployment_options()
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "initial_replicas": 2,
                                          "target_ongoing_requests": 16.0, "upscale_delay_s": 10.0,
                                          "downscale_delay_s": 300.0}
    assert (opts["max_ongoing_requests"], opts["max_queued_requests"]) == (20, 50)
    assert opts["user_config"] == {"model_dir": "/m", "max_batch_size": 8, "batch_wait_timeout_s": 0.01}
    assert BatchingUpdate.model_validate(opts["user_config"]).max_batch_size == 8


def test_num_gpus_auto_follows_the_hardware():
    import torch

    assert make_config().resolved_num_gpus() == (1.0 if torch.cuda.is_available() else 0.0)
    assert make_config(num_gpus=0.5).resolved_num_gpus() == 0.5


def test_build_app_checks_model_dir(tmp_path, toy_model_dir):
    from ray.serve import Application

    from serving.app import build_app

    with pytest.raises(ConfigError, match="model_dir is required"):
        build_app(ServeConfig())
    with pytest.raises(ConfigError, match="is not a directory"):
        build_app({"model_dir": str(tmp_path / "nope")})
    # Serve hands `serve run ... key=value` strings to the builder; they validate like the YAML args
    app = build_app(ServeConfig.model_validate({"model_dir": str(toy_model_dir), "max_batch_size": "8",
                                                "num_gpus": "0"}))
    assert isinstance(app, Application)


@pytest.mark.parametrize("path", SERVE_YAMLS, ids=lambda p: p.name)
def test_shipped_serve_yaml_is_valid_and_every_key_commented(path):
    from ray.serve.schema import ServeDeploySchema

    text = path.read_text(encoding="utf-8")
    ServeDeploySchema.model_validate(yaml.safe_load(text))
    uncommented = [line for line in text.splitlines()
                   if re.match(r"^\s*(- )?[A-Za-z_]+:", line) and "#" not in line]
    assert uncommented == []
    doc = yaml.safe_load(text)
    spec = doc["applications"][0]
    assert spec["import_path"] == "serving.app:build_app"
    dep = spec["deployments"][0]
    assert dep["name"] == "FinsentClassifier"
    # args plus the deployment's overrides still form a valid ServeConfig
    auto = dep["autoscaling_config"]
    cfg = make_config({**spec["args"], **auto, "max_ongoing_requests": dep["max_ongoing_requests"],
                       "max_queued_requests": dep["max_queued_requests"],
                       "num_cpus": dep["ray_actor_options"]["num_cpus"],
                       "num_gpus": dep["ray_actor_options"]["num_gpus"]})
    live = BatchingUpdate.model_validate(dep["user_config"])
    assert live.model_dir == cfg.model_dir and live.max_batch_size <= dep["max_ongoing_requests"]
    # the deployment overrides repeat args exactly (args is what the replica itself sees as its config)
    args = make_config(spec["args"])
    for key, value in {**auto, **dep["ray_actor_options"]}.items():
        assert getattr(args, key) == value, key
    for key in ("max_ongoing_requests", "max_queued_requests"):
        assert getattr(args, key) == dep[key], key
    assert args.user_config() == {**dep["user_config"]}


def test_live_update_is_validated_like_the_config():
    from pydantic import ValidationError

    from serving.config import format_validation_error

    assert BatchingUpdate.model_validate({"model_dir": "/m/b/"}).model_dir == "/m/b"  # same path → no reload
    with pytest.raises(ValidationError) as e:
        BatchingUpdate.model_validate({"max_batch_size": 0, "model_dri": "/m"})
    msg = format_validation_error(e.value, BatchingUpdate)
    assert "max_batch_size: Input should be greater than or equal to 1 (got 0)" in msg
    assert "unknown config key(s): model_dri (did you mean model_dir?)" in msg
