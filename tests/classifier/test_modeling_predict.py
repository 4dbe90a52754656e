import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from classifier.errors import InputError, ModelDirError
from classifier.modeldir import load_model_dir
from classifier.paths import default_base_model
from classifier.predict import Predictor

TEXTS = ["公司业绩大涨，利好消息", "股价跌停，亏损扩大", "今日收盘", "减持公告" * 40]


def test_save_load_round_trip_identical_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    from classifier.modeldir import save_model_dir

    model, tok, meta = load_model_dir(tiny_model_dir)
    x = tok(TEXTS)
    with torch.no_grad():
        before = model(**x)
    save_model_dir(tmp_path / "copy", model, tok, meta)
    model2, tok2, _ = load_model_dir(tmp_path / "copy")
    x2 = tok2(TEXTS)
    assert torch.equal(x["input_ids"], x2["input_ids"])
    with torch.no_grad():
        assert torch.equal(before, model2(**x2))


def test_plain_transformers_loads_the_encoder(tiny_model_dir: Path) -> None:
    from transformers import AutoModel

    pred = Predictor.from_dir(tiny_model_dir, device="cpu")
    encoder = AutoModel.from_pretrained(str(tiny_model_dir)).eval()
    x = pred.encode_batch(TEXTS[:2])
    with torch.no_grad():
        cls = encoder(**x).last_hidden_state[:, 0]
        logits = pred.model.classifier(cls)
    torch.testing.assert_close(torch.softmax(logits, -1), pred.predict_proba(TEXTS[:2]), atol=1e-6, rtol=0)
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["id2label"] == {"0": "其他", "1": "利多", "2": "利空"}
    assert cfg["label2id"] == {"其他": 0, "利多": 1, "利空": 2}
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "compound_tokens.txt", "jieba_userdict.txt", "tokenizer.json"} <= files
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in files)


def test_predictions_sorted_batching_matches_single(tiny_model_dir: Path) -> None:
    pred = Predictor.from_dir(tiny_model_dir, device="cpu", batch_size=2)
    out = pred.predict(TEXTS)
    single = [pred.predict([t])[0] for t in TEXTS]
    for a, b in zip(out, single, strict=True):
        assert a["label"] == b["label"]
        for lab in pred.labels:
            assert a["probabilities"][lab] == pytest.approx(b["probabilities"][lab], abs=1e-5)
    for p in out:
        probs = p["probabilities"]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert p["score"] == pytest.approx(probs["利多"] - probs["利空"])
        assert p["label"] == max(probs, key=probs.get)
        assert p["model_version"].startswith("tiny@") and len(p["model_version"]) == len("tiny@") + 8
    with pytest.raises(InputError, match="#1 is empty"):
        pred.predict(["ok", "  "])
    with pytest.raises(InputError, match="#0 is empty"):
        pred.predict(["\u200b\ufeff"])  # zero-width characters only: nothing left after normalisation


def test_sliding_window_averages_window_probabilities(tiny_model_dir: Path) -> None:
    from classifier.tokenization import TruncationConfig

    pred = Predictor.from_dir(tiny_model_dir, device="cpu")
    pred.tokenizer.truncation = TruncationConfig(max_len=16, strategy="sliding_window", window_stride=7)
    text = TEXTS[3]
    windows = pred.tokenizer.windows(pred.tokenizer.encode([text])[0])
    assert len(windows) > 2
    with torch.no_grad():
        expected = torch.softmax(pred.model(**pred.tokenizer.pad(windows)), -1).mean(0)
    torch.testing.assert_close(pred.predict_proba([text])[0], expected, atol=1e-6, rtol=0)


def test_incomplete_model_dir_names_missing_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "compound_tokens.txt").unlink()
    with pytest.raises(ModelDirError, match="compound_tokens.txt is missing"):
        Predictor.from_dir(broken)
    with pytest.raises(ModelDirError, match="no 'finsent' section"):
        Predictor.from_dir(tiny_model_dir.parent / f"{tiny_model_dir.name}-base")
    with pytest.raises(ModelDirError, match="FINSENT_BASE_MODEL"):
        default_base_model(tmp_path / "missing")


def test_cli_evaluate_prints_full_report(tiny_model_dir: Path, shared_dir: Path, tmp_path: Path) -> None:
    dev = shared_dir / "data" / "finfe" / "dev.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run(
        [sys.executable, "-m", "finsent", "evaluate", f"model_dir={tiny_model_dir}", f"data=[{dev}]",
         f"out={tmp_path}", "perturb=[0.1]"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "n=1331" in r.stdout and "macro P/R/F1=" in r.stdout and "confusion matrix" in r.stdout
    assert "perturb rate 0.1" in r.stdout
    assert "<=128 pieces:   1331 examples" in r.stdout and "calibration: ECE" in r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    m = report["files"][str(dev)]["clean"]
    assert sum(map(sum, m["confusion_matrix"])) == 1331
    assert m["by_length"]["<=128"]["examples"] == 1331 and 0.0 <= m["ece"] <= 1.0
    assert f"ECE {m['ece']:.4f}" in r.stdout
    assert (tmp_path / "confusion_dev.png").is_file() and (tmp_path / "reliability_dev.png").stat().st_size > 3000


def test_cli_predict_json_lines(tiny_model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run(
        [sys.executable, "-m", "finsent", "predict", "--model", str(tiny_model_dir)],
        input="利好消息\n\n股价暴跌\n", capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["text"] for row in rows] == ["利好消息", "股价暴跌"]
    expected = Predictor.from_dir(tiny_model_dir, device="cpu").predict(["利好消息", "股价暴跌"])
    assert [row["label"] for row in rows] == [e["label"] for e in expected]


def test_int8_quantized_predictor_agrees_with_fp32(tiny_model_dir: Path) -> None:
    from torch import nn

    from classifier.errors import ConfigError

    fp32 = Predictor.from_dir(tiny_model_dir, device="cpu")
    int8 = Predictor.from_dir(tiny_model_dir, device="cpu", quantize="int8")
    assert int8.model_version == fp32.model_version + "+int8"
    assert not any(type(m) is nn.Linear for m in int8.model.modules())  # every Linear was converted
    a, b = fp32.predict_proba(TEXTS), int8.predict_proba(TEXTS)
    assert (a - b).abs().max().item() < 0.02
    with pytest.raises(ConfigError, match="quantize"):
        Predictor.from_dir(tiny_model_dir, device="cpu", quantize="int4")


def test_cli_predict_int8_matches_the_int8_predictor(tiny_model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run(
        [sys.executable, "-m", "finsent", "predict", "--model", str(tiny_model_dir), "--device", "cpu",
         "--quantize", "int8", "利好消息", "股价暴跌"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    expected = Predictor.from_dir(tiny_model_dir, device="cpu", quantize="int8").predict(["利好消息", "股价暴跌"])
    assert [row["model_version"] for row in rows] == [e["model_version"] for e in expected]
    assert rows[0]["model_version"].endswith("+int8")
    assert [row["probabilities"] for row in rows] == [e["probabilities"] for e in expected]
