"""classifier.explain on the toy-trained tiny model (no Ray): shapes *and* values."""

from __future__ import annotations

import pytest

from classifier.errors import ConfigError, InputError
from classifier.explain import explain, top_tokens


@pytest.fixture(scope="module")
def predictor(toy_model_dir):
    from classifier.predict import Predictor

    return Predictor.from_dir(toy_model_dir, device="cpu")


def test_one_value_per_token_and_completeness(predictor):
    texts = ["公司发布利好公告", "消息称银行亏损", "  基金今日调研  "]
    preds = predictor.predict(texts)
    for text, pred, ex in zip(texts, preds, explain(predictor, texts, steps=64), strict=True):
        assert ex["tokens"] == predictor.token_strings(text)
        assert len(ex["attributions"]) == len(ex["tokens"])
        assert ex["target"] == pred["label"] and ex["probability"] == pytest.approx(
            pred["probabilities"][pred["label"]], abs=1e-5)
        assert ex["attributions"][0] == 0.0 and ex["attributions"][-1] == 0.0  # [CLS]/[SEP] stay in the baseline
        assert abs(ex["delta"]) < 0.02  # sum(attributions) ≈ P(x) − P(baseline)


def test_decisive_word_dominates_and_its_removal_changes_the_explanation(predictor):
    with_word, without_word = explain(predictor, ["消息称券商暴跌", "消息称券商"])
    assert with_word["target"] == "利空" and without_word["target"] == "其他"
    assert top_tokens(with_word, 1)[0][0] == "暴跌" and top_tokens(with_word, 1)[0][1] > 0.5
    assert "暴跌" not in without_word["tokens"]
    assert max(without_word["attributions"]) < top_tokens(with_word, 1)[0][1]
    # an explicit target equal to the prediction gives the same attributions; another target explains
    # a near-zero probability, so the decisive word carries (almost) nothing for it
    same = explain(predictor, ["消息称券商暴跌"], targets=["利空"])[0]
    assert same["attributions"] == pytest.approx(with_word["attributions"], abs=1e-6)
    other = explain(predictor, ["消息称券商暴跌"], targets=["利多"])[0]
    assert other["target"] == "利多"
    assert abs(other["attributions"][with_word["tokens"].index("暴跌")]) < 0.05


def test_grad_x_input_and_model_left_untouched(predictor):
    ex = explain(predictor, ["公司今日增持"], method="grad_x_input")[0]
    assert ex["steps"] == 1 and len(ex["attributions"]) == len(ex["tokens"])
    assert not predictor.model.training
    assert all(p.grad is None for p in predictor.model.parameters())


def test_bad_arguments_raise_named_errors(predictor):
    with pytest.raises(ConfigError, match="unknown"):
        explain(predictor, ["a"], method="lime")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="text #1 is empty"):
        explain(predictor, ["a", " "])
    with pytest.raises(InputError, match="one per text"):
        explain(predictor, ["a"], targets=["利多", "利空"])
