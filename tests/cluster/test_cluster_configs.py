"""Validate every YAML in cluster/: it parses, has the keys its kind needs, its import paths import, its
resources add up, it agrees with finsent's own config classes, and every key carries a comment.

Fast (a few seconds) and offline: nothing here starts Ray, a broker or a container. The kind of each YAML
document is read from its content:

* ``kind: RayCluster`` / ``kind: RayService`` (KubeRay, apiVersion ray.io/v1),
* a Ray cluster launcher config (``available_node_types``),
* a Ray Serve config (``applications``; also the ``serveConfigV2`` string inside a RayService),
* the Kafka settings (``kafka`` + ``topics``),
* a Ray runtime_env (only runtime_env keys).
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
YAML_FILES = sorted([*CLUSTER.glob("*.yaml"), *CLUSTER.glob("*.yml")])

#: the files issue 7 asks for; the serving engineer's serve*.yaml are validated when present
REQUIRED_FILES = (
    "ray-cluster.yaml",
    "kuberay-raycluster.yaml",
    "kuberay-rayservice.yaml",
    "kafka.yaml",
    "runtime_env.yaml",
)

#: fields of the KubeRay v1 CRDs (ray-operator/apis/ray/v1/*_types.go): a misspelt field would be dropped
#: silently by the API server, so anything else is an error here
RAYCLUSTER_SPEC_FIELDS = {
    "suspend",
    "managedBy",
    "autoscalerOptions",
    "headServiceAnnotations",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "rayVersion",
    "workerGroupSpecs",
    "authOptions",
    "upgradeStrategy",
}
RAYSERVICE_SPEC_FIELDS = {
    "serveConfigV2",
    "rayClusterConfig",
    "serviceUnhealthySecondThreshold",
    "deploymentUnhealthySecondThreshold",
    "serveService",
    "upgradeStrategy",
    "excludeHeadPodFromServeSvc",
    "rayClusterDeletionDelaySeconds",
}
HEAD_GROUP_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_FIELDS = {
    "suspend",
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "numOfHosts",
}
AUTOSCALER_OPTION_FIELDS = {
    "resources",
    "image",
    "imagePullPolicy",
    "securityContext",
    "idleTimeoutSeconds",
    "upscalingMode",
    "env",
    "envFrom",
    "volumeMounts",
    "version",
}

#: (vCPUs, GPUs) of the EC2 instance types a launcher config may name: its ``resources`` must match them
EC2_TYPES = {
    "m5.large": (2, 0),
    "m5.xlarge": (4, 0),
    "m5.2xlarge": (8, 0),
    "m5.4xlarge": (16, 0),
    "m5.8xlarge": (32, 0),
    "c5.2xlarge": (8, 0),
    "c5.4xlarge": (16, 0),
    "g4dn.xlarge": (4, 1),
    "g4dn.2xlarge": (8, 1),
    "g4dn.12xlarge": (48, 4),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
    "g6.12xlarge": (48, 4),
    "p3.2xlarge": (8, 1),
    "p3.8xlarge": (32, 4),
    "p4d.24xlarge": (96, 8),
    "p5.48xlarge": (192, 8),
}


# --------------------------------------------------------------------------------------------- loading
def _ray_version() -> str:
    import ray

    return ray.__version__


@functools.cache
def _load(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kind_of(doc: Any) -> str:
    """``RayCluster``, ``RayService``, ``launcher``, ``serve``, ``kafka``, ``runtime_env`` or ``unknown``."""
    if not isinstance(doc, dict):
        return "unknown"
    if doc.get("kind") in ("RayCluster", "RayService"):
        return str(doc["kind"])
    if "available_node_types" in doc:
        return "launcher"
    if "applications" in doc:
        return "serve"
    if "kafka" in doc and "topics" in doc:
        return "kafka"
    from ray.runtime_env import RuntimeEnv

    if doc and set(doc) <= set(RuntimeEnv.known_fields):
        return "runtime_env"
    return "unknown"


def _docs() -> list[tuple[Path, int, Any]]:
    return [(p, i, d) for p in YAML_FILES for i, d in enumerate(_load(p))]


def docs_of(kind: str) -> list[tuple[Path, Any]]:
    return [(p, d) for p, _, d in _docs() if kind_of(d) == kind]


def _ids(items: list[tuple[Path, Any]]) -> list[str]:
    return [p.name for p, _ in items]


def _params(kind: str) -> Any:
    items = docs_of(kind)
    return pytest.mark.parametrize(("path", "doc"), items, ids=_ids(items))


def serve_configs() -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """Every Serve config: standalone files (no cluster of their own) and RayService serveConfigV2 strings
    (with the rayClusterConfig they run on)."""
    out: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
    for p, d in docs_of("serve"):
        out.append((p.name, d, None))
    for p, d in docs_of("RayService"):
        out.append(
            (
                f"{p.name}:serveConfigV2",
                yaml.safe_load(d["spec"]["serveConfigV2"]),
                d["spec"]["rayClusterConfig"],
            )
        )
    return out


def _serve_params() -> Any:
    items = serve_configs()
    return pytest.mark.parametrize(("name", "config", "cluster"), items, ids=[n for n, _, _ in items])


# --------------------------------------------------------------------------------------- quantities
def cpu_quantity(q: Any) -> float:
    """Kubernetes CPU quantity (``"500m"``, ``"4"``, ``4``) in cores."""
    s = str(q).strip()
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


_MEM_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
}


def mem_quantity(q: Any) -> float:
    """Kubernetes memory quantity (``"512Mi"``, ``"16Gi"``, ``"1G"``, bytes) in bytes."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q).strip())
    assert m and (not m.group(2) or m.group(2) in _MEM_UNITS), f"bad memory quantity {q!r}"
    return float(m.group(1)) * _MEM_UNITS.get(m.group(2), 1)


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """The Ray container of a head/worker group: KubeRay uses the first container of the pod template."""
    containers = group["template"]["spec"]["containers"]
    assert containers, "pod template has no containers"
    return containers[0]


def group_gpus(group: dict[str, Any]) -> float:
    limits = ray_container(group).get("resources", {}).get("limits", {})
    return float(group.get("rayStartParams", {}).get("num-gpus", limits.get("nvidia.com/gpu", 0)))


def group_cpus(group: dict[str, Any]) -> float:
    params = group.get("rayStartParams", {})
    if "num-cpus" in params:
        return float(params["num-cpus"])
    return cpu_quantity(ray_container(group)["resources"]["limits"]["cpu"])


def cluster_groups(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]
    for g in spec.get("workerGroupSpecs", []):
        yield g["groupName"], g


# ======================================================================================== all files
def test_required_files_exist() -> None:
    missing = [n for n in REQUIRED_FILES if not (CLUSTER / n).is_file()]
    assert not missing, f"cluster/ lacks {missing}"


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.name for p in YAML_FILES])
def test_parses_and_kind_is_known(path: Path) -> None:
    docs = _load(path)
    assert docs, f"{path.name} is empty"
    for i, d in enumerate(docs):
        assert kind_of(d) != "unknown", (
            f"{path.name} document {i}: not a RayCluster, RayService, launcher config, Serve config, Kafka "
            f"settings or runtime_env (top-level keys: {sorted(d) if isinstance(d, dict) else type(d)})"
        )


_KEY = re.compile(
    r"""^(?P<indent>\s*)(?:-\s+)?(?P<key>"[^"]*"|'[^']*'|[^\s#'"{\[\-][^:#]*?|-[^\s:#][^:#]*?)"""
    r"""\s*:(?P<rest>\s.*|)$"""
)
_BLOCK = re.compile(r"^[|>][+-]?[0-9]?\s*(#.*)?$")
_ITEM_BLOCK = re.compile(r"^\s*-\s+[|>][+-]?[0-9]?\s*(#.*)?$")


def uncommented_keys(text: str) -> list[str]:
    """Key lines with neither a ``#`` comment on them nor a comment line directly above.

    Content of block scalars (``|``, ``>``) is skipped, except a RayService's ``serveConfigV2``, which is YAML
    itself and follows the same rule."""
    bad: list[str] = []
    lines = text.splitlines()
    skip_indent: int | None = None  # inside a block scalar whose parent line has this indent
    for n, line in enumerate(lines, 1):
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not line.strip() or indent > skip_indent:
                continue
            skip_indent = None
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if _ITEM_BLOCK.match(line):
            skip_indent = indent
            continue
        m = _KEY.match(line)
        if not m:
            continue  # a list item or a continuation line
        rest = m.group("rest").strip()
        if _BLOCK.match(rest) and m.group("key").strip("'\"") != "serveConfigV2":
            skip_indent = indent
        commented = re.search(r"(^|\s)#", rest) is not None
        above = lines[n - 2].strip() if n >= 2 else ""
        if not (commented or above.startswith("#")):
            bad.append(f"line {n}: {stripped}")
    return bad


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.name for p in YAML_FILES])
def test_every_key_is_commented(path: Path) -> None:
    bad = uncommented_keys(path.read_text(encoding="utf-8"))
    assert not bad, f"{path.name}: keys without a comment on or directly above them:\n  " + "\n  ".join(bad)


def test_comment_rule_catches_a_bare_key() -> None:
    text = (
        "# a\na: 1\nb: 2  # ok\nc:\n  - x\n  - d: 1\ns: |\n  not: checked\n# z\nserveConfigV2: |\n"
        "  # y\n  e: 1\n  f: 2\n- >-\n  g: not checked\n"
    )
    assert uncommented_keys(text) == ["line 4: c:", "line 6: - d: 1", "line 7: s: |", "line 13: f: 2"]


# =================================================================================== launcher config
@_params("launcher")
def test_launcher_config_matches_ray_schema(path: Path, doc: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(doc)  # ray-schema.json: unknown or misspelt keys fail here
    validate_config(prepare_config(copy.deepcopy(doc)))  # and after Ray fills in the provider defaults
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "auth",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "file_mounts",
    ):
        assert key in doc, f"{path.name}: {key} missing"


@_params("launcher")
def test_launcher_node_types(path: Path, doc: dict[str, Any]) -> None:
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types, f"head_node_type {doc['head_node_type']} is not a node type"
    gpu_types = []
    for name, t in types.items():
        lo, hi = t.get("min_workers", 0), t.get("max_workers", doc["max_workers"])
        if name != doc["head_node_type"]:
            assert 0 <= lo <= hi <= doc["max_workers"], (
                f"{name}: need 0 <= min_workers <= max_workers <= global"
            )
        res = t.get("resources", {})
        instance = t["node_config"].get("InstanceType")
        if instance in EC2_TYPES and res:
            cpus, gpus = EC2_TYPES[instance]
            assert res.get("CPU", cpus) == cpus, (
                f"{name}: resources CPU {res.get('CPU')} but {instance} has {cpus}"
            )
            assert res.get("GPU", 0) == gpus, (
                f"{name}: resources GPU {res.get('GPU', 0)} but {instance} has {gpus}"
            )
        gpus = res.get("GPU", EC2_TYPES.get(instance, (0, 0))[1])
        if gpus > 0 and name != doc["head_node_type"]:
            gpu_types.append(name)
    assert gpu_types, f"{path.name}: no GPU worker node type"


@_params("launcher")
def test_launcher_commands_and_image(path: Path, doc: dict[str, Any]) -> None:
    head = " ".join(doc["head_start_ray_commands"])
    worker = " ".join(doc["worker_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    assert "--dashboard-host=0.0.0.0" not in head, "keep the dashboard on loopback; use `ray dashboard`"
    image = doc.get("docker", {}).get("image", "")
    if image:
        assert f":{_ray_version()}-" in image or image.endswith(f":{_ray_version()}"), (
            f"docker image {image} is not Ray {_ray_version()} (the version finsent pins)"
        )
    setup = " ".join(doc["setup_commands"])
    assert "pip install" in setup and "finsent" in setup, "setup_commands must install finsent"
    assert "RAY_AUTH_MODE=token" in setup, "nodes must start Ray with token authentication"


# ====================================================================================== KubeRay
def kuberay_clusters() -> list[tuple[str, dict[str, Any]]]:
    out = [(p.name, d["spec"]) for p, d in docs_of("RayCluster")]
    out += [(f"{p.name}:rayClusterConfig", d["spec"]["rayClusterConfig"]) for p, d in docs_of("RayService")]
    return out


_clusters = kuberay_clusters()
_cluster_params = pytest.mark.parametrize(("name", "spec"), _clusters, ids=[n for n, _ in _clusters])


@pytest.mark.parametrize(
    ("path", "doc"),
    docs_of("RayCluster") + docs_of("RayService"),
    ids=_ids(docs_of("RayCluster") + docs_of("RayService")),
)
def test_kuberay_resource_header(path: Path, doc: dict[str, Any]) -> None:
    assert doc.get("apiVersion") == "ray.io/v1", f"{path.name}: apiVersion must be ray.io/v1"
    assert doc.get("metadata", {}).get("name"), f"{path.name}: metadata.name missing"
    spec = doc["spec"]
    allowed = RAYCLUSTER_SPEC_FIELDS if doc["kind"] == "RayCluster" else RAYSERVICE_SPEC_FIELDS
    assert set(spec) <= allowed, f"{path.name}: unknown spec fields {sorted(set(spec) - allowed)}"
    if doc["kind"] == "RayService":
        assert isinstance(spec.get("serveConfigV2"), str), "serveConfigV2 must be a YAML string (use `|`)"
        assert "rayClusterConfig" in spec


@_cluster_params
def test_kuberay_cluster_spec(name: str, spec: dict[str, Any]) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC_FIELDS, (
        f"{name}: unknown fields {sorted(set(spec) - RAYCLUSTER_SPEC_FIELDS)}"
    )
    assert str(spec.get("rayVersion")) == _ray_version(), (
        f"{name}: rayVersion {spec.get('rayVersion')!r} != installed ray {_ray_version()}"
    )
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS, f"{name}: unknown headGroupSpec fields"
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_OPTION_FIELDS, (
        f"{name}: unknown autoscalerOptions"
    )
    names = [g["groupName"] for g in spec.get("workerGroupSpecs", [])]
    assert len(names) == len(set(names)), f"{name}: duplicate groupName"
    for g in spec.get("workerGroupSpecs", []):
        assert set(g) <= WORKER_GROUP_FIELDS, (
            f"{name}/{g['groupName']}: unknown fields {set(g) - WORKER_GROUP_FIELDS}"
        )
        lo, hi = g["minReplicas"], g["maxReplicas"]
        n = g.get("replicas", lo)
        assert 0 <= lo <= n <= hi, f"{name}/{g['groupName']}: need minReplicas <= replicas <= maxReplicas"
    if spec.get("enableInTreeAutoscaling"):
        assert any(g["minReplicas"] < g["maxReplicas"] for g in spec.get("workerGroupSpecs", [])), (
            f"{name}: autoscaling on but no group can grow"
        )


@_cluster_params
def test_kuberay_groups_resources(name: str, spec: dict[str, Any]) -> None:
    opts = spec.get("autoscalerOptions", {}).get("resources")
    blocks = [("autoscaler", opts)] if opts else []
    for gname, g in cluster_groups(spec):
        params = g.get("rayStartParams")
        assert isinstance(params, dict), f"{name}/{gname}: rayStartParams missing"
        for k, v in params.items():
            assert isinstance(v, str), (
                f"{name}/{gname}: rayStartParams.{k} must be a string (KubeRay map[string]string)"
            )
        containers = g["template"]["spec"]["containers"]
        for c in containers:
            assert "resources" in c and "limits" in c["resources"], (
                f"{name}/{gname}/{c['name']}: set resource limits"
            )
            blocks.append((f"{gname}/{c['name']}", c["resources"]))
            image = c.get("image", "")
            assert _ray_version() in image, (
                f"{name}/{gname}: image {image} does not carry Ray {_ray_version()}"
            )
        c = ray_container(g)
        limit_gpu = float(c["resources"]["limits"].get("nvidia.com/gpu", 0))
        param_gpu = float(params.get("num-gpus", limit_gpu))
        assert param_gpu == limit_gpu, (
            f"{name}/{gname}: rayStartParams num-gpus {param_gpu} != nvidia.com/gpu limit {limit_gpu}"
        )
        if "num-cpus" in params and gname != "head":
            assert float(params["num-cpus"]) <= cpu_quantity(c["resources"]["limits"]["cpu"]), (
                f"{name}/{gname}: num-cpus above the container's CPU limit"
            )
        mounts = {m["name"] for cc in containers for m in cc.get("volumeMounts", [])}
        volumes = {v["name"] for v in g["template"]["spec"].get("volumes", [])}
        assert mounts <= volumes, f"{name}/{gname}: volumeMounts without a volume: {mounts - volumes}"
    for where, res in blocks:
        lim, req = res.get("limits", {}), res.get("requests", {})
        if "cpu" in lim and "cpu" in req:
            assert cpu_quantity(req["cpu"]) <= cpu_quantity(lim["cpu"]), (
                f"{name}/{where}: cpu request > limit"
            )
        if "memory" in lim and "memory" in req:
            assert mem_quantity(req["memory"]) <= mem_quantity(lim["memory"]), (
                f"{name}/{where}: memory request > limit"
            )
        if "nvidia.com/gpu" in req:
            assert req["nvidia.com/gpu"] == lim.get("nvidia.com/gpu"), f"{name}/{where}: GPU request != limit"


def test_training_cluster_has_gpu_workers() -> None:
    for p, d in docs_of("RayCluster"):
        gpu = [g for g in d["spec"].get("workerGroupSpecs", []) if group_gpus(g) > 0]
        assert gpu, f"{p.name}: the training cluster has no GPU worker group"


def test_shared_volume_is_the_same_everywhere() -> None:
    """Training writes model directories to the PVC the RayService reads them from."""
    claims = set()
    for _, spec in _clusters:
        for _, g in cluster_groups(spec):
            for v in g["template"]["spec"].get("volumes", []):
                if "persistentVolumeClaim" in v:
                    claims.add(v["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, f"RayCluster and RayService should mount one shared claim, found {claims}"


# ======================================================================================= Serve configs
def _import_path_target(import_path: str) -> Any:
    """``module:attr`` (or ``module.attr``) → the object; skip only if the module does not exist yet."""
    module, _, attr = import_path.partition(":") if ":" in import_path else import_path.rpartition(".")
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        pytest.skip(f"{module} does not exist yet (import_path {import_path})")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        assert hasattr(obj, part), f"import_path {import_path}: {module} has no attribute {attr}"
        obj = getattr(obj, part)
    return obj


def _gpu_clusters() -> list[tuple[str, float, float]]:
    """(name, most GPUs on one node, most GPUs in all) of every cluster definition in cluster/."""
    out = []
    for p, d in docs_of("launcher"):
        per_node = {
            n: float(
                t.get("resources", {}).get(
                    "GPU", EC2_TYPES.get(t["node_config"].get("InstanceType"), (0, 0))[1]
                )
            )
            for n, t in d["available_node_types"].items()
        }
        total = sum(
            g * d["available_node_types"][n].get("max_workers", d["max_workers"])
            for n, g in per_node.items()
            if n != d["head_node_type"]
        )
        out.append((p.name, max(per_node.values()), min(total, max(per_node.values()) * d["max_workers"])))
    for name, spec in _clusters:
        groups = [g for _, g in cluster_groups(spec)]
        out.append(
            (
                name,
                max(group_gpus(g) for g in groups),
                sum(group_gpus(g) * g.get("maxReplicas", 1) for g in groups),
            )
        )
    return out


@_serve_params()
def test_serve_config_schema(name: str, config: dict[str, Any], cluster: dict[str, Any] | None) -> None:
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    assert set(config) <= set(ServeDeploySchema.model_fields), (
        f"{name}: unknown keys {set(config) - set(ServeDeploySchema.model_fields)}"
    )
    assert config["applications"], f"{name}: no applications"
    names = [a["name"] for a in config["applications"]]
    assert len(names) == len(set(names)), f"{name}: duplicate application names"
    for app in config["applications"]:
        unknown = set(app) - set(ServeApplicationSchema.model_fields)
        assert not unknown, f"{name}/{app['name']}: unknown application keys {unknown}"
        for dep in app.get("deployments", []):
            unknown = set(dep) - set(DeploymentSchema.model_fields)
            assert not unknown, f"{name}/{app['name']}/{dep['name']}: unknown deployment keys {unknown}"
            auto = dep.get("autoscaling_config")
            if auto:
                unknown = set(auto) - set(AutoscalingConfig.model_fields)
                assert not unknown, f"{name}/{dep['name']}: unknown autoscaling keys {unknown}"
                AutoscalingConfig.model_validate(auto)  # min <= initial <= max, etc.
                lo, hi = auto.get("min_replicas", 1), auto.get("max_replicas", 1)
                assert lo <= auto.get("initial_replicas", lo) <= hi, (
                    f"{name}/{dep['name']}: need min <= initial <= max"
                )
                assert "num_replicas" not in dep or dep["num_replicas"] == "auto", (
                    f"{name}/{dep['name']}: num_replicas and autoscaling_config exclude each other"
                )
        if app.get("runtime_env"):
            _check_runtime_env(f"{name}/{app['name']}", app["runtime_env"])


@_serve_params()
def test_serve_import_paths_resolve(
    name: str, config: dict[str, Any], cluster: dict[str, Any] | None
) -> None:
    for app in config["applications"]:
        target = _import_path_target(app["import_path"])
        assert (
            callable(target)
            or hasattr(target, "_get_deployments")
            or target.__class__.__name__ == "Application"
        ), f"{name}: {app['import_path']} is neither an Application nor an app builder"


@_serve_params()
def test_finsent_app_args_match_serve_config(
    name: str, config: dict[str, Any], cluster: dict[str, Any] | None
) -> None:
    """``args`` validate as ServeConfig; a deployment override never contradicts a value ``args`` sets
    explicitly; and the effective settings (override, else what build_app derives from args) hold together."""
    apps = [a for a in config["applications"] if a["import_path"] == "serving.app:build_app"]
    if not apps:
        pytest.skip(f"{name}: no serving.app:build_app application")
    _import_path_target("serving.app:build_app")
    from serving.config import BatchingUpdate, make_config
    from serving.deployment import DEPLOYMENT_NAME

    for app in apps:
        args = app.get("args") or {}
        cfg = make_config(args)  # raises ConfigError naming a bad or unknown key
        where = f"{name}/{app['name']}"
        assert app["name"] == cfg.app_name, (
            f"{where}: application name != args.app_name ({cfg.app_name}); the stream finds the app by this name"
        )
        assert app.get("route_prefix", "/") == cfg.route_prefix, f"{where}: route_prefix != args.route_prefix"
        if "port" in args and "port" in config.get("http_options", {}):
            assert config["http_options"]["port"] == cfg.port, f"{where}: http_options.port != args.port"
        if cfg.model_dir:
            assert Path(cfg.model_dir).is_absolute(), (
                f"{where}: args.model_dir must be an absolute path on the nodes"
            )
        deps = app.get("deployments", [])
        assert [d["name"] for d in deps] in ([], [DEPLOYMENT_NAME]), (
            f"{where}: the app has one deployment, {DEPLOYMENT_NAME!r}; got {[d['name'] for d in deps]}"
        )
        dep = deps[0] if deps else {}
        # 1. an explicit args value and an explicit override of the same setting must agree
        auto = dep.get("autoscaling_config", {})
        actor = dep.get("ray_actor_options", {})
        live = dep.get("user_config", {})
        pairs = [
            (k, auto, k)
            for k in (
                "min_replicas",
                "initial_replicas",
                "max_replicas",
                "target_ongoing_requests",
                "upscale_delay_s",
                "downscale_delay_s",
            )
        ]
        pairs += [
            ("max_ongoing_requests", dep, "max_ongoing_requests"),
            ("max_queued_requests", dep, "max_queued_requests"),
            ("num_cpus", actor, "num_cpus"),
            ("num_gpus", actor, "num_gpus"),
        ]
        for arg_key, block, key in pairs:
            if arg_key in args and key in block:
                assert float(block[key]) == float(args[arg_key]), (
                    f"{where}: {key}={block[key]} in deployments overrides args.{arg_key}={args[arg_key]}"
                )
        # 2. the effective settings hold together
        if live:
            BatchingUpdate.model_validate(live)
            if live.get("model_dir"):
                assert Path(live["model_dir"]).is_absolute(), (
                    f"{where}: user_config.model_dir must be absolute"
                )
        batch = live.get("max_batch_size", cfg.max_batch_size)
        ongoing = dep.get("max_ongoing_requests", cfg.max_ongoing_requests)
        assert ongoing >= batch, (
            f"{where}: max_ongoing_requests {ongoing} < max_batch_size {batch}: batches never fill"
        )
        effective_auto = {**cfg.autoscaling_config(), **auto}
        from ray.serve.config import AutoscalingConfig

        AutoscalingConfig.model_validate(effective_auto)
        assert effective_auto["target_ongoing_requests"] <= ongoing, (
            f"{where}: target_ongoing_requests above max_ongoing_requests: the autoscaler could never see its target"
        )


def _replica_resources(app: dict[str, Any]) -> tuple[float, float, int]:
    """(num_gpus, num_cpus, max_replicas) of each replica of a finsent app, deployment overrides first."""
    args = app.get("args") or {}
    gpus, cpus, most = args.get("num_gpus"), args.get("num_cpus", 1.0), args.get("max_replicas", 1)
    for dep in app.get("deployments", []):
        actor = dep.get("ray_actor_options", {})
        gpus = actor.get("num_gpus", gpus)
        cpus = actor.get("num_cpus", cpus)
        most = dep.get("autoscaling_config", {}).get("max_replicas", dep.get("num_replicas", most))
    return float(gpus or 0), float(cpus), int(most) if isinstance(most, int) else 1


@_serve_params()
def test_gpu_replicas_only_where_gpus_exist(
    name: str, config: dict[str, Any], cluster: dict[str, Any] | None
) -> None:
    for app in config["applications"]:
        gpus, cpus, most = _replica_resources(app)
        if gpus < 1:
            continue
        where = f"{name}/{app['name']}"
        if cluster is None:  # a `serve deploy` file: some cluster definition in cluster/ must offer the GPUs
            fits = [n for n, per_node, total in _gpu_clusters() if per_node >= gpus and total // gpus >= most]
            assert fits, (
                f"{where}: {most} replicas of {gpus} GPU(s): no cluster definition in cluster/ has room"
            )
            continue
        fits = [g for _, g in cluster_groups(cluster) if group_gpus(g) >= gpus and group_cpus(g) >= cpus]
        assert fits, f"{where}: no worker group has {gpus} GPU(s) and {cpus} CPU(s) per pod for one replica"
        capacity = sum(int(group_gpus(g) // gpus) * g["maxReplicas"] for g in fits)
        assert capacity >= most, (
            f"{where}: max_replicas {most} but the GPU groups fit only {capacity} replicas"
        )
        assert cluster.get("enableInTreeAutoscaling"), (
            f"{where}: Serve autoscaling needs enableInTreeAutoscaling"
        )
        args = app.get("args") or {}
        assert args.get("num_gpus") is not None, (
            f"{where}: set args.num_gpus explicitly; 'auto' counts GPUs when the app is built, which is 0 while "
            "the GPU group is scaled down"
        )


def test_rayservice_model_dir_is_on_a_mounted_volume() -> None:
    """Every pod mounts the volume holding model_dir: Serve builds the app (build_app checks that model_dir
    exists) in a zero-CPU task that may land on any node, and replicas load it on the GPU pods."""
    for p, d in docs_of("RayService"):
        spec = d["spec"]
        dirs = []
        for app in yaml.safe_load(spec["serveConfigV2"])["applications"]:
            dirs.append((app.get("args") or {}).get("model_dir"))
            dirs += [dep.get("user_config", {}).get("model_dir") for dep in app.get("deployments", [])]
        for gname, g in cluster_groups(spec["rayClusterConfig"]):
            mounts = [m["mountPath"] for m in ray_container(g).get("volumeMounts", [])]
            for md in filter(None, dirs):
                assert any(Path(md).is_relative_to(m) for m in mounts), (
                    f"{p.name}/{gname}: model_dir {md} is on no volume mounted in this group"
                )


# ======================================================================================== runtime_env
def _check_runtime_env(where: str, env: dict[str, Any]) -> None:
    from ray.runtime_env import RuntimeEnv

    unknown = set(env) - set(RuntimeEnv.known_fields)
    assert not unknown, f"{where}: unknown runtime_env keys {unknown}"
    RuntimeEnv(**env)  # type checks (env_vars values must be strings, ...)
    assert "pip" not in env and "conda" not in env and "uv" not in env, (
        f"{where}: install packages in the image / setup_commands, not per job (jobs must not download)"
    )


@_params("runtime_env")
def test_runtime_env(path: Path, doc: dict[str, Any]) -> None:
    _check_runtime_env(path.name, doc)
    env_vars = doc.get("env_vars", {})
    assert env_vars.get("HF_HUB_OFFLINE") == "1", (
        f"{path.name}: set HF_HUB_OFFLINE='1' (nothing downloads weights)"
    )
    assert env_vars.get("TRANSFORMERS_OFFLINE") == "1", f"{path.name}: set TRANSFORMERS_OFFLINE='1'"
    if "working_dir" in doc:
        wd = doc["working_dir"]
        if "://" not in wd:
            assert (REPO / wd).resolve() == REPO, (
                "a local working_dir must be the repository root (submit from there)"
            )
        excludes = set(doc.get("excludes", []))
        assert {".git/", ".venv/"} <= excludes, "exclude .git/ and .venv/ from the uploaded working_dir"


def test_rayservice_env_vars_equal_runtime_env() -> None:
    [(_, base)] = [x for x in docs_of("runtime_env") if x[0].name == "runtime_env.yaml"]
    for p, d in docs_of("RayService"):
        for app in yaml.safe_load(d["spec"]["serveConfigV2"])["applications"]:
            got = (app.get("runtime_env") or {}).get("env_vars", {})
            assert got == base["env_vars"], (
                f"{p.name}/{app['name']}: runtime_env.env_vars != cluster/runtime_env.yaml"
            )


# ============================================================================================ Kafka
def kafka_to_stream_values(doc: dict[str, Any]) -> dict[str, Any]:
    """The StreamConfig fields cluster/kafka.yaml sets (what `finsent stream` is given on a cluster)."""
    k, t, c, p = doc["kafka"], doc["topics"], doc["consumer"], doc["producer"]
    return {
        "bootstrap_servers": k["bootstrap_servers"],
        "security": dict(k.get("security", {})),
        "client_id": k.get("client_id", "finsent-stream"),
        "input_topic": t["input"]["name"],
        "output_topic": t["output"]["name"],
        "dlq_topic": t["dlq"]["name"],
        "create_topics": False,  # created by an admin with the topic configs above
        "partitions": t["input"]["partitions"],
        "replication_factor": t["input"]["replication_factor"],
        **{
            f: c[f]
            for f in (
                "group_id",
                "workers",
                "auto_offset_reset",
                "batch_size",
                "poll_timeout_ms",
                "max_poll_interval_ms",
                "session_timeout_ms",
                "heartbeat_interval_ms",
            )
            if f in c
        },
        **{f: p[f] for f in ("linger_ms", "compression_type", "flush_timeout_s", "exactly_once") if f in p},
        "serve_app": "finsent",
        "worker_backend": "ray",
    }


def _stream_config_cls() -> Any:
    try:
        from stream.config import StreamConfig
    except ModuleNotFoundError:
        pytest.skip("stream/config.py does not exist yet")
    return StreamConfig


@_params("kafka")
def test_kafka_schema(path: Path, doc: dict[str, Any]) -> None:
    for section, keys in {
        "kafka": ("bootstrap_servers", "security"),
        "topics": ("input", "output", "dlq"),
        "consumer": ("group_id", "workers"),
        "producer": ("acks", "enable_idempotence"),
    }.items():
        assert section in doc, f"{path.name}: section {section} missing"
        for key in keys:
            assert key in doc[section], f"{path.name}: {section}.{key} missing"
    servers = doc["kafka"]["bootstrap_servers"].split(",")
    assert all(re.fullmatch(r"[\w.\-]+:\d+", s.strip()) for s in servers), f"bad bootstrap_servers {servers}"
    for role, topic in doc["topics"].items():
        for key in ("name", "partitions", "replication_factor", "config"):
            assert key in topic, f"{path.name}: topics.{role}.{key} missing"
        assert topic["partitions"] >= 1 and topic["replication_factor"] >= 1
        cfg = topic["config"]
        assert all(isinstance(v, str) for v in cfg.values()), f"topics.{role}.config values must be strings"
        assert int(cfg["retention.ms"]) > 0, f"topics.{role}: set a positive retention.ms"
        isr = int(cfg.get("min.insync.replicas", "1"))
        assert 1 <= isr <= topic["replication_factor"], (
            f"topics.{role}: min.insync.replicas > replication_factor"
        )
        if topic["replication_factor"] > 1:
            assert isr < topic["replication_factor"], (
                f"topics.{role}: min.insync.replicas == replication_factor blocks acks=all writes when one broker is down"
            )
            assert isr >= 2, (
                f"topics.{role}: with replication, min.insync.replicas >= 2 makes acks=all mean two copies"
            )


@_params("kafka")
def test_kafka_delivery_guarantees(path: Path, doc: dict[str, Any]) -> None:
    prod, cons = doc["producer"], doc["consumer"]
    assert prod["acks"] == "all", (
        "producer acks must be all (an acknowledged label is on min.insync.replicas brokers)"
    )
    assert prod["enable_idempotence"] is True, "producer must be idempotent (retries never duplicate)"
    assert cons.get("enable_auto_commit", False) is False, "offsets are committed by the stream after produce"
    assert cons["workers"] <= doc["topics"]["input"]["partitions"], (
        f"{cons['workers']} consumers but {doc['topics']['input']['partitions']} input partitions: extra consumers idle"
    )
    spec = importlib.util.find_spec("stream.runner")
    if spec is None or spec.origin is None:
        pytest.skip("stream/runner.py does not exist yet: cannot compare with the producer it builds")
    src = Path(spec.origin).read_text(encoding="utf-8")
    assert '"acks": "all"' in src and '"enable_idempotence": True' in src, (
        "stream/runner.py no longer sets acks=all / enable_idempotence=True: update cluster/kafka.yaml with it"
    )


@_params("kafka")
def test_kafka_security(path: Path, doc: dict[str, Any]) -> None:
    sec = doc["kafka"]["security"]
    assert sec.get("security_protocol") in ("SASL_SSL", "SSL"), "a real cluster needs TLS (SASL_SSL or SSL)"
    assert not any("password" in k for k in sec), (
        "no passwords in cluster/kafka.yaml: read them from a file at run time"
    )
    if sec["security_protocol"] == "SASL_SSL":
        assert sec.get("sasl_mechanism") in ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN", "OAUTHBEARER")
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if key in sec:
            assert Path(sec[key]).is_absolute(), f"security.{key} must be an absolute path on the nodes"


@_params("kafka")
def test_kafka_topics_match_stream_defaults(path: Path, doc: dict[str, Any]) -> None:
    StreamConfig = _stream_config_cls()
    defaults = {name: f.default for name, f in StreamConfig.model_fields.items()}
    t = doc["topics"]
    assert t["input"]["name"] == defaults["input_topic"]
    assert t["output"]["name"] == defaults["output_topic"]
    assert t["dlq"]["name"] == (defaults["dlq_topic"] or f"{defaults['input_topic']}.dlq")
    assert doc["consumer"]["group_id"] == defaults["group_id"]


@_params("kafka")
def test_kafka_settings_build_a_stream_config(path: Path, doc: dict[str, Any]) -> None:
    """What `finsent stream` would be given on the cluster passes StreamConfig's own validation."""
    _stream_config_cls()
    from classifier.config import build
    from stream.config import StreamConfig

    cfg = build(StreamConfig, kafka_to_stream_values(doc))
    assert cfg.workers <= cfg.partitions


def test_stream_consumers_fit_the_serve_cluster() -> None:
    """The RayService's CPU groups can host one consumer per input partition (the most that get work)."""
    [(_, kafka)] = docs_of("kafka")
    StreamConfig = _stream_config_cls()
    per_worker = float(StreamConfig.model_fields["ray_num_cpus"].default)
    partitions = kafka["topics"]["input"]["partitions"]
    for p, d in docs_of("RayService"):
        spec = d["spec"]["rayClusterConfig"]
        cpu = sum(
            group_cpus(g) * g["maxReplicas"] for g in spec.get("workerGroupSpecs", []) if group_gpus(g) == 0
        )
        assert cpu >= partitions * per_worker, (
            f"{p.name}: CPU groups hold {cpu} CPUs; {partitions} consumers of {per_worker} CPU need more"
        )


def test_kafka_credentials_are_on_every_node() -> None:
    """The files kafka.yaml points at are mounted where the consumers run."""
    [(_, kafka)] = docs_of("kafka")
    files = [v for k, v in kafka["kafka"]["security"].items() if k.endswith("file")]
    files += [kafka["kafka"][k] for k in kafka["kafka"] if k.endswith("_file")]
    dirs = {str(Path(f).parent) for f in files}
    for p, d in docs_of("launcher"):
        assert dirs <= set(d["file_mounts"]), f"{p.name}: file_mounts lacks {dirs - set(d['file_mounts'])}"
    for p, d in docs_of("RayService"):
        spec = d["spec"]["rayClusterConfig"]
        for gname, g in cluster_groups(spec):
            if gname != "head" and group_gpus(g) > 0:
                continue  # GPU pods run replicas, not consumers
            mounted = {m["mountPath"] for m in ray_container(g).get("volumeMounts", [])}
            assert dirs <= mounted, f"{p.name}/{gname}: {dirs - mounted} not mounted"
