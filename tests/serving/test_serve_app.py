"""End-to-end: a real local Ray + Serve on CPU with the toy-trained tiny model, deployed once for the module.

Covers HTTP == in-process Predictor, batching of a 64-request burst, every bad-input case, explain, the
handle path, live batching changes and a hot swap under load (last: it changes the served model).
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from serving_testutil import free_port, start_serve_http

from classifier.errors import InputError
from serving.client import ServeClient

pytest.importorskip("ray.serve")

TEXTS = ["公司发布利好公告", "银行股价暴跌了", "券商今日开会", "消息称基金回购", "地产发布违约公告", "  龙头股价涨停了  "]


ROOT = Path(__file__).resolve().parents[2]


def _serve_config_doc(app, **user_config) -> dict:
    """cluster/serve.yaml, scaled down for a 2-CPU test machine (the way `serve deploy` would apply it)."""
    doc = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text(encoding="utf-8"))
    doc["http_options"]["port"] = app.cfg.port
    spec = doc["applications"][0]
    spec["name"] = app.cfg.app_name
    spec["args"] = {k: v for k, v in app.cfg.model_dump().items() if v is not None}
    dep = spec["deployments"][0]
    dep["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 0}
    dep["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=1)
    dep["max_ongoing_requests"] = app.cfg.max_ongoing_requests
    dep["user_config"] = {**app.cfg.user_config(), **user_config}
    return doc


def _deploy(app, **user_config) -> None:
    """Apply the config like `serve deploy` does (controller.apply_config); a user_config-only change
    updates the running replica through reconfigure()."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    doc = _serve_config_doc(app, **user_config)
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(doc), _blocking=True)


@pytest.fixture(scope="module")
def app(ray_local, toy_model_dir):
    from ray import serve

    from classifier.predict import Predictor
    from serving.config import make_config

    port = free_port()
    cfg = make_config(
        model_dir=str(toy_model_dir), num_cpus=0.5, num_gpus=0, min_replicas=1, max_replicas=1,
        max_batch_size=16, batch_wait_timeout_s=0.05, max_ongoing_requests=100, max_texts_per_request=8,
        max_chars_per_text=200, max_body_bytes=4096, max_explain_texts=2, explain_steps=16,
        app_name="finsent-test", port=port,
    )
    start_serve_http(port)
    ns = SimpleNamespace(cfg=cfg, url=cfg.base_url(), predictor=Predictor.from_dir(toy_model_dir, device="cpu"))
    _deploy(ns)
    ns.handle = serve.get_app_handle(cfg.app_name)
    yield ns
    serve.shutdown()


def _stats(app) -> dict:
    return app.handle.stats.remote().result()


def _wait_for(app, pred, timeout: float = 60.0) -> dict:
    deadline = time.time() + timeout
    while True:
        stats = _stats(app)
        if pred(stats) or time.time() > deadline:
            return stats
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------------ answers
def test_http_matches_in_process_predictor(app):
    expected = app.predictor.predict(TEXTS)
    with ServeClient(app.url) as client:
        got = client.classify(TEXTS)
    assert [g["label"] for g in got] == [e["label"] for e in expected] == ["利多", "利空", "其他", "利多", "利空", "利多"]
    for g, e in zip(got, expected, strict=True):
        assert g["model_version"] == e["model_version"] == app.predictor.model_version
        assert g["probabilities"].keys() == e["probabilities"].keys()
        for k in e["probabilities"]:
            assert g["probabilities"][k] == pytest.approx(e["probabilities"][k], abs=1e-5)
        assert g["score"] == pytest.approx(g["probabilities"]["利多"] - g["probabilities"]["利空"], abs=1e-6)
        assert "explanation" not in g


def test_model_health_and_openapi(app):
    with ServeClient(app.url) as client:
        info = client.model()
        assert info["model_version"] == app.predictor.model_version
        assert info["labels"] == ["其他", "利多", "利空"]
        assert info["max_len"] == 64 and info["device"] == "cpu" and info["max_batch_size"] == 16
        assert client.health() == {"status": "ok", "model_version": app.predictor.model_version}
        status, schema = client.request("GET", "/openapi.json")
    assert status == 200
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["texts"] and set(body["properties"]) == {"texts", "explain"}
    assert {"200", "400", "413", "422"} <= set(schema["paths"]["/v1/classify"]["post"]["responses"])
    assert {"/v1/model", "/healthz"} <= set(schema["paths"])


def test_burst_of_64_single_text_requests_is_batched(app):
    before = _stats(app)
    texts = [TEXTS[i % len(TEXTS)] for i in range(64)]
    barrier = threading.Barrier(64)

    def one(text: str) -> dict:
        with ServeClient(app.url) as client:
            client.health()  # connect first so the burst itself is simultaneous
            barrier.wait()
            return client.classify([text])[0]

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, texts))
    after = _stats(app)
    expected = {t: p["label"] for t, p in zip(TEXTS, app.predictor.predict(TEXTS), strict=True)}
    assert [r["label"] for r in results] == [expected[t] for t in texts]
    forwards = after["forward_calls"] - before["forward_calls"]
    batches = after["batches"] - before["batches"]
    assert after["texts"] - before["texts"] == 64
    assert 1 <= forwards < 64 and forwards == batches  # one forward per batch, fewer than requests
    assert max(after["batch_sizes"]) > 1 and max(after["batch_sizes"]) <= 16


# ------------------------------------------------------------------------------------------------ bad input
LIMIT_CASES = [
    # (name, raw body, status, error code, words the message must contain, limit)
    ("invalid_utf8", b'{"texts": ["\xff\xfe"]}', 400, "invalid_utf8", "not valid UTF-8", None),
    ("invalid_json", b'{"texts": ["a",', 400, "invalid_json", "not valid JSON", None),
    ("empty_body", b"", 400, "empty_body", "body is empty", None),
    ("not_object", b'["a"]', 422, "not_an_object", "JSON object", None),
    ("typo_field", b'{"text": ["a"]}', 422, "unknown_field", "did you mean 'texts'", None),
    ("missing_texts", b'{"explain": true}', 422, "missing_texts", '"texts" is missing', None),
    ("texts_str", b'{"texts": "a"}', 422, "texts_not_a_list", "list of strings", None),
    ("empty_list", b'{"texts": []}', 422, "empty_texts", "empty list", None),
    ("empty_text", '{"texts": ["好", " \u3000 "]}'.encode(), 422, "empty_text", "texts[1]", None),
    ("number_text", b'{"texts": ["a", 5]}', 422, "text_not_a_string", "texts[1] must be a string", None),
    ("explain_str", b'{"texts": ["a"], "explain": "yes"}', 422, "explain_not_bool", "true or false", None),
    ("too_many", json.dumps({"texts": ["a"] * 9}).encode(), 413, "too_many_texts", "max_texts_per_request=8",
     "max_texts_per_request"),
    ("too_long", json.dumps({"texts": ["涨" * 201]}).encode(), 413, "text_too_long", "max_chars_per_text=200",
     "max_chars_per_text"),
    ("too_big", json.dumps({"texts": ["a" * 5000]}).encode(), 413, "body_too_large", "max_body_bytes=4096",
     "max_body_bytes"),
    ("explain_many", json.dumps({"texts": ["a", "b", "c"], "explain": True}).encode(), 413,
     "too_many_texts_to_explain", "max_explain_texts=2", "max_explain_texts"),
]


@pytest.mark.parametrize(("name", "body", "status", "code", "words", "limit"), LIMIT_CASES,
                         ids=[c[0] for c in LIMIT_CASES])
def test_bad_input_gets_its_4xx(app, name, body, status, code, words, limit):
    with ServeClient(app.url) as client:
        got_status, got = client.request("POST", "/v1/classify", body)
    assert got_status == status, got
    assert got["error"] == code and words in got["detail"] and got["limit"] == limit


def test_bad_requests_never_fail_good_ones_in_flight(app):
    bad = [c[1] for c in LIMIT_CASES]
    good = json.dumps({"texts": TEXTS[:2]}).encode()

    def send(body: bytes) -> int:
        with ServeClient(app.url) as client:
            return client.request("POST", "/v1/classify", body)[0]

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, [b for pair in zip(bad, [good] * len(bad), strict=True) for b in pair]))
    assert statuses[1::2] == [200] * len(bad)
    assert all(400 <= s < 500 for s in statuses[0::2])


# ------------------------------------------------------------------------------------------------ explain
def test_explain_one_value_per_token_and_decisive_word(app):
    with ServeClient(app.url) as client:
        with_word, without_word = client.classify(["公司发布利好公告", "公司发布公告"], explain=True)
    for result, text in ((with_word, "公司发布利好公告"), (without_word, "公司发布公告")):
        ex = result["explanation"]
        assert ex["tokens"] == app.predictor.token_strings(text)
        assert len(ex["attributions"]) == len(ex["tokens"])
        assert ex["target"] == result["label"] and ex["steps"] == 16
    ex = with_word["explanation"]
    assert with_word["label"] == "利多" and without_word["label"] == "其他"
    top = max(range(len(ex["tokens"])), key=lambda i: ex["attributions"][i])
    assert ex["tokens"][top] == "利好" and ex["attributions"][top] > 0.5
    # removing the decisive word changes the explanation (and its target)
    assert without_word["explanation"]["target"] != ex["target"]
    assert max(without_word["explanation"]["attributions"]) < ex["attributions"][top]


# ------------------------------------------------------------------------------------------------ handle
def test_handle_classify_matches_predictor_and_reports_bad_texts(app):
    got = app.handle.classify.remote(TEXTS[:3]).result()
    assert [g["label"] for g in got] == [p["label"] for p in app.predictor.predict(TEXTS[:3])]
    mixed = app.handle.classify.remote(["公司今日大涨", " ", "银行今日亏损"], errors="return").result()
    assert mixed[0]["label"] == "利多" and mixed[2]["label"] == "利空"
    assert mixed[1]["error_type"] == "InputError" and "texts[1]" in mixed[1]["error"]
    with pytest.raises(InputError, match=r"texts\[0\]: text is empty"):
        app.handle.classify.remote([" "]).result()
    with pytest.raises(InputError, match="max_texts_per_request=8"):
        app.handle.classify.remote(["a"] * 9, errors="return").result()


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_classify_prints_json_lines(app, capsys):
    from serving.cli import main

    assert main(["classify", "--url", app.url, "公司发布利好公告", "银行股价暴跌了"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["text"], x["label"]) for x in lines] == [("公司发布利好公告", "利多"), ("银行股价暴跌了", "利空")]
    assert main(["classify", "--url", app.url, "   "]) == 2
    assert "texts[0]" in capsys.readouterr().err
    assert main(["classify", "--url", f"http://127.0.0.1:{free_port()}", "文本"]) == 1
    assert "cannot reach" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ drift
def test_drift_status_then_a_label_shift_fires_an_alert(app):
    from serving_testutil import toy_examples

    from classifier.drift import DriftConfig, DriftStatus

    with ServeClient(app.url) as client:
        client.classify(TEXTS)
        status, body = client.request("GET", "/v1/drift")
        _, schema = client.request("GET", "/openapi.json")
    assert status == 200 and "/v1/drift" in schema["paths"]
    drift = DriftStatus.model_validate(body)
    stats = _stats(app)
    assert drift.records == stats["texts"] - stats["explained_texts"] > 0  # every batched prediction so far
    assert drift.model_version == app.predictor.model_version and drift.alerts == 0
    # the toy model directory has no drift_reference.json: its first 1,000 predictions become the reference
    needed = DriftConfig().reference_records
    assert drift.reference is None and drift.reference_progress == {"records": drift.records, "needed": needed}
    assert drift.windows["count"].records == min(drift.records, 500) and drift.windows["time"].records == drift.records

    def send(texts: list[str]) -> None:  # through the handle, 8 texts a call, all calls in flight together
        calls = [app.handle.classify.remote(texts[i : i + 8]) for i in range(0, len(texts), 8)]
        for c in calls:
            c.result()

    mixed = [t for t, _ in toy_examples()]
    send([mixed[i % len(mixed)] for i in range(needed)])  # the reference: every kind of news
    after = app.handle.drift.remote().result()
    assert after["reference"]["source"] == "stream" and after["reference"]["records"] == needed
    assert after["alerts"] == 0
    bad_news = [t for t, label in toy_examples() if label == "利空"]
    send([bad_news[i % len(bad_news)] for i in range(600)])  # then only bad news
    shifted = app.handle.drift.remote().result()
    assert shifted["windows"]["count"]["alerts"] == 1  # one alert, not one per batch
    alert = shifted["last_alert"]
    assert alert["top_shifted_label"]["label"] == "利空" and alert["top_shifted_label"]["window_share"] > 0.5
    assert shifted["windows"]["count"]["firing"] and shifted["windows"]["count"]["statistics"]["label_psi"] > 0.2


# ------------------------------------------------------------------------------------------------ live changes
def test_reconfigure_changes_batching_live(app):
    replica = _stats(app)["replica"]
    _deploy(app, max_batch_size=4, batch_wait_timeout_s=0.2)
    stats = _wait_for(app, lambda s: s["max_batch_size"] == 4)
    assert (stats["max_batch_size"], stats["batch_wait_timeout_s"]) == (4, 0.2)
    assert stats["replica"] == replica and stats["model_swaps"] == 0  # updated in place, not restarted
    before = stats["batch_sizes"]
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda t: app.handle.classify.remote([t]).result(), TEXTS * 2))
    new_sizes = {k: v - before.get(k, 0) for k, v in _stats(app)["batch_sizes"].items() if v > before.get(k, 0)}
    assert new_sizes and max(new_sizes) == 4  # 12 concurrent texts, 0.2 s wait: full batches of 4
    _deploy(app)  # back to the module settings
    assert _wait_for(app, lambda s: s["max_batch_size"] == 16)["max_batch_size"] == 16


def test_bad_live_update_keeps_serving_and_says_why(app, tmp_path):
    version = _stats(app)["model_version"]
    _deploy(app, model_dir=str(tmp_path / "no-such-model"))
    stats = _wait_for(app, lambda s: s["last_update_error"] is not None)
    assert "ModelDirError" in stats["last_update_error"] and "no-such-model" in stats["last_update_error"]
    assert stats["model_version"] == version and stats["model_swaps"] == 0
    with ServeClient(app.url) as client:
        assert client.classify(TEXTS[:1])[0]["model_version"] == version
        assert "no-such-model" in client.model()["last_update_error"]
    _deploy(app)
    assert _wait_for(app, lambda s: s["last_update_error"] is None)["last_update_error"] is None


def test_hot_swap_under_load_loses_no_request(app, tiny_model_dir):
    other_model_dir = tiny_model_dir  # the shared random tiny model: another model_version than toy0
    from classifier.predict import Predictor

    new_version = Predictor.from_dir(other_model_dir, device="cpu").model_version
    old_version = app.predictor.model_version
    assert new_version != old_version
    replica = _stats(app)["replica"]
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(4)]
    failures: list[BaseException] = []

    def stream(k: int) -> None:
        with ServeClient(app.url) as client:
            while not stop.is_set():
                try:
                    seen[k].append(client.classify([TEXTS[k]])[0]["model_version"])
                except BaseException as e:  # noqa: BLE001 - any failure is what this test looks for
                    failures.append(e)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    _deploy(app, model_dir=str(other_model_dir))
    stats = _wait_for(app, lambda s: s["model_version"] == new_version)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    for versions in seen:  # each stream: old answers, then new ones, never back
        assert versions[0] == old_version and versions[-1] == new_version
        first_new = versions.index(new_version)
        assert set(versions[:first_new]) == {old_version} and set(versions[first_new:]) == {new_version}
    assert stats["model_swaps"] == 1 and stats["model_dir"] == str(other_model_dir)
    assert stats["replica"] == replica  # swapped inside the running replica
    _deploy(app)  # swap back
    assert _wait_for(app, lambda s: s["model_version"] == old_version)["model_version"] == old_version
