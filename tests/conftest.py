"""Shared fixtures: paths to ../shared, a tiny random finsent model, the real default base, a local Ray.

Tests that start Ray or a broker must run inside a private network namespace (`.ci/run` does this):
nothing may listen beyond loopback on these machines.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FINSENT_SHARED", REPO.parent / "shared"))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (set FINSENT_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def default_base_model(shared_dir: Path) -> Path:
    p = shared_dir / "models" / "me5-small-zh-fin"
    if not (p / "config.json").is_file():
        pytest.skip(f"default base model not found at {p}")
    return p


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete finsent model directory: tiny random BERT (2 layers, hidden 32), char WordPiece vocab."""
    from classifier.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain Hugging Face BERT checkpoint directory (tiny, random) to build classifiers from."""
    from classifier.testing import make_tiny_base_dir

    return make_tiny_base_dir(tmp_path_factory.mktemp("tinybase") / "base")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, no dashboard)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - best effort at session end
        pass
    ray.shutdown()
