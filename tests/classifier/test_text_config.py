from pathlib import Path

import pytest
from pydantic import Field

from classifier.config import Config, load_config
from classifier.errors import ConfigError, InputError
from classifier.labels import LabelSet
from classifier.perturb import perturb_texts
from classifier.text import normalize, validate_text


def test_normalize_width_and_whitespace() -> None:
    assert normalize("ＡＢＣ１２３\u3000涨\t\n停 \u200b！") == "ABC123 涨 停 !"
    assert normalize("  。、  ") == "。、"


def test_validate_text() -> None:
    assert validate_text(" 利好 ") == "利好"
    with pytest.raises(InputError, match="empty"):
        validate_text(" \n ")
    with pytest.raises(InputError, match="over the limit of 3"):
        validate_text("一二三四", max_chars=3)
    with pytest.raises(InputError, match="must be a string"):
        validate_text(None)


def test_labelset_score() -> None:
    ls = LabelSet()
    assert ls.score([0.2, 0.5, 0.3]) == pytest.approx(0.2)
    assert LabelSet(("a", "b")).score([0.4, 0.6]) == 0.0
    with pytest.raises(ConfigError, match="unique"):
        LabelSet(("a", "a"))


class _Cfg(Config):
    """A small config."""

    epochs: int = Field(1, description="passes")
    lr: float = Field(1e-3, description="learning rate")
    files: list[str] = Field([], description="inputs")
    mode: str | None = Field(None, description="mode")
    flag: bool = Field(False, description="flag")


def test_load_config_yaml_and_overrides(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 2\nfiles: [a.txt]\n")
    cfg = load_config(_Cfg, y, ["lr=5e-5", "files=[b.txt,c.txt]", "flag=true"])
    assert (cfg.epochs, cfg.lr, cfg.files, cfg.flag) == (2, 5e-5, ["b.txt", "c.txt"], True)


def test_load_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): epoch \(did you mean epochs\?\)"):
        load_config(_Cfg, None, ["epoch=3"])
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        load_config(_Cfg, None, ["epochs=many"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(_Cfg, None, ["epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(_Cfg, tmp_path / "missing.yaml")


def test_perturb_is_deterministic_and_rate_bounded() -> None:
    texts = ["公司业绩大涨，股价涨停"] * 3
    a = perturb_texts(texts, 0.3, seed=1)
    assert a == perturb_texts(texts, 0.3, seed=1)
    assert a != perturb_texts(texts, 0.3, seed=2)
    assert perturb_texts(texts, 0.0) == texts
    assert all(x != texts[0] for x in perturb_texts(texts, 1.0))
