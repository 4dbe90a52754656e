"""FinetuneConfig: shipped YAMLs load, overrides apply, bad settings fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifier.config import load_config
from classifier.errors import ConfigError
from training.cli import main as cli_main
from training.config import FinetuneConfig, expand_path, resolve_paths

#: every shipped fine-tuning recipe (finetune*.yaml, demo.yaml): all YAMLs except pretraining's and distillation's
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml")
                 if not p.name.startswith(("pretrain", "distill")))


def test_configs_exist():
    assert any(p.name == "finetune.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_finetune_yaml_loads(path):
    cfg = load_config(FinetuneConfig, path)
    assert isinstance(cfg, FinetuneConfig)
    # every recipe trains on FinFE + CFSC of the split and selects on the mean of the two dev sets' macro-F1
    assert cfg.select_metric == "mean_macro_f1" and [Path(p).parent.name for p in cfg.dev_files] == ["finfe", "cfsc"]
    assert cfg.batch_size % cfg.num_workers == 0


def test_default_yaml_values_and_overrides():
    path = next(p for p in CONFIGS if p.name == "finetune.yaml")
    cfg = load_config(FinetuneConfig, path, ["epochs=1", "adversarial=fgm", "class_weights=[2,1,2]", "use_gpu=false",
                                             "extra_train_files=[a.txt,b.txt]"])
    assert cfg.epochs == 1 and cfg.adversarial == "fgm" and cfg.use_gpu is False
    assert cfg.class_weights == [2.0, 1.0, 2.0]
    assert cfg.extra_train_files == ["a.txt", "b.txt"]
    assert load_config(FinetuneConfig, path, ["use_gpu=auto"]).use_gpu == "auto"


def test_every_field_has_help():
    missing = [name for name, f in FinetuneConfig.model_fields.items() if not f.description]
    assert missing == []


@pytest.mark.parametrize(("override", "needle"), [
    ("epoch=3", "epoch (did you mean epochs?)"),
    ("epochs=three", "epochs: expected an integer"),
    ("lr=fast", "lr: expected a number"),
    ("adversarial=fsgm", "adversarial: 'fsgm' is not allowed"),
    ("precision=int8", "precision: 'int8' is not allowed"),
    ("length_grouped=maybe", "length_grouped: expected true or false"),
])
def test_unknown_key_and_wrong_type_name_the_field(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, None, [override])
    assert needle in str(e.value)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"batch_size": 33, "num_workers": 2}, "batch_size: 33 is not divisible by num_workers=2"),
    ({"class_weights": [1.0, 2.0]}, "class_weights: got 2 weights for 3 labels"),
    ({"class_weights": "inverse"}, "class_weights: 'inverse' is not allowed"),
    ({"select_metric": "f1"}, "select_metric: 'f1' is not allowed"),
    ({"lr": 0.0}, "lr: must be positive"),
    ({"warmup_ratio": 1.0}, "warmup_ratio: must be in [0, 1)"),
    ({"layerwise_lr_decay": 1.5}, "layerwise_lr_decay: must be in (0, 1]"),
    ({"ewc": 0.5}, "ewc_fisher: ewc > 0 needs the Fisher file"),
    ({"rehearsal_fraction": 0.2}, "rehearsal_files: rehearsal_fraction > 0 needs"),
    ({"precision": "bf16", "use_gpu": False}, "precision: bf16 autocast needs a GPU"),
    ({"head_tokens": 200, "max_len": 128}, "head_tokens: must be between 0 and max_len-2"),
    ({"train_files": []}, "train_files: give at least one"),
])
def test_post_init_validation_names_the_field(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        FinetuneConfig(**kwargs)
    assert needle in str(e.value)


def test_derived_values():
    cfg = FinetuneConfig(batch_size=32, num_workers=4, select_metric="loss")
    assert cfg.per_worker_batch == 8
    assert (cfg.score_attribute, cfg.score_order) == ("score_loss", "min")
    assert (FinetuneConfig().score_attribute, FinetuneConfig().score_order) == ("score_macro_f1", "max")


def test_paths_expand_shared_and_become_absolute(monkeypatch, tmp_path, tiny_base_dir):
    monkeypatch.setenv("FINSENT_SHARED", str(tmp_path / "sh"))
    assert expand_path("$FINSENT_SHARED/data/x.txt") == tmp_path / "sh" / "data" / "x.txt"
    assert expand_path("${FINSENT_SHARED}/y") == tmp_path / "sh" / "y"
    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(FinetuneConfig(base_model=str(tiny_base_dir), lexicon_files=["lex.txt"], output_dir="out"))
    assert cfg.train_files == [str(tmp_path / "sh" / "data" / "finfe" / "train.txt")]
    assert cfg.output_dir == str(tmp_path / "out")
    assert cfg.lexicon_files == [str(tmp_path / "lex.txt")]
    assert Path(cfg.storage_path).is_absolute()


def test_cli_reports_config_errors_and_prints_config(capsys):
    assert cli_main(["finetune", "epochs=0"]) == 2
    assert "epochs: must be at least 1" in capsys.readouterr().err
    assert cli_main(["finetune", "--print-config", "lr=2e-4", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0002" in out and "resume: true" in out
    assert cli_main(["finetune", "--help-config"]) == 0
    assert "adv_epsilon" in capsys.readouterr().out
    assert cli_main(["nope"]) == 2


def test_shared_run_and_optimiser_settings_are_defined_once():
    """Every recipe's config inherits the run and optimiser settings (same names, help and checks)."""
    from training.config import OptimSettings, RunSettings
    from training.distill import DistillConfig
    from training.pretrain import PretrainConfig

    overridden = {"output_dir", "epochs"}  # recipe defaults
    for cls in (FinetuneConfig, PretrainConfig, DistillConfig):
        for name, f in {**RunSettings.model_fields, **OptimSettings.model_fields}.items():
            if name not in overridden:
                assert cls.model_fields[name].description == f.description, (cls.__name__, name)
                assert cls.model_fields[name].default == f.default, (cls.__name__, name)
        with pytest.raises(ConfigError, match="batch_size: 33 is not divisible by num_workers=2"):
            cls(batch_size=33, num_workers=2)
        with pytest.raises(ConfigError, match="precision: bf16 autocast needs a GPU"):
            cls(precision="bf16", use_gpu=False)
