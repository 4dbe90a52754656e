"""StreamConfig: defaults, YAML + key=value loading, validation messages, CLI flags."""

from __future__ import annotations

import pytest

from classifier.config import load_config
from classifier.errors import ConfigError
from stream.cli import stream_config
from stream.config import StreamConfig


def test_every_field_is_documented():
    for name, f in StreamConfig.model_fields.items():
        assert len(f.description or "") > 20, name


def test_defaults_and_derived_dlq(tmp_path):
    cfg = StreamConfig(model_dir=str(tmp_path))
    assert (cfg.input_topic, cfg.output_topic, cfg.dlq_topic) == (
        "finance.news", "finance.news.sentiment", "finance.news.dlq",
    )
    assert StreamConfig(model_dir=str(tmp_path), input_topic="news.cn").dlq_topic == "news.cn.dlq"
    assert cfg.kafka_common() == {"bootstrap_servers": ["127.0.0.1:9092"]}


def test_yaml_and_overrides(tmp_path):
    (tmp_path / "stream.yaml").write_text(
        f"model_dir: {tmp_path}\nbatch_size: 16\nsecurity:\n  security_protocol: SASL_SSL\n", encoding="utf-8"
    )
    cfg = load_config(
        StreamConfig, tmp_path / "stream.yaml",
        ["batch_size=8", "security.sasl_mechanism=PLAIN", "bootstrap_servers=k1:9093,k2:9093", "metrics_port=9400"],
    )
    assert cfg.batch_size == 8
    assert cfg.security == {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}
    assert cfg.kafka_common() == {
        "bootstrap_servers": ["k1:9093", "k2:9093"], "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
    }
    assert cfg.metrics_port == 9400


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "model_dir is not set: pass model_dir=DIR"),
        (["model_dir=/nonexistent/model"], "model_dir=/nonexistent/model is not a directory"),
        (["batch_size=0"], "batch_size=0 must be >= 1"),
        (["heartbeat_interval_ms=3000", "session_timeout_ms=6000"], "heartbeat_interval_ms=3000 must be at most a third"),
        (["output_topic=finance.news"], "input_topic, output_topic and dlq_topic must differ"),
        (["security.bootstrap_servers=evil:1"], "only keys starting with security_, sasl_, ssl_"),
        (["bootstrap_servers=localhost"], "must be host:port"),
        (["retries=10", "retry_backoff_s=1"], "lower retries/retry_backoff_s or raise max_poll_interval_ms"),
        (["auto_offset_reset=middle"], "auto_offset_reset: 'middle' is not allowed"),
        (["batch_sise=3"], "did you mean batch_size?"),
        (["group_id=my group"], "group_id='my group' must be a non-empty name without spaces"),
    ],
)
def test_validation_names_field_and_fix(tmp_path, overrides, message):
    base = [] if any(o.startswith("model_dir") for o in overrides) or not overrides else [f"model_dir={tmp_path}"]
    with pytest.raises(ConfigError) as info:
        load_config(StreamConfig, None, base + overrides)
    assert message in str(info.value)


def test_serve_app_needs_no_model_dir():
    cfg = StreamConfig(serve_app="finsent")
    assert cfg.model_dir is None and cfg.serve_app == "finsent"


def test_for_worker(tmp_path):
    cfg = StreamConfig(model_dir=str(tmp_path), workers=3, exactly_once=True, metrics_port=9400)
    w2 = cfg.for_worker(2)
    assert (w2.client_id, w2.transactional_id, w2.metrics_port) == (
        "finsent-stream-2", "finsent-stream-2", 9402,
    )
    assert w2.group_id == cfg.group_id  # one group


def test_cli_flags_become_overrides(tmp_path):
    cfg = stream_config(
        ["--model", str(tmp_path), "--batch-size", "16", "--exactly-once", "--workers", "2",
         "--input-topic", "a", "--serve", "security.ssl_cafile=/ca.pem"]
    )
    assert (cfg.batch_size, cfg.exactly_once, cfg.workers, cfg.input_topic) == (16, True, 2, "a")
    assert cfg.dlq_topic == "a.dlq"
    assert cfg.serve_app == "finsent" and cfg.model_dir == str(tmp_path)
    assert cfg.security == {"ssl_cafile": "/ca.pem"}
