"""Deploy the finsent app by config, read which model it serves, and hot-swap that model (user_config).

Serve changes a running deployment in place (``reconfigure``, no replica restart, no dropped request) only for
an application deployed *by config* (``serve deploy``, a RayService, or :func:`deploy_app`, which
``finsent serve`` uses): a new ``user_config`` with the same import path and args is a light update. An app
deployed with ``serve.run`` would be rebuilt instead, so :func:`swap_model` refuses it, saying so.

    deploy_app(make_config(model_dir="runs/finetune", app_name="finsent"))
    served_model("finsent")                       # {"model_dir": ..., "model_version": ..., "user_config": ...}
    swap_model("finsent", "runs/learn/learn-.../model", expect_version="finsent@1a2b3c4d")

The swap applies the app's last config with the deployment's ``user_config.model_dir`` replaced (the other
declarative apps of the cluster are sent unchanged, since an apply replaces the whole set), then waits until the
replicas answer with the new model version. A replica that cannot load the new model keeps the old one and
reports ``last_update_error``; the swap then puts the old ``model_dir`` back into the config and raises
:class:`SwapError`. The app's ``args.model_dir`` keeps naming the first model: a replica Serve starts later
loads it, then the ``user_config`` one.

Needs a connected Ray with Serve running (``serve.start``). Uses the Serve controller client's config apply,
as Ray's own ``serve run config.yaml`` does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from classifier.errors import FinsentError
from serving.config import ServeConfig

log = logging.getLogger(__name__)

#: the builder every finsent app is deployed from (serving/app.py)
IMPORT_PATH = "serving.app:build_app"


class SwapError(FinsentError):
    """The served model could not be read or swapped; the message says what to do."""


def _client() -> Any:
    from ray.serve.context import _get_global_client

    return _get_global_client()


def _details() -> dict[str, Any]:
    details = _client().get_serve_details()
    return details if isinstance(details, dict) else details.model_dump()


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if hasattr(obj, "model_dump"):
        return obj.model_dump(exclude_unset=True)
    return dict(obj)


def _declarative_configs(details: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """name → last applied config of every app that was deployed by config."""
    out = {}
    for name, app in (details.get("applications") or {}).items():
        cfg = app.get("deployed_app_config")
        if cfg:
            out[name] = _as_dict(cfg)
    return out


def _apply(configs: Mapping[str, Mapping[str, Any]], details: Mapping[str, Any]) -> None:
    from ray.serve.schema import ServeDeploySchema

    doc: dict[str, Any] = {"applications": list(configs.values())}
    if details.get("target_capacity") is not None:
        doc["target_capacity"] = details["target_capacity"]
    _client().deploy_apps(ServeDeploySchema.model_validate(doc))


def deploy_app(cfg: ServeConfig, timeout_s: float = 300.0) -> None:
    """Deploy (or update) the finsent app ``cfg.app_name`` by config, like ``serve deploy``, and wait until it
    runs. Other apps deployed by config are kept."""
    from serving.deployment import DEPLOYMENT_NAME  # noqa: F401 - imported to fail early without Serve

    details = _details()
    configs = _declarative_configs(details)
    configs[cfg.app_name] = {
        "name": cfg.app_name,
        "route_prefix": cfg.route_prefix,
        "import_path": IMPORT_PATH,
        "args": {k: v for k, v in cfg.model_dump(mode="json").items() if v is not None},
    }
    _apply(configs, details)
    _wait_running(cfg.app_name, timeout_s)


def _wait_running(app_name: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status = message = None
    while time.monotonic() < deadline:
        app = (_details().get("applications") or {}).get(app_name)
        if app is not None:
            status, message = str(app.get("status")), app.get("message", "")
            if status.endswith("RUNNING"):
                return app
            if status.endswith("DEPLOY_FAILED"):
                raise SwapError(f"Serve app {app_name} failed to deploy: {message}")
        time.sleep(0.5)
    raise SwapError(f"Serve app {app_name} is not running after {timeout_s:g} s (status {status}: {message})")


def _deployment(app: Mapping[str, Any], app_name: str) -> dict[str, Any]:
    from serving.deployment import DEPLOYMENT_NAME

    dep = (app.get("deployments") or {}).get(DEPLOYMENT_NAME)
    if dep is None:
        raise SwapError(f"Serve app {app_name} has no {DEPLOYMENT_NAME} deployment: is it a finsent app?")
    return dep


def served_model(app_name: str) -> dict[str, Any]:
    """What app ``app_name`` serves: ``model_dir`` and ``user_config`` (the controller's target) and the
    ``model_version`` and ``last_update_error`` one replica reports."""
    from ray import serve

    app = (_details().get("applications") or {}).get(app_name)
    if app is None:
        raise SwapError(f"no Serve app named {app_name!r} is running: start it with `finsent serve "
                        f"app_name={app_name} model_dir=...`, or set serve_app to a running app's name")
    user_config = _as_dict((_deployment(app, app_name).get("deployment_config") or {}).get("user_config"))
    stats = serve.get_app_handle(app_name).stats.remote().result(timeout_s=60)
    return {"model_dir": user_config.get("model_dir") or stats["model_dir"], "user_config": user_config,
            "model_version": stats["model_version"], "replica_model_dir": stats["model_dir"],
            "last_update_error": stats.get("last_update_error"),
            "source": str(app.get("source", "")), "declarative": bool(app.get("deployed_app_config"))}


def _set_model_dir(configs: dict[str, dict[str, Any]], app_name: str, user_config: Mapping[str, Any],
                   model_dir: str) -> None:
    from serving.deployment import DEPLOYMENT_NAME

    cfg = dict(configs[app_name])
    deployments = [dict(d) for d in cfg.get("deployments") or []]
    entry = next((d for d in deployments if d.get("name") == DEPLOYMENT_NAME), None)
    if entry is None:
        entry = {"name": DEPLOYMENT_NAME}
        deployments.append(entry)
    entry["user_config"] = {**user_config, "model_dir": model_dir}
    cfg["deployments"] = deployments
    configs[app_name] = cfg


def swap_model(app_name: str, model_dir: str, *, expect_version: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Point app ``app_name``'s ``user_config.model_dir`` at ``model_dir`` and wait until its replicas serve
    ``expect_version`` (the version ``classifier.modeldir.model_version`` gives the directory; a quantized
    app's versions carry a suffix, e.g. ``+int8``, which is allowed). Returns the served model after the swap.

    Raises :class:`SwapError` (the app keeps or gets back its old model) when the app is not deployed by
    config, when a replica cannot load the model, or after ``timeout_s``."""
    from ray import serve

    details = _details()
    app = (details.get("applications") or {}).get(app_name)
    if app is None:
        raise SwapError(f"no Serve app named {app_name!r} is running: nothing to swap; the new model is {model_dir}")
    configs = _declarative_configs(details)
    if app_name not in configs:
        raise SwapError(f"Serve app {app_name} was deployed with serve.run, so its model cannot be swapped in place "
                        f"(Serve would rebuild it): redeploy it by config (`finsent serve`, `serve deploy` or a "
                        f"RayService) and run learn again, or point it at {model_dir} yourself")
    old_user_config = _as_dict((_deployment(app, app_name).get("deployment_config") or {}).get("user_config"))
    old_dir = old_user_config.get("model_dir")
    handle = serve.get_app_handle(app_name)
    error_before = handle.stats.remote().result(timeout_s=60).get("last_update_error")
    _set_model_dir(configs, app_name, old_user_config, model_dir)
    log.info("swapping Serve app %s: model_dir %s -> %s", app_name, old_dir, model_dir)
    _apply(configs, details)

    replicas = max(1, len(_deployment(app, app_name).get("replicas") or []))
    deadline = time.monotonic() + timeout_s
    confirmed = 0
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = handle.stats.remote().result(timeout_s=60)
        version = str(stats.get("model_version", ""))
        if stats.get("model_dir") == model_dir and (version == expect_version
                                                     or version.startswith(expect_version + "+")):
            confirmed += 1
            if confirmed >= 3 * replicas:  # answers of (most likely) every replica
                log.info("Serve app %s now serves %s", app_name, version)
                return {"model_dir": model_dir, "model_version": version, "previous_model_dir": old_dir}
            continue
        confirmed = 0
        if stats.get("last_update_error") not in (None, error_before) and stats.get("model_dir") != model_dir:
            error = stats["last_update_error"]
            _revert(app_name, old_user_config, old_dir)
            raise SwapError(f"a replica of {app_name} could not load {model_dir} ({error}); it keeps serving "
                            f"{version} and the app's config points at {old_dir} again")
        time.sleep(0.3)
    _revert(app_name, old_user_config, old_dir)
    raise SwapError(f"Serve app {app_name} did not serve {expect_version} within {timeout_s:g} s (last answer: "
                    f"{stats.get('model_version')} from {stats.get('model_dir')}); its config points at {old_dir} "
                    "again")


def _revert(app_name: str, user_config: Mapping[str, Any], old_dir: str | None) -> None:
    if not old_dir:
        return
    try:
        details = _details()
        configs = _declarative_configs(details)
        if app_name in configs:
            _set_model_dir(configs, app_name, user_config, old_dir)
            _apply(configs, details)
    except Exception:  # the SwapError that follows says what happened; this is best effort
        log.exception("could not point Serve app %s back at %s", app_name, old_dir)
