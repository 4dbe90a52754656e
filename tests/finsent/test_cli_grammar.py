"""Every finsent command speaks one grammar, generated from its typed config: ``--config FILE.yaml``,
``key=value`` (nested with dots), ``--help-config``, ``--print-config``, and bad settings exit 2 naming the field.

The commands are walked from ``finsent.cli.COMMANDS``, so a new command is covered as soon as it is listed;
one without a config (``CONFIGS``/``CONFIG`` in its module) fails here. Everything runs in-process through
``finsent.cli.main``; the settings a command needs at least come from its config's ``example_overrides``.
"""

from __future__ import annotations

import logging
import types
import typing
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from classifier.config import Config, build
from finsent.cli import COMMANDS, config_class, main

NAMES = sorted(COMMANDS)


def _model_in(ann: Any) -> type[BaseModel] | None:
    """A nested model (``DriftConfig``, ``DriftConfig | None``)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        for a in typing.get_args(ann):
            if (m := _model_in(a)) is not None:
                return m
    return None


def _models_by_key(ann: Any) -> type[BaseModel] | None:
    """The model of a mapping of models (``dict[str, SplitSource]``)."""
    if typing.get_origin(ann) is dict:
        value = typing.get_args(ann)[1]
        return value if isinstance(value, type) and issubclass(value, BaseModel) else None
    return None


def _fields(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """(dotted name, field) of every field, nested models' fields included (``group.<name>.key`` for a
    mapping of models)."""
    out = []
    for name, f in cls.model_fields.items():
        out.append((prefix + name, f))
        if (sub := _model_in(f.annotation)) is not None:
            out += _fields(sub, f"{prefix}{name}.")
        elif (sub := _models_by_key(f.annotation)) is not None:
            out += _fields(sub, f"{prefix}{name}.<name>.")
    return out


def _leaves(ann: Any) -> set[Any]:
    args = typing.get_args(ann)
    if typing.get_origin(ann) is typing.Literal:
        return {type(a) for a in args}
    if args and typing.get_origin(ann) in (typing.Union, types.UnionType):
        return set().union(*(_leaves(a) for a in args))
    return {typing.get_origin(ann) or ann}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _example(name: str) -> list[str]:
    return list(config_class(name).example_overrides)


def _effective(capsys: pytest.CaptureFixture[str], name: str, *argv: str, example: bool = True) -> dict[str, Any]:
    code, out, err = _run(capsys, name, "--print-config", *(_example(name) if example else ()), *argv)
    assert code == 0, err
    return yaml.safe_load(out)


@pytest.mark.parametrize("name", NAMES)
def test_every_command_has_a_documented_config(name: str) -> None:
    cls = config_class(name)  # raises when the command's module declares no config
    assert isinstance(cls, type) and issubclass(cls, Config), f"{name}: {cls} does not derive classifier.config.Config"
    assert (cls.__doc__ or "").strip() and cls.__doc__ != Config.__doc__, f"{name}: {cls.__name__} has no docstring"
    undocumented = [dotted for dotted, f in _fields(cls) if not (f.description or "").strip()]
    assert undocumented == [], f"{name}: fields without a description"
    for dotted, f in _fields(cls):
        if (sub := _model_in(f.annotation)) is not None:
            assert (sub.__doc__ or "").strip(), f"{name}: nested {dotted} ({sub.__name__}) has no docstring"


@pytest.mark.parametrize("name", NAMES)
def test_help_config_lists_every_field(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, name, "--help-config")
    assert code == 0
    flat = " ".join(out.split())
    for dotted, f in _fields(config_class(name)):
        assert f"\n  {dotted} = " in out, f"{name}: --help-config does not list {dotted}"
        assert " ".join((f.description or "").split()) in flat, f"{name}: description of {dotted} missing"


@pytest.mark.parametrize("name", NAMES)
def test_print_config_loads_back_through_config(name: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    cls = config_class(name)
    code, first, err = _run(capsys, name, *_example(name), "--print-config")
    assert code == 0, err
    path = tmp_path / f"{name}.yaml"
    path.write_text(first, encoding="utf-8")
    code, second, err = _run(capsys, name, "--config", str(path), "--print-config")
    assert code == 0, err
    assert second == first
    assert build(cls, yaml.safe_load(second)) == build(cls, yaml.safe_load(first))
    # the YAML holds every top-level field, so the file alone pins the config
    assert set(yaml.safe_load(first)) == set(cls.model_fields)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_exits_2_and_suggests_the_field(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    cls = config_class(name)
    target = max(cls.model_fields, key=len)
    typo = target[:-1] + ("x" if target[-1] != "x" else "y")
    code, _, err = _run(capsys, name, *_example(name), f"{typo}=1")
    assert code == 2
    assert f"unknown config key(s): {typo} (did you mean {target}?)" in err


@pytest.mark.parametrize("name", NAMES)
def test_wrong_type_exits_2_naming_the_field(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    cls = config_class(name)
    typed = [n for n, f in cls.model_fields.items()
             if _leaves(f.annotation) and _leaves(f.annotation) <= {int, float, bool, type(None)}]
    assert typed, f"{name}: no number or boolean setting to try"
    code, _, err = _run(capsys, name, *_example(name), f"{typed[0]}=not-a-number")
    assert code == 2
    assert f"{typed[0]}: " in err and "'not-a-number'" in err


def _changed_value(f: FieldInfo) -> Any:
    """A value other than the field's default (for booleans and numbers), or None."""
    if f.is_required():
        return None
    default = f.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 1.5
    return None


@pytest.mark.parametrize("name", NAMES)
def test_nested_override_reaches_the_nested_model(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``group.key=value`` (nested model) and ``group.<name>.key=value`` (mapping of models) change that value
    and nothing else of the group."""
    cls = config_class(name)
    base = _effective(capsys, name)
    groups: list[tuple[list[str], type[BaseModel]]] = []
    for field, f in cls.model_fields.items():
        if (sub := _model_in(f.annotation)) is not None:
            groups.append(([field], sub))
        elif (sub := _models_by_key(f.annotation)) is not None and base.get(field):
            groups.append(([field, next(iter(base[field]))], sub))
    for path, sub in groups:
        changed = []
        for key, f in sub.model_fields.items():
            new = _changed_value(f)
            if new is None:
                continue
            code, out, _ = _run(capsys, name, *_example(name), f"{'.'.join([*path, key])}={str(new).lower()}",
                                "--print-config")
            if code != 0:
                continue  # the new value breaks a check of the config: try the next key
            got, want = yaml.safe_load(out), dict(base)
            node = want
            for p in path[:-1]:
                node[p] = dict(node[p])
                node = node[p]
            node[path[-1]] = {**node[path[-1]], key: new}
            assert got == want, f"{name}: {'.'.join([*path, key])} changed more than that value"
            changed.append(key)
        assert changed, f"{name}: no {'.'.join(path)}.<key>=... override could be applied"


# ------------------------------------------------------------------------------------------- specific rules
def test_yaml_file_then_overrides_then_positional(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "predict.yaml"
    path.write_text("model_dir: runs/a\nbatch_size: 4\ntexts: [from-file]\n", encoding="utf-8")
    cfg = _effective(capsys, "predict", "--config", str(path), "batch_size=8", "公司业绩=大涨", "--", "PE=15倍",
                     example=False)
    assert cfg["model_dir"] == "runs/a" and cfg["batch_size"] == 8
    # a Chinese text with '=' stays a text; an ASCII key=... text goes after --
    assert cfg["texts"] == ["公司业绩=大涨", "PE=15倍"]
    code, _, err = _run(capsys, "predict", "model_dir=m", "PE=15倍")
    assert code == 2 and "unknown config key(s): PE" in err and "goes after --" in err


def test_nested_mapping_and_list_values(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _effective(capsys, "stream", "security.ssl_cafile=/ca.pem", "security.sasl_mechanism=PLAIN")
    assert cfg["security"] == {"ssl_cafile": "/ca.pem", "sasl_mechanism": "PLAIN"}
    cfg = _effective(capsys, "finetune", "train_files=[a.txt,b.txt]", "use_gpu=auto", "epochs=3", "run_name=2024")
    assert (cfg["train_files"], cfg["use_gpu"], cfg["epochs"], cfg["run_name"]) == (["a.txt", "b.txt"], "auto", 3,
                                                                                    "2024")
    code, _, err = _run(capsys, "finetune", "class_weights=[1,x,2]")
    assert code == 2 and "class_weights[1]: expected a number (got 'x')" in err


def test_old_spellings_map_onto_the_same_fields(capsys: pytest.CaptureFixture[str], caplog) -> None:
    caplog.set_level(logging.WARNING, logger="classifier.config")
    assert _effective(capsys, "finetune", "--resume")["resume"] is True
    assert _effective(capsys, "classify", "--set", "port=8001", "--url", "http://h:1", "--explain")["port"] == 8001
    ev = _effective(capsys, "evaluate", "--model", "m", "--data", "a.txt", "b.txt", "--perturb", "0.05", "0.1")
    assert (ev["model_dir"], ev["data"], ev["perturb"]) == ("m", ["a.txt", "b.txt"], [0.05, 0.1])
    st = _effective(capsys, "stream", "--batch-size", "16", "--no-create-topics", "--serve", "--log-level", "debug")
    assert (st["batch_size"], st["create_topics"], st["serve_app"], st["log_level"]) == (16, False, "finsent", "DEBUG")
    tail = _effective(capsys, "tail", "-X", "security_protocol=SSL", "--json", "--idle-exit", "2")
    assert (tail["security"], tail["as_json"], tail["idle_exit_s"]) == ({"security_protocol": "SSL"}, True, 2.0)
    demo = _effective(capsys, "demo", "--tiny", "--records", "120")
    assert (demo["tiny"], demo["records"]) == (True, 120)
    notes = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert "finsent finetune: --resume is deprecated and goes in the next release; write resume=true" in notes
    assert any("--set is deprecated" in n and "write port=8001" in n for n in notes)


def test_validator_messages_keep_one_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "finetune", "batch_size=33", "num_workers=2")
    assert code == 2 and err.startswith("finsent finetune: error: batch_size: 33 is not divisible by num_workers=2")
    code, _, err = _run(capsys, "serve", "max_batch_size=0")
    assert code == 2 and "max_batch_size: Input should be greater than or equal to 1 (got 0)" in err
    code, _, err = _run(capsys, "evaluate", "data=[dev.txt]")
    assert code == 2 and "model_dir is not set: pass model_dir=DIR" in err
    code, _, err = _run(capsys, "finetune", "--config", "missing.yaml")
    assert code == 2 and "config file missing.yaml not found" in err
    code, _, err = _run(capsys, "broker", "stray")
    assert code == 2 and "unexpected argument 'stray': settings are key=value" in err
