"""Fixtures for the training tests: a synthetic learnable labelled set and a tiny-model FinetuneConfig."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import BEARISH, BULLISH, write_split  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("synthetic")
    return {"train": write_split(d / "train.txt", 600, seed=1), "dev": write_split(d / "dev.txt", 150, seed=2)}


@pytest.fixture
def tiny_config(synthetic_data, tiny_base_dir, tmp_path):
    """``make(**overrides) -> FinetuneConfig`` for the tiny random BERT on the synthetic set, writing under
    ``tmp_path``."""
    from training.config import FinetuneConfig

    def make(**overrides) -> FinetuneConfig:
        values = dict(
            train_files=[str(synthetic_data["train"])], dev_file=str(synthetic_data["dev"]), extra_train_files=[],
            base_model=str(tiny_base_dir), lexicon_files=[], extra_words=list(BULLISH + BEARISH),
            max_len=32, batch_size=16, epochs=5, lr=5e-3, warmup_ratio=0.1, seed=0,
            output_dir=str(tmp_path / "model"), storage_path=str(tmp_path / "ray"),
            num_workers=2, cpus_per_worker=1, use_gpu=False, max_failures=0, log_every=1000,
        )
        values.update(overrides)
        return FinetuneConfig(**values)

    return make
