"""Fixtures of the stream tests: one embedded broker (real Tansu over real sockets) and one tiny model per
session; unique topics per test. Run inside a private network namespace (see docs/development.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from stream_helpers import Topics, new_topics

from stream.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> EmbeddedBroker:
    # Data is in memory and thrown away: no need to wait the ~5 s Tansu takes for a graceful stop.
    with EmbeddedBroker(stop_timeout_s=2.0) as b:
        yield b


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir: Path) -> Path:
    """The session's tiny random finsent model (tests/conftest.py)."""
    return tiny_model_dir


@pytest.fixture(scope="session")
def blended_model_dir(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    """A tiny model with the full post-processing of a trained one: temperature and the companion blend
    (trained on CFSC sentences, fitted on others), so the stream and Serve paths are checked on it too."""
    from classifier.data import read_examples
    from classifier.postfit import fit_postprocessing
    from classifier.testing import make_tiny_model_dir

    d = make_tiny_model_dir(tmp_path_factory.mktemp("blended") / "model", seed=3, name="blended")
    data = read_examples(shared_dir / "data" / "cfsc" / "train.txt").examples
    fit_postprocessing(d, data[:300], data[300:1500], companion=True,
                       lexicon=shared_dir / "data" / "lexicon" / "fin_sentiment_words.tsv")
    return d


@pytest.fixture(scope="session")
def predictor(model_dir: Path):
    from classifier.predict import Predictor

    return Predictor.from_dir(model_dir, device="cpu", batch_size=32)


@pytest.fixture
def topics(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> Topics:
    """Fresh input/output/DLQ topics (4 partitions) and group id for one test."""
    return new_topics(broker, request.node.name)
