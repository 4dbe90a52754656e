"""The feedback loop end to end on the embedded broker, a real local Ray (Serve + Train) and the tiny model.

A stream labels news through a Serve handle; a shifted feed (English wires after Chinese news) fires a drift
alert; the unsure records also go to the review topic; people post corrections (three of them bad); `finsent
learn` first gates a candidate that does not improve the corrections (refused: the served model stays), then
continues the live model on Ray Train and hot-swaps it in — while records keep flowing. Every input record is
labelled exactly once (by key) across the swap, and the records after it carry the new model version."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "stream"), str(TESTS / "serving")]

from serving_testutil import free_port, start_serve_http, toy_examples  # noqa: E402
from stream_helpers import new_topics, produce, read_topic  # noqa: E402

pytestmark = pytest.mark.slow

APP = "finsent-loop"
NEWS, WIRES, CORRECTED = 100, 100, 100


def _news(i: int, text: str, prefix: str = "news") -> tuple[bytes, bytes]:
    obj = {"id": f"{prefix}-{i}", "content": text, "source": "test"}
    return obj["id"].encode(), json.dumps(obj, ensure_ascii=False).encode()


def _wire(i: int) -> tuple[bytes, bytes]:
    obj = {"id": f"wire-{i}", "title": f"wire {i}", "content": f"market update {i}: stocks, bonds and fx"}
    return obj["id"].encode(), json.dumps(obj).encode()


def _split(root: Path, examples: list[tuple[str, str]]) -> Path:
    for name, part in (("train", examples[:200]), ("dev", examples[200:260]), ("test", examples[260:360])):
        path = root / "toy" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{y}|||{x}\n" for x, y in part), encoding="utf-8")
    return root


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def loop_app(ray_local, tiny_model_dir):
    """The Serve app of the loop, deployed by config (as `finsent serve` does) with the random tiny model."""
    from ray import serve

    from serving.config import make_config
    from serving.swap import deploy_app

    port = free_port()
    start_serve_http(port)
    deploy_app(make_config(model_dir=str(tiny_model_dir), num_cpus=0.5, num_gpus=0, min_replicas=1, max_replicas=1,
                           max_batch_size=16, batch_wait_timeout_s=0.02, app_name=APP, route_prefix="/loop",
                           port=port))
    yield APP
    serve.shutdown()


def test_stream_drift_review_corrections_learn_gated_hot_swap(loop_app, tiny_model_dir, tmp_path, capsys):
    from ray import serve

    from classifier.drift import DriftConfig
    from classifier.predict import Predictor
    from finsent.cli import main
    from serving.swap import served_model
    from stream.broker import EmbeddedBroker
    from stream.classify import build_classify
    from stream.codec import HEADER_ERROR, header
    from stream.runner import StreamRunner

    examples = toy_examples()
    random.Random(0).shuffle(examples)
    split = _split(tmp_path / "split", examples)
    stream_texts = examples[360:]  # 120 toy texts the split does not hold
    live_dir = tiny_model_dir  # random weights: ~37 % sure of everything
    live_version = Predictor.from_dir(live_dir, device="cpu").model_version

    with EmbeddedBroker(stop_timeout_s=2.0) as broker:
        topics = new_topics(broker, "feedback-loop")
        corrections, dlq = f"{topics.output}.corrections", f"{topics.output}.corrections.dlq"
        broker.create_topics([corrections], partitions=1)

        phase1 = [_news(i, stream_texts[i][0]) for i in range(NEWS)] + [_wire(i) for i in range(WIRES)]
        texts1 = ["\n".join(filter(None, (json.loads(v).get("title"), json.loads(v)["content"]))) for _, v in phase1]
        predictor = Predictor.from_dir(live_dir, device="cpu")
        threshold = float(np.median([max(p["probabilities"].values()) for p in predictor.predict(texts1)]))
        drift = DriftConfig(window_records=100, min_window_records=50, check_every=25, reference_records=NEWS,
                            window_seconds=None)
        cfg = topics.config(None, serve_app=APP, predict_batch_size=16, batch_size=25, review_threshold=threshold,
                            drift=drift)
        runner = StreamRunner(cfg, build_classify(cfg))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                runner.run()
            except BaseException as e:  # surfaced below
                errors.append(e)

        thread = threading.Thread(target=run, name="stream", daemon=True)
        thread.start()
        produced: list[bytes] = []
        try:
            # ---- 1. the stream labels news, then a shifted feed: drift alert + review topic
            produce(topics.bootstrap, topics.input, phase1, partition=0)  # in order: news are the reference
            produced += [k for k, _ in phase1]
            _wait(lambda: runner.summary.records >= len(phase1) or errors, 180, "phase 1 to be labelled")
            assert not errors
            alerts = [json.loads(r.value) for r in read_topic(topics.bootstrap, f"{topics.output}.alerts",
                                                               min_count=1)]
            assert alerts and alerts[0]["type"] == "drift_alert" and alerts[0]["window"]["kind"] == "count"
            assert alerts[0]["model_version"] == live_version and alerts[0]["value"] >= alerts[0]["threshold"]
            out1 = {r.key: json.loads(r.value) for r in read_topic(topics.bootstrap, topics.output,
                                                                   min_count=len(phase1))}
            unsure = {k for k, v in out1.items() if max(v["sentiment"]["probabilities"].values()) < threshold}
            review = read_topic(topics.bootstrap, f"{topics.output}.review", min_count=len(unsure))
            assert unsure and sorted(r.key for r in review) == sorted(unsure)

            # ---- 2. corrections: the true labels of the news, plus three bad posts
            posts = [(f"news-{i}".encode(), json.dumps({"id": f"news-{i}", "label": stream_texts[i][1],
                                                         "user": "ann"}, ensure_ascii=False).encode())
                     for i in range(CORRECTED)]
            posts += [(b"bad-1", b"{not json"), (b"nope", b'{"id": "nope", "label": "\xe5\x88\xa9\xe5\xa4\x9a"}'),
                      (b"news-1", b'{"id": "news-1", "label": "bullish"}')]
            produce(topics.bootstrap, corrections, posts, partition=0)
            common = [f"serve_app={APP}", f"bootstrap_servers={topics.bootstrap}", f"output_topic={topics.output}",
                      f"split_dir={split}", f"work_dir={tmp_path / 'learn'}", f"group_id={topics.group}-learn",
                      "held_back_fraction=0.3", "min_corrections=20"]

            # ---- 3. records keep flowing while learn runs
            stop = threading.Event()

            def keep_producing() -> None:
                from kafka import KafkaProducer

                producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all", enable_idempotence=True)
                i = 0
                while not stop.is_set():
                    key, value = _news(i, stream_texts[i % len(stream_texts)][0], prefix="during")
                    producer.send(topics.input, key=key, value=value).get(timeout=30)
                    produced.append(key)
                    i += 1
                    time.sleep(0.5)
                producer.close()

            handle = serve.get_app_handle(APP)
            replica = handle.stats.remote().result()["replica"]
            feeder = threading.Thread(target=keep_producing, name="feeder", daemon=True)
            feeder.start()
            try:
                # a candidate that does not improve the corrections (the live model itself) is refused
                code = main(["learn", *common, "run_name=refused", f"candidate_model={live_dir}"])
                out = capsys.readouterr().out
                assert code == 1, out
                assert "gate REFUSED the new model; the live model stays: held-back corrections accuracy went" in out
                assert served_model(APP)["model_version"] == live_version

                # the real run: continue the live model on the corrections (+ rehearsal, L2-SP), gate, swap
                # (the random tiny model needs a high lr and a weak pull to learn the toy language in a few steps)
                code = main(["learn", *common, "run_name=loop", "finetune.epochs=8", "finetune.lr=0.005",
                             "l2sp=0.001", "max_test_drop=0.05"])
                out = capsys.readouterr().out
                assert code == 0, out
            finally:
                stop.set()
                feeder.join(timeout=30)
            run_dir = tmp_path / "learn" / "loop"
            gate = json.loads((run_dir / "gate_report.json").read_text(encoding="utf-8"))
            new_version = gate["new"]["model_version"]
            assert gate["passed"] and gate["swapped"] and new_version != live_version
            assert f"gate passed; swapped: {new_version} now serves" in out
            served = served_model(APP)
            assert served["model_version"] == new_version and served["model_dir"] == str(run_dir / "model")
            stats = handle.stats.remote().result()
            assert stats["replica"] == replica and stats["model_swaps"] == 1  # swapped inside the running replica

            # ---- 4. after the swap
            phase3 = [_news(i, stream_texts[i][0], prefix="after") for i in range(20)]
            produce(topics.bootstrap, topics.input, phase3)
            produced += [k for k, _ in phase3]
            _wait(lambda: runner.summary.records >= len(produced) or errors, 180, "every record to be labelled")
        finally:
            runner.stop()
            thread.join(timeout=60)
        assert not errors

        # every input record labelled exactly once, by key, across the swap
        outputs = read_topic(topics.bootstrap, topics.output, min_count=len(produced))
        assert sorted(r.key for r in outputs) == sorted(produced)
        versions = {r.key: json.loads(r.value)["sentiment"]["model_version"] for r in outputs}
        assert {versions[k] for k, _ in phase3} == {new_version}
        assert {versions[k] for k, _ in phase1} == {live_version}
        assert {v for k, v in versions.items() if k.startswith(b"during-")} <= {live_version, new_version}

        # the learn run: corrections split, rehearsal and L2-SP in the training report, bad posts in the DLQ once
        manifest = json.loads((run_dir / "learn.json").read_text(encoding="utf-8"))
        split_counts = manifest["split"]
        assert split_counts["corrections"] == CORRECTED and split_counts["train"] + split_counts["held_back"] == 100
        assert manifest["corrections"]["dead"] == {"bad_json": 1, "unknown_id": 1, "unknown_label": 1}
        assert manifest["corrections"]["dlq_known"] == 3  # sent by the refused run already
        report = json.loads((run_dir / "model" / "training_report.json").read_text(encoding="utf-8"))
        assert report["config"]["init_model"] == str(live_dir) and report["config"]["l2sp"] == 0.001
        assert report["data"]["train_examples"] == 2 * split_counts["train"]  # half rehearsal
        assert gate["new"]["corrections"]["accuracy"] > gate["live"]["corrections"]["accuracy"]
        dead = read_topic(topics.bootstrap, dlq, min_count=3)
        assert sorted(header(r.headers, HEADER_ERROR) for r in dead) == ["bad_json", "unknown_id", "unknown_label"]
