"""Fixtures of the serving tests (tests/conftest.py provides ``ray_local`` and ``tiny_model_dir``).

Tests that start Ray must run in a private network namespace (see docs/development.md):
    unshare -n sh -c 'ip link set lo up && RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/python -m pytest tests/serving -q'
"""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_testutil import train_tiny_model


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_model(tmp_path_factory.mktemp("serving-models") / "toy0", seed=0)
