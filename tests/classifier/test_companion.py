"""The linear companion: trained with scikit-learn, stored as JSON + safetensors (never pickle), identical after
reload; and a model directory whose post-processing blends it gives the same probabilities everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifier.companion import LinearCompanion, read_polar_lexicon
from classifier.errors import ModelDirError

LABELS = ("其他", "利多", "利空")
BULL = ["公司业绩大涨，利好股东", "订单增长，股价涨停", "回购计划利好，盈利上升", "净利润增长超预期"]
BEAR = ["公司巨额亏损，股价暴跌", "大股东减持，利空市场", "债务违约风险上升，跌停", "业绩下滑亏损扩大"]
NEUT = ["公司召开年度股东大会", "董事会审议季度报告", "公告披露会议安排", "今天发布行业新闻"]


def _data(n: int = 30) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for i in range(n):
        for group, lab in ((BULL, "利多"), (BEAR, "利空"), (NEUT, "其他")):
            texts.append(f"{group[i % len(group)]}{'！' * (i % 3)}")
            labels.append(lab)
    return texts, labels


@pytest.fixture
def lexicon(tmp_path):
    p = tmp_path / "lex.tsv"
    p.write_text("利好\tpos\n大涨\tpos\n涨停\tpos\n增长\tpos\n亏损\tneg\n暴跌\tneg\n减持\tneg\n违约\tneg\n坏行\n",
                 encoding="utf-8")
    return p


def test_polar_lexicon_reader(lexicon):
    pos, neg = read_polar_lexicon(lexicon)
    assert pos == ["利好", "大涨", "涨停", "增长"] and neg == ["亏损", "暴跌", "减持", "违约"]


def test_companion_learns_and_round_trips_without_pickle(tmp_path, lexicon):
    texts, labels = _data()
    comp = LinearCompanion.fit(texts, labels, LABELS, lexicon_path=lexicon, C=4.0)
    probs = comp.predict_proba(["股价大涨利好", "巨额亏损暴跌", "召开股东大会"])
    assert [LABELS[i] for i in probs.argmax(1)] == ["利多", "利空", "其他"]
    assert np.allclose(probs.sum(1), 1.0)
    # lexicon features: counts of positive / negative words
    assert comp.lexicon.counts(["利好大涨，但是亏损"]).tolist() == [[2.0, 1.0]]
    folder = comp.save(tmp_path / "companion")
    assert sorted(p.name for p in folder.iterdir()) == ["companion.json", "companion.safetensors"]
    again = LinearCompanion.load(folder)
    probe = ["新的利好消息", "完全没见过的文本", *texts[:5]]
    assert np.array_equal(again.predict_proba(probe), comp.predict_proba(probe))
    (folder / "companion.safetensors").unlink()
    with pytest.raises(ModelDirError, match="companion.safetensors is missing"):
        LinearCompanion.load(folder)


def test_blended_model_dir_gives_identical_probabilities_through_predictor(tmp_path, lexicon):
    """fit_postprocessing writes calibration.json + companion/; Predictor applies exactly T and the blend."""
    from classifier.data import Example
    from classifier.modeldir import CALIBRATION_FILE, model_version, read_json
    from classifier.postfit import fit_postprocessing
    from classifier.predict import Predictor
    from classifier.testing import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "tiny")
    plain = Predictor.from_dir(model_dir, device="cpu")
    version_before = plain.model_version
    texts, labels = _data()
    train = [Example(t, lab) for t, lab in zip(texts, labels, strict=True)]
    dev_t, dev_l = _data(12)
    dev = [Example(t + "。", lab, source="dev.txt") for t, lab in zip(dev_t, dev_l, strict=True)]
    summary = fit_postprocessing(model_dir, dev, train, companion=True, lexicon=lexicon)
    assert summary["after"]["nll"] < summary["before"]["nll"]
    # the random tiny encoder knows nothing; the companion does: the blend leans on it
    assert summary["blend"]["companion_weight"] > summary["blend"]["encoder_weight"]
    assert summary["dev_macro_f1"]["final"] > summary["dev_macro_f1"]["encoder"]
    p = Predictor.from_dir(model_dir, device="cpu")
    assert p.model_version != version_before and p.model_version == model_version(model_dir)
    from classifier.drift import load_reference

    ref = load_reference(model_dir)  # the stream's drift reference: the final dev predictions of this version
    assert ref.model_version == p.model_version and ref.records == len(dev) == sum(ref.label_counts.values())
    cal = p.calibration
    assert cal is not None and cal.blend is not None and read_json(model_dir, CALIBRATION_FILE) is not None
    probe = ["股价大涨利好消息", "巨额亏损股价暴跌", "公司召开会议"]
    final = p.predict_proba(probe)
    enc = torch.softmax(plain.predict_proba(probe).log() / cal.encoder_temperature, -1)  # raw softmax, re-tempered
    comp = torch.from_numpy(p.companion.predict_proba(probe)).float()
    assert torch.allclose(final, cal.combine(enc, comp), atol=1e-5)
    assert [r["label"] for r in p.predict(probe)] == ["利多", "利空", "其他"]
    # temperature alone (no companion): argmax unchanged, probabilities softened or sharpened
    summary_t = fit_postprocessing(model_dir, dev, train, companion=False)
    pt = Predictor.from_dir(model_dir, device="cpu")
    assert pt.companion is None and pt.calibration.blend is None
    assert summary_t["temperature"] == pytest.approx(pt.calibration.encoder_temperature)
    assert torch.equal(pt.predict_proba(probe).argmax(-1), plain.predict_proba(probe).argmax(-1))
