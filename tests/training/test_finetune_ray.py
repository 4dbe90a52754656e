"""Real 2-worker Ray Train jobs (gloo DDP on CPU) with the tiny random BERT on the synthetic learnable set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from classifier.config import replace
from classifier.data import read_examples
from classifier.errors import ConfigError
from classifier.metrics import compute_metrics
from classifier.modeldir import weights_version
from classifier.predict import Predictor
from training.checkpoint import MODEL_SUBDIR, read_progress
from training.finetune import RUN_FILE, run_finetune

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(autouse=True, scope="module")
def _no_serve(ray_local):
    """Serve replicas from other test modules would hold the 2 CPUs the Train workers need."""
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001 - Serve was not running
        pass


def _checkpoints(run_path: str | Path) -> dict[int, Path]:
    """Kept checkpoint directories of a run by epoch."""
    return {read_progress(d)["epoch"]: d for d in Path(run_path).glob("checkpoint_*") if d.is_dir()}


def _scalars(record: dict) -> dict:
    return {k: v for k, v in record.items() if not isinstance(v, (dict, list))}


def test_two_worker_finetune_learns_exports_and_reloads(tiny_config, synthetic_data):
    # the tiny model's embedding rows have norm ~0.1, so FGM's step must be small too (the real model: ~1.6)
    cfg = tiny_config(adversarial="fgm", adv_epsilon=0.05, l1=1e-4, class_weights="balanced", keep_checkpoints=1)
    result = run_finetune(cfg)
    rep, out = result.report, result.model_dir

    # learned: chance is 1/3 on the balanced synthetic dev set
    assert rep["dev_metrics"]["accuracy"] >= 0.85
    assert rep["dev_metrics"]["macro_f1"] >= 0.85
    epochs = rep["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(cfg.epochs))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[rep["best_epoch"]]["dev_macro_f1"] == max(e["dev_macro_f1"] for e in epochs)
    # both workers trained: 600 examples -> 75 length-grouped batches of 8, 37 per worker (one batch dropped so
    # the workers stay in step) -> 37 optimizer steps of 16 examples per epoch
    assert all(e["train_examples"] == 592 for e in epochs)
    assert [e["global_step"] for e in epochs] == [37 * (i + 1) for i in range(cfg.epochs)]
    # FGM and L1 were active in the DDP run
    assert all(e["train_adv_loss"] > 0 for e in epochs)
    assert all(e["train_l1"] > 0 for e in epochs)

    # exported files
    for name in ("config.json", "model.safetensors", "compound_tokens.txt", "jieba_userdict.txt",
                 "training_report.json", "metrics.jsonl", "metrics.csv", "training_curves.png",
                 "confusion_dev_best.png", "dev_report.json", RUN_FILE):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").stat().st_size > 5000
    rows = list(csv.DictReader((out / "metrics.csv").open(encoding="utf-8")))
    assert [int(r["epoch"]) for r in rows] == list(range(cfg.epochs))
    assert float(rows[-1]["dev_macro_f1"]) == pytest.approx(epochs[-1]["dev_macro_f1"])
    saved = json.loads((out / "training_report.json").read_text(encoding="utf-8"))
    assert saved["config"]["adversarial"] == "fgm" and saved["data"]["train_examples"] == 600
    assert set(saved["data"]["sha256"]) == {str(synthetic_data["train"]), str(synthetic_data["dev"])}

    # the exported model reproduces the dev report measured during training
    predictor = Predictor.from_dir(out, device="cpu")
    dev = read_examples(synthetic_data["dev"])
    probs = predictor.predict_proba(dev.texts)
    preds = [predictor.labels[i] for i in probs.argmax(-1).tolist()]
    m = compute_metrics(dev.labels, preds, predictor.labels)
    assert m["confusion_matrix"] == rep["dev_metrics"]["confusion_matrix"]

    # the best checkpoint kept by Ray reloads to identical logits; the export adds the temperature fitted on dev
    kept = _checkpoints(result.run_path)
    assert rep["best_epoch"] in kept
    from_ckpt = Predictor.from_dir(kept[rep["best_epoch"]] / MODEL_SUBDIR, device="cpu")
    seqs, _ = predictor.model_inputs(dev.texts)
    logits = predictor.logits_of(seqs)
    assert torch.equal(from_ckpt.logits_of(seqs), logits)
    assert weights_version(kept[rep["best_epoch"]] / MODEL_SUBDIR / "model.safetensors") == weights_version(
        out / "model.safetensors")
    temperature = predictor.calibration.encoder_temperature
    assert torch.allclose(probs, torch.softmax(logits / temperature, -1), atol=1e-6)
    assert from_ckpt.calibration is None and from_ckpt.model_version != predictor.model_version
    post = saved["postprocessing"]
    assert post["temperature"] == pytest.approx(temperature)
    assert post["after"]["nll"] <= post["before"]["nll"] + 1e-9  # T=1 is among the candidates' neighbourhood
    assert predictor.info()["training_report"]["best_epoch"] == rep["best_epoch"]


def test_crashed_run_resumes_from_its_last_checkpoint(tiny_config):
    cfg = tiny_config(epochs=3, length_grouped=False, debug_crash_after_epoch=0, max_failures=0)
    with pytest.raises(Exception, match="simulated worker crash"):
        run_finetune(cfg)
    record = json.loads((Path(cfg.output_dir) / RUN_FILE).read_text(encoding="utf-8"))
    run_dir = Path(record["storage_path"]) / record["run_name"]
    before = _checkpoints(run_dir)
    assert list(before) == [0]
    saved_epoch0 = read_progress(before[0])["history"][0]

    with pytest.raises(ConfigError, match=r"resume: epochs=4 \(the run used 3\)"):
        run_finetune(replace(cfg, resume=True, epochs=4))
    result = run_finetune(replace(cfg, resume=True, debug_crash_after_epoch=None))
    rep = result.report
    assert rep["resumed"] is True and rep["run_name"] == record["run_name"]
    assert [e["epoch"] for e in rep["epochs"]] == [0, 1, 2]
    # epoch 0 was not trained again: its record (incl. its timings) is the one saved before the crash
    assert rep["epochs"][0] == _scalars(saved_epoch0)
    steps = rep["epochs"][0]["global_step"]
    assert [e["global_step"] for e in rep["epochs"]] == [steps, 2 * steps, 3 * steps]
    assert rep["epochs"][-1]["lr"] == 0.0  # the LR schedule continued to its end


@pytest.mark.slow
def test_worker_crash_recovers_automatically(tiny_config):
    """A worker dies after epoch 0; Ray restarts the group (max_failures=1) and it continues from that checkpoint."""
    cfg = tiny_config(epochs=2, debug_crash_after_epoch=0, max_failures=1)
    rep = run_finetune(cfg).report
    assert [e["epoch"] for e in rep["epochs"]] == [0, 1]
    assert rep["resumed"] is False
    assert rep["epochs"][1]["global_step"] == 2 * rep["epochs"][0]["global_step"]


def test_existing_model_is_not_overwritten(tiny_config, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="output_dir: .* already holds a model"):
        run_finetune(tiny_config())
    with pytest.raises(ConfigError, match="resume: .*run.json not found"):
        run_finetune(tiny_config(output_dir=str(tmp_path / "empty"), resume=True))
