"""`finsent learn` without Kafka or Ray: the held-back share, the fine-tuning config it builds (rehearsal, L2-SP,
EWC), the gate's rules on real models (a worse model is refused, the live model stays), and the checks that stop
a run whose inputs changed."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serving_testutil import toy_examples, train_tiny_model  # noqa: E402

from classifier.errors import ConfigError  # noqa: E402
from classifier.modeldir import content_version  # noqa: E402
from stream.corrections import LabelledCorrection  # noqa: E402
from training.learn import (  # noqa: E402
    GATE_REPORT_FILE,
    LearnConfig,
    LearnStop,
    LiveModel,
    check_unchanged,
    decide,
    finetune_config,
    fisher_for,
    held_back,
    learn_from_corrections,
    split_corrections,
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """A toy-trained model (good on the toy language), the random tiny model (chance), and toy split files."""
    from classifier.testing import make_tiny_model_dir

    d = tmp_path_factory.mktemp("learn")
    examples = toy_examples()
    random.Random(0).shuffle(examples)
    files = {}
    for name, part in (("train", examples[:200]), ("dev", examples[200:260]), ("test", examples[260:360])):
        files[name] = d / "split" / "toy" / f"{name}.txt"
        files[name].parent.mkdir(parents=True, exist_ok=True)
        files[name].write_text("".join(f"{y}|||{x}\n" for x, y in part), encoding="utf-8")
    corrections = [LabelledCorrection(id=f"n-{i}", label=y, text=x, predicted_label=None, model_version=None,
                                      where=f"out[0]@{i}") for i, (x, y) in enumerate(examples[360:])]
    return {"good": train_tiny_model(d / "toy0", seed=0), "random": make_tiny_model_dir(d / "random" / "model", seed=3),
            "files": files, "split": d / "split", "corrections": corrections}


def config(toy, tmp_path, **kw) -> LearnConfig:
    values = dict(split_dir=str(toy["split"]), work_dir=str(tmp_path / "learn"), min_corrections=10)
    values.update(kw)
    return LearnConfig(**values)


def test_held_back_share_is_a_stable_hash_of_the_id():
    ids = [f"news-{i}" for i in range(4000)]
    share = sum(held_back(i, 0.2) for i in ids) / len(ids)
    assert 0.18 < share < 0.22
    assert [held_back(i, 0.2) for i in ids[:50]] == [held_back(i, 0.2) for i in ids[:50]]
    # a held-back id stays held back when the fraction grows, and the same in every run
    assert all(held_back(i, 0.3) for i in ids if held_back(i, 0.2))
    corrections = [LabelledCorrection(i, "其他", "t", None, None, "") for i in ids[:100]]
    train, back = split_corrections(corrections, 0.2)
    assert {c.id for c in back} == {i for i in ids[:100] if held_back(i, 0.2)} and len(train) + len(back) == 100


def test_finetune_config_continues_the_live_model_with_rehearsal_and_a_forgetting_control(toy, tmp_path):
    live = LiveModel.from_dir(toy["good"])
    kw = dict(dev_files=[str(toy["files"]["dev"])], rehearsal_files=[str(toy["files"]["train"])])
    cfg = config(toy, tmp_path, finetune={"epochs": 1, "lr": 1e-3, "batch_size": 8, "num_workers": 1})
    f = finetune_config(cfg, live, tmp_path / "train.jsonl", tmp_path, **kw)
    assert f.init_model == live.model_dir and f.train_files == [str(tmp_path / "train.jsonl")]
    assert f.rehearsal_files == [str(toy["files"]["train"])] and f.rehearsal_fraction == 0.5
    assert (f.l2sp, f.ewc, f.ewc_fisher, f.save_fisher) == (0.1, 0.0, None, False)
    assert (f.epochs, f.lr, f.batch_size, f.num_workers) == (1, 1e-3, 8, 1)
    assert f.labels == list(live.labels) and f.model_name == "toy0" and f.max_len == 64  # the live model's
    assert f.output_dir == str(tmp_path / "model") and f.storage_path == str(tmp_path / "ray") and not f.overwrite
    assert (f.calibrate, f.companion) == (False, False)  # post-processed like the live model (which has neither)

    none = finetune_config(config(toy, tmp_path, forgetting="none", rehearsal_fraction=0.0), live,
                           tmp_path / "t.jsonl", tmp_path, **kw)
    assert (none.l2sp, none.ewc, none.rehearsal_fraction, none.rehearsal_files) == (0.0, 0.0, 0.0, [])

    # EWC: the live model's Fisher, estimated on the original training data, anchors the run
    ewc_cfg = config(toy, tmp_path, forgetting="ewc", ewc=1e5, finetune={"batch_size": 8, "num_workers": 1,
                                                                          "fisher_max_batches": 5})
    fisher = fisher_for(ewc_cfg, live, tmp_path, kw["rehearsal_files"], kw["dev_files"])
    assert fisher == str(tmp_path / "fisher.safetensors")
    f = finetune_config(ewc_cfg, live, tmp_path / "t.jsonl", tmp_path, ewc_fisher=fisher, **kw)
    assert (f.ewc, f.ewc_fisher, f.l2sp, f.save_fisher) == (1e5, fisher, 0.0, True)
    from classifier.modeldir import load_model_dir
    from training.forgetting import EWC

    model = load_model_dir(live.model_dir)[0]
    assert EWC.from_file(fisher, model, 1e5).penalty(model).item() == 0.0  # at its anchor


def test_learn_settings_that_learn_owns_or_that_break_finetune_are_refused(toy, tmp_path):
    with pytest.raises(ConfigError, match=r"finetune.init_model: is set by learn itself"):
        config(toy, tmp_path, finetune={"init_model": "x"})
    with pytest.raises(ConfigError, match=r"finetune.epochs: expected an integer \(got 'two'\)"):
        config(toy, tmp_path, finetune={"epochs": "two"})
    with pytest.raises(ConfigError, match=r"held_back_fraction: must be in \(0, 1\)"):
        config(toy, tmp_path, held_back_fraction=0.0)
    with pytest.raises(ConfigError, match="forgetting=ewc needs a positive coefficient"):
        config(toy, tmp_path, forgetting="ewc", ewc=0.0)


def _result(test_f1: dict[str, float], corrections_acc: float) -> dict:
    return {"test": {k: {"macro_f1": v} for k, v in test_f1.items()}, "corrections": {"accuracy": corrections_acc}}


def test_gate_rules(toy, tmp_path):
    before = _result({"finfe/test.txt": 0.70, "cfsc/test.txt": 0.60}, 0.40)
    ok = decide(before, _result({"finfe/test.txt": 0.695, "cfsc/test.txt": 0.65}, 0.55), config(toy, tmp_path))
    assert ok["passed"] and ok["reasons"] == []
    # margin 0: any drop refuses; the reason names the file, the numbers and the rule
    worse = decide(before, _result({"finfe/test.txt": 0.695, "cfsc/test.txt": 0.65}, 0.55),
                   config(toy, tmp_path, max_test_drop=0.0))
    assert not worse["passed"]
    assert worse["reasons"] == ["test finfe/test.txt macro-F1 went 0.7000 -> 0.6950 (-0.5 points), which fails the "
                                "rule drop < 0"]
    same = decide(before, _result({"finfe/test.txt": 0.70, "cfsc/test.txt": 0.60}, 0.40), config(toy, tmp_path))
    assert same["reasons"] == ["held-back corrections accuracy went 0.4000 -> 0.4000 (+0.0 points), which fails the "
                               "rule gain > 0"]


def test_a_worse_model_is_refused_and_the_live_model_stays(toy, tmp_path):
    """Live = the toy-trained model; the candidate = the random tiny model: worse on test and on the corrections."""
    live = LiveModel.from_dir(toy["good"])
    cfg = config(toy, tmp_path, candidate_model=str(toy["random"]), max_test_drop=0.0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = learn_from_corrections(cfg, live, toy["corrections"], run_dir)
    report = json.loads((run_dir / GATE_REPORT_FILE).read_text(encoding="utf-8"))
    assert not result.passed and not result.swapped and report["passed"] is False
    live_f1 = report["live"]["test"]["toy/test.txt"]["macro_f1"]
    new_f1 = report["new"]["test"]["toy/test.txt"]["macro_f1"]
    assert live_f1 > 0.9 and new_f1 < 0.5  # the toy model knows the toy language, the random one does not
    held = report["held_back_corrections"]
    assert held == sum(held_back(c.id, 0.2) for c in toy["corrections"]) and held > 0
    assert report["live"]["corrections"]["n"] == held
    assert [c["passed"] for c in report["checks"]] == [False, False]
    assert report["reasons"][0].startswith(f"test toy/test.txt macro-F1 went {live_f1:.4f} -> {new_f1:.4f}")
    assert content_version(toy["good"]) == live.content  # the live model directory is untouched
    manifest = json.loads((run_dir / "learn.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "refused" and manifest["split"]["held_back"] == held

    # the other way round the gate passes; without a Serve app nothing is swapped, and it says so
    random_live = LiveModel.from_dir(toy["random"])
    run2 = tmp_path / "run2"
    run2.mkdir()
    better = learn_from_corrections(config(toy, tmp_path, candidate_model=str(toy["good"])), random_live,
                                    toy["corrections"], run2)
    assert better.passed and not better.swapped and "no serve_app" in better.gate["swap_skipped"]


def test_inputs_changed_under_the_run_stop_before_the_swap(toy, tmp_path):
    live = LiveModel.from_dir(toy["random"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    snapshot = run_dir / "corrections.jsonl"
    snapshot.write_text('{"id": "a"}\n', encoding="utf-8")
    files = {"corrections.jsonl": __import__("hashlib").sha256(snapshot.read_bytes()).hexdigest()}
    new_content = content_version(toy["good"])
    check_unchanged(live, run_dir, files, toy["good"], new_content)  # nothing changed: no error
    snapshot.write_text('{"id": "a", "label": "利多"}\n', encoding="utf-8")
    with pytest.raises(LearnStop, match=r"inputs changed while learning, so nothing was swapped: the corrections "
                                        r"snapshot .*corrections.jsonl was modified\. Run finsent learn again"):
        check_unchanged(live, run_dir, files, toy["good"], new_content)
    moved = LiveModel(**{**live.__dict__, "content": "00000000"})
    with pytest.raises(LearnStop, match="holds other weights or calibration"):
        check_unchanged(moved, run_dir, {}, toy["good"], new_content)


def test_too_few_corrections_stop_before_training(toy, tmp_path):
    live = LiveModel.from_dir(toy["good"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(LearnStop, match=r"only 5 usable correction\(s\), fewer than min_corrections=10"):
        learn_from_corrections(config(toy, tmp_path), live, toy["corrections"][:5], run_dir)
    assert not (run_dir / "model").exists() and not (run_dir / "train.jsonl").exists()
