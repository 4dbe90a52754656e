"""Inference backends behind Predictor: ONNX Runtime parity with torch, the export cache, ``auto``'s choice."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from classifier.backends import (
    AUTO_MAX_ABS_DIFF,
    SAMPLE_TEXTS,
    Measurement,
    candidates,
    choose,
    within_tolerance,
)
from classifier.errors import ConfigError
from classifier.modeldir import ONNX_DIR, WEIGHTS_FILE, onnx_file_name, weights_version
from classifier.predict import Predictor
from classifier.testing import make_tiny_model_dir

#: short, medium and long texts (the long ones give several inputs under sliding_window / sentences)
TEXTS = ["公司业绩大涨，利好消息", "股价跌停，亏损扩大", "今日收盘",
         "公司发布公告称拟回购股份。" * 12, "减持公告，股价暴跌！回购计划终止。" * 8, *SAMPLE_TEXTS[:6]]
#: fp32 ONNX must match torch fp32 this closely (probabilities)
FP32_ATOL = 1e-4
#: ONNX int8 (looser: weights rounded to 8 bits) - the same bound ``auto`` accepts
INT8_ATOL = AUTO_MAX_ABS_DIFF


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user cache per test, so no test reads another's (or the developer's) exports."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("FINSENT_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model directory of this module's own: the tests write ONNX exports into it."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("backends") / "model", max_len=32)


def _with_strategy(src: Path, dst: Path, strategy: str) -> Path:
    """A copy of a model directory (its ONNX cache included: same weights) with another truncation strategy."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    cfg["finsent"]["truncation"]["strategy"] = strategy
    (dst / "config.json").write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
    return dst


def test_onnx_fp32_matches_torch_under_every_truncation_strategy(model_dir: Path, tmp_path: Path) -> None:
    onnx = Predictor.from_dir(model_dir, device="cpu", backend="onnx")  # exports on first use
    sha = weights_version(model_dir / WEIGHTS_FILE)
    assert (model_dir / ONNX_DIR / onnx_file_name(sha, "fp32")).is_file()
    for strategy in ("head_tail", "sliding_window", "sentences"):
        d = model_dir if strategy == "head_tail" else _with_strategy(model_dir, tmp_path / strategy, strategy)
        ref = Predictor.from_dir(d, device="cpu", batch_size=4)
        got = Predictor.from_dir(d, device="cpu", batch_size=4, backend="onnx")
        assert got.backend.name == "onnx-fp32"
        assert got.model_version == ref.model_version + "+onnx"
        if strategy != "head_tail":
            assert len(got.model_inputs(TEXTS)[0]) > len(TEXTS)  # long texts really gave several inputs
        p_ref, p_onnx = ref.predict_proba(TEXTS), got.predict_proba(TEXTS)
        assert (p_ref - p_onnx).abs().max().item() <= FP32_ATOL, strategy
        assert [p["label"] for p in got.predict(TEXTS)] == [p["label"] for p in ref.predict(TEXTS)]
    assert onnx.explainable  # the float torch model stays for gradient explanations


def test_onnx_int8_is_quantized_and_close_to_fp32(model_dir: Path) -> None:
    import onnx

    ref = Predictor.from_dir(model_dir, device="cpu")
    int8 = Predictor.from_dir(model_dir, device="cpu", backend="onnx", quantize="int8")
    assert int8.backend.name == "onnx-int8"
    assert int8.model_version == ref.model_version + "+onnx-int8"
    ops = {n.op_type for n in onnx.load(str(int8.backend.path)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops  # the Linear layers run in int8
    diff = (ref.predict_proba(TEXTS) - int8.predict_proba(TEXTS)).abs().max().item()
    assert 0 < diff <= INT8_ATOL


def test_export_cache_is_reused_and_a_stale_export_is_never_used(model_dir: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    Predictor.from_dir(model_dir, device="cpu", backend="onnx")
    sha = weights_version(model_dir / WEIGHTS_FILE)
    cached = model_dir / ONNX_DIR / onnx_file_name(sha, "fp32")
    mtime = cached.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="classifier.backends"):
        Predictor.from_dir(model_dir, device="cpu", backend="onnx")
    assert cached.stat().st_mtime_ns == mtime  # not exported again
    assert "using the cached ONNX graph" in caplog.text and "exported" not in caplog.text

    # new weights copied over a directory that still holds the old weights' export
    stale_dir = tmp_path / "retrained"
    shutil.copytree(model_dir, stale_dir)
    other = make_tiny_model_dir(tmp_path / "other" / "model", seed=1, max_len=32)
    shutil.copy2(other / WEIGHTS_FILE, stale_dir / WEIGHTS_FILE)
    new_sha = weights_version(stale_dir / WEIGHTS_FILE)
    assert new_sha != sha
    ref = Predictor.from_dir(stale_dir, device="cpu")
    got = Predictor.from_dir(stale_dir, device="cpu", backend="onnx")
    assert got.backend.path == stale_dir / ONNX_DIR / onnx_file_name(new_sha, "fp32")
    assert (ref.predict_proba(TEXTS) - got.predict_proba(TEXTS)).abs().max().item() <= FP32_ATOL
    assert not (stale_dir / ONNX_DIR / onnx_file_name(sha, "fp32")).exists()  # the stale export was removed


def test_unwritable_model_dir_exports_to_the_user_cache(model_dir: Path, tmp_path: Path, user_cache: Path) -> None:
    ro = tmp_path / "readonly"
    shutil.copytree(model_dir, ro, ignore=shutil.ignore_patterns(ONNX_DIR))
    # a plain file where onnx/ would go: the model directory cannot take the export (root ignores chmod)
    (ro / ONNX_DIR).write_text("not a directory")
    ref = Predictor.from_dir(ro, device="cpu")
    got = Predictor.from_dir(ro, device="cpu", backend="onnx")
    sha = weights_version(ro / WEIGHTS_FILE)
    assert got.backend.path == user_cache / ONNX_DIR / onnx_file_name(sha, "fp32")
    assert (ref.predict_proba(TEXTS) - got.predict_proba(TEXTS)).abs().max().item() <= FP32_ATOL


def test_auto_measures_logs_and_picks_a_variant_within_tolerance(model_dir: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    ref = Predictor.from_dir(model_dir, device="cpu")
    with caplog.at_level(logging.INFO, logger="classifier.backends"):
        auto = Predictor.from_dir(model_dir, device="cpu", backend="auto", quantize="auto")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend auto:")]
    for variant in ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"):
        assert any(line.startswith(f"backend auto: {variant}: ") and "texts/s" in line for line in lines), variant
    decision = auto.auto_decision
    assert decision is not None and not decision.cached
    assert any(line.startswith(f"backend auto: chose {decision.choice} ") for line in lines)
    assert auto.backend.name == decision.choice
    chosen = {m.variant: m for m in decision.measurements}[decision.choice]
    assert chosen.within_tolerance and chosen.max_abs_diff <= AUTO_MAX_ABS_DIFF
    assert all(m.texts_per_s_batch > 0 and m.texts_per_s_single > 0 for m in decision.measurements)
    diff = (ref.predict_proba(TEXTS) - auto.predict_proba(TEXTS)).abs().max().item()
    assert diff <= AUTO_MAX_ABS_DIFF

    # a second replica on the same kind of host takes the cached decision without measuring
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="classifier.backends"):
        again = Predictor.from_dir(model_dir, device="cpu", backend="auto", quantize="auto")
    assert again.auto_decision is not None and again.auto_decision.cached
    assert again.backend.name == decision.choice
    assert "cached decision" in caplog.text and "texts/s" not in caplog.text


def test_choose_rule_on_constructed_figures() -> None:
    def m(name: str, ratio: float, ok: bool = True) -> Measurement:
        return Measurement(name, speed_ratio=ratio, within_tolerance=ok)

    allowed = ["torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"]
    assert choose([m("torch-fp32", 1.0), m("torch-int8", 2.9), m("onnx-fp32", 1.4), m("onnx-int8", 3.1, ok=False)],
                  allowed) == "torch-int8"  # the fastest is out of tolerance
    assert choose([m("torch-fp32", 1.0), m("onnx-fp32", 1.03)], allowed) == "torch-fp32"  # within timing noise
    assert choose([m("torch-fp32", 1.0), m("onnx-fp32", 1.37), m("onnx-int8", 1.45)], allowed) == "onnx-int8"
    # the reference is measured but only the allowed variants can be chosen
    assert choose([m("torch-fp32", 1.0), m("onnx-fp32", 1.3), m("onnx-int8", 1.2)],
                  ["onnx-fp32", "onnx-int8"]) == "onnx-fp32"


def test_tolerance_rule_on_constructed_probabilities() -> None:
    ref = torch.tensor([[0.70, 0.20, 0.10], [0.405, 0.395, 0.20]])
    assert within_tolerance(ref, ref + torch.tensor([[0.01, -0.01, 0.0], [0.0, 0.0, 0.0]])) == (True, pytest.approx(
        0.01, abs=1e-6), 0)
    too_far = ref + torch.tensor([[-0.03, 0.03, 0.0], [0.0, 0.0, 0.0]])
    assert within_tolerance(ref, too_far)[:1] == (False,)
    # a flip between near-equal labels (fp32 margin 0.01 < 0.02) is tolerated; a flip of a clear label is not
    coin = ref + torch.tensor([[0.0, 0.0, 0.0], [-0.006, 0.006, 0.0]])
    assert within_tolerance(ref, coin) == (True, pytest.approx(0.006, abs=1e-6), 0)
    clear = torch.tensor([[0.515, 0.485, 0.0]])  # margin 0.03
    assert within_tolerance(clear, torch.tensor([[0.4995, 0.5005, 0.0]])) == (False, pytest.approx(0.0155, abs=1e-6),
                                                                              1)


def test_bad_options_say_what_is_allowed(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="backend: 'tensorrt' is not allowed"):
        Predictor.from_dir(model_dir, device="cpu", backend="tensorrt")
    with pytest.raises(ConfigError, match="quantize: 'int4' is not allowed"):
        Predictor.from_dir(model_dir, device="cpu", quantize="int4")
    cuda = torch.device("cuda")
    with pytest.raises(ConfigError, match="backend=onnx runs on the CPU"):
        candidates("onnx", "none", cuda)
    assert candidates("auto", "auto", cuda) == ["torch-fp32"]  # GPU: torch + bf16
    assert candidates("auto", "auto", torch.device("cpu")) == ["torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"]
    assert candidates("onnx", "auto", torch.device("cpu")) == ["onnx-fp32", "onnx-int8"]


@pytest.mark.slow
def test_onnx_fp32_matches_torch_on_the_default_base(default_base_model: Path, tmp_path: Path) -> None:
    """The real encoder (12 layers, SentencePiece, compound tokens), random head: fp32 parity <= 1e-4."""
    from classifier.labels import DEFAULT_LABELS
    from classifier.modeldir import ModelMeta, save_model_dir
    from classifier.modeling import build_classifier
    from classifier.tokenization import TruncationConfig

    torch.manual_seed(0)
    trunc = TruncationConfig(max_len=128)
    model, tok = build_classifier(default_base_model, DEFAULT_LABELS, extra_words=("利好", "利空", "回购"),
                                  truncation=trunc)
    meta = ModelMeta(labels=tuple(DEFAULT_LABELS), base_model=str(default_base_model), truncation=trunc)
    d = save_model_dir(tmp_path / "model", model, tok, meta)
    del model
    ref = Predictor.from_dir(d, device="cpu")
    got = Predictor.from_dir(d, device="cpu", backend="onnx")
    texts = list(SAMPLE_TEXTS) + TEXTS
    assert (ref.predict_proba(texts) - got.predict_proba(texts)).abs().max().item() <= FP32_ATOL
