"""bench/quality.py's tables: the README's brief table and the technique rows, from a constructed result."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _m(f1: float, acc: float) -> dict:
    return {"macro_f1": f1, "accuracy": acc, "ece": 0.03}


DEV = {"dev/finfe": _m(0.70, 0.75), "dev/cfsc": _m(0.79, 0.82)}


MACHINE = {"date": "2026-11-29", "cpu": {"model": "Some CPU", "logical_cpus": 2, "flags": ["avx2"]},
           "torch": "2.13.0"}
ROWS = [
    {"name": "TF-IDF char 1-3-grams + LR", "test/finfe": _m(0.6673, 0.722), "test/cfsc": _m(0.7906, 0.825), **DEV},
    {"name": "default recipe", "variant": "default", "setting": "shipped", "test/finfe": _m(0.6850, 0.75),
     "test/cfsc": _m(0.8090, 0.84), "test/cfsc_long": _m(0.40, 0.5), **DEV},
    {"name": "default, no offsets", "variant": "default", "setting": "no_offsets", "test/finfe": _m(0.6883, 0.752),
     "test/cfsc": _m(0.8044, 0.8435)},
    {"name": "long", "variant": "default", "setting": "long_window", "selected_on_dev": True,
     "strategy": "window", "pooling": "mean", "dev/cfsc_long": _m(0.69, 0.7), "test/cfsc_long": _m(0.7000, 0.71)},
]


def test_brief_table_has_each_shipped_model_and_the_dev_selected_long_strategy():
    q = _quality()
    md = q.brief({"rows": ROWS, "machine": MACHINE})
    lines = md.splitlines()
    assert lines[2] == "| TF-IDF char 1-3-grams + LR | 0.6673 (0.722) | 0.7906 (0.825) | – |"
    assert lines[3] == "| default recipe | 0.6850 (0.750) | 0.8090 (0.840) | 0.7000 (0.710) |"
    assert len([x for x in lines if x.startswith("| ")]) == 3  # header + 2 models; no_offsets/long rows are not models
    assert "Some CPU (2 CPUs; flags: avx2)" in md


def test_readme_section_is_replaced_and_the_rest_kept(tmp_path: Path):
    q = _quality()
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold table\n<!-- results:end -->\noutro\n", encoding="utf-8")
    q.write_readme(readme, "| new |")
    assert readme.read_text(encoding="utf-8") == "intro\n<!-- results:begin -->\n| new |\n<!-- results:end -->\noutro\n"


def test_techniques_say_on_minus_off_and_name_the_unmeasured_ones():
    q = _quality()
    rows = {t["technique"]: t for t in q.techniques(ROWS)}
    offsets = rows["macro-F1 decision offsets (fitted on dev)"]
    assert round(offsets["finfe_on"] - offsets["finfe_off"], 4) == -0.0033
    assert round(offsets["cfsc_on"] - offsets["cfsc_off"], 4) == 0.0046 and offsets["kept"] == "yes"
    assert rows["FGM"]["kept"].startswith("not measured") and "finfe_on" not in rows["FGM"]
    table = q.markdown({"rows": ROWS, "machine": MACHINE, "load_start": [0.1, 0.2, 0.3], "techniques": list(rows.values()),
                        "split": {"seed": 13}, "sizes": {"test/finfe": 1049, "test/cfsc": 428, "test/cfsc_long": 300}})
    assert "| FGM | – | – | not measured (its variant is not trained) |" in table
    assert "| window / mean (selected on dev) | 0.6900 | 0.7000 (0.710) |" in table
