"""The paths that need Ray: ``--serve`` (classify through a running Serve app's handle) and
``--worker-backend ray`` (workers as Ray actors). Slow; run in a network namespace (docs/development.md)."""

from __future__ import annotations

import json

import pytest
from stream_helpers import news_records, produce, read_topic, run_until

from stream.runner import StreamRunner

pytestmark = pytest.mark.slow


@pytest.fixture(params=["plain", "blended"])
def serving_model(request, model_dir, blended_model_dir):
    """The random tiny model, and one with temperature + companion blend (what `finsent finetune` ships)."""
    return model_dir if request.param == "plain" else blended_model_dir


@pytest.fixture
def serve_app(ray_local, serving_model):
    model_dir = serving_model
    pytest.importorskip("serving.deployment")
    from ray import serve

    from serving.app import build_app
    from serving.config import make_config
    from stream.broker import free_port

    cfg = make_config(
        model_dir=str(model_dir), num_cpus=0.5, num_gpus=0, min_replicas=1, max_replicas=1, max_batch_size=32,
        max_texts_per_request=32, max_chars_per_text=1000, app_name="finsent-stream-test", port=free_port(),
    )
    serve.shutdown()  # a Serve left by an earlier test would keep its own HTTP port
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=None)
    yield cfg.app_name
    serve.shutdown()


def test_serve_handle_labels_like_the_predictor_and_rejects_to_the_dlq(serve_app, topics, serving_model):
    """Served probabilities equal the in-process Predictor's, calibration and companion blend included."""
    from classifier.predict import Predictor
    from stream.classify import build_classify

    predictor = Predictor.from_dir(serving_model, device="cpu", batch_size=32)

    records = news_records(200, prefix="serve")
    too_long = (b"long-for-serve", json.dumps({"id": "long-for-serve", "content": "涨" * 1500}).encode())
    produce(topics.bootstrap, topics.input, [*records, too_long])
    # the stream allows 2000 chars, the app only 1000: the app's rejection goes to the DLQ as classifier_error
    cfg = topics.config(None, serve_app=serve_app, max_text_chars=2000, batch_size=100, retries=0)
    runner = StreamRunner(cfg, build_classify(cfg))
    run_until(runner, lambda r: r.summary.records >= 201)
    assert (runner.summary.labelled, runner.summary.dlq) == (200, 1)
    # and the in-process path (a stream without Serve) gives the same probabilities
    local_cfg = topics.config(serving_model)
    in_process = StreamRunner(local_cfg, build_classify(local_cfg)).classify_texts(
        [f"{json.loads(v)['title']}\n{json.loads(v)['content']}" for _, v in records[:20]])

    outputs = {r.key: json.loads(r.value) for r in read_topic(topics.bootstrap, topics.output, min_count=200)}
    texts = [f"{json.loads(v)['title']}\n{json.loads(v)['content']}" for _, v in records]
    for (key, _), want in zip(records, predictor.predict(texts), strict=True):
        got = outputs[key]["sentiment"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert got["model_version"] == want["model_version"]
    for (key, _), local in zip(records[:20], in_process, strict=True):
        assert local["probabilities"] == pytest.approx(outputs[key]["sentiment"]["probabilities"], abs=1e-5)
    if "blended" in str(serving_model):  # its probabilities are the calibrated, blended ones
        assert predictor.companion is not None and predictor.calibration.blend is not None
    [dead] = read_topic(topics.bootstrap, topics.dlq, min_count=1)
    assert dead.key == b"long-for-serve" and dict(dead.headers)["finsent-error"] == b"classifier_error"
    assert b"max_chars_per_text=1000" in dict(dead.headers)["finsent-error-message"]


def test_ray_actor_workers_share_the_group_and_label_every_record_once(ray_local, topics, model_dir):
    from stream.workers import run_ray_actors

    records = news_records(300, prefix="actors")
    produce(topics.bootstrap, topics.input, records)
    cfg = topics.config(model_dir, workers=2, worker_backend="ray", ray_num_cpus=0.25, idle_exit_s=3.0)
    assert run_ray_actors(cfg) == 0  # both actors drain their partitions and exit when idle
    outputs = read_topic(topics.bootstrap, topics.output, min_count=300)
    assert len(outputs) == 300 and {r.key for r in outputs} == {k for k, _ in records}
