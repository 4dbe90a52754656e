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


def _shipped(variant: str, finfe: float, cfsc: float, **extra) -> dict:
    return {"name": f"{variant}: as shipped", "variant": variant, "setting": "shipped", "test/finfe": _m(finfe, 0.7),
            "test/cfsc": _m(cfsc, 0.8), **DEV, **extra}


ABLATION_ROWS = [
    _shipped("1ep-no-fgm", 0.6700, 0.8000, wall_time_s=780.0),
    _shipped("1ep-fgm", 0.6800, 0.7950, wall_time_s=1380.0),
    _shipped("1ep-no-fgm-seed-2", 0.6600, 0.8100),
    _shipped("1ep-no-fgm-seed-3", 0.6800, 0.8050),
    _shipped("1ep-l1-1e-2", 0.7200, 0.7900),
    {**_shipped("1ep-no-fgm", 0.6300, 0.7700), "setting": "no_companion"},
    {**_shipped("1ep-fgm", 0.6250, 0.7750), "setting": "no_companion"},
]


def test_one_epoch_ablation_gives_the_technique_row_and_seed_spread_when_the_full_pair_is_missing():
    q = _quality()
    rows = {t["technique"]: t for t in q.techniques(ROWS + ABLATION_ROWS)}
    fgm = rows["FGM, 1-epoch ablation"]
    assert (round(fgm["finfe_on"] - fgm["finfe_off"], 4), round(fgm["cfsc_on"] - fgm["cfsc_off"], 4)) == (0.01, -0.005)
    # +1.0 on FinFE outweighs -0.5 on CFSC, but seeds alone moved FinFE by 2.0 and CFSC by 1.0 points
    assert fgm["kept"] == ("yes (both Δ within what a change of seed alone moved: 0.0200 / 0.0100); "
                           "encoder alone Δ -0.0050 / +0.0050")
    assert rows["L1 1e-2 on the output layer, 1-epoch ablation"]["kept"] == "yes"  # +5.0 FinFE: beyond the seeds
    assert "FGM" not in rows  # the 1-epoch pair stands in for the untrained 3-epoch pair
    assert rows["R-Drop (no FGM)"]["kept"].startswith("not measured")  # neither scale trained
    spread = q.seed_spread(ROWS + ABLATION_ROWS)
    assert list(spread) == ["1-epoch"] and spread["1-epoch"]["variants"] == ["1ep-no-fgm", "1ep-no-fgm-seed-2",
                                                                            "1ep-no-fgm-seed-3"]
    assert round(spread["1-epoch"]["finfe_mean"], 4) == 0.67 and round(spread["1-epoch"]["finfe_std"], 4) == 0.01
    assert round(spread["1-epoch"]["cfsc_std"], 4) == 0.005
    md = q.markdown({"rows": ROWS + ABLATION_ROWS, "machine": MACHINE, "load_start": [0.1, 0.2, 0.3],
                     "techniques": list(rows.values()), "seeds": spread, "split": {"seed": 13},
                     "sizes": {"test/finfe": 1049, "test/cfsc": 428, "test/cfsc_long": 300}})
    assert "| 1-epoch recipe with FGM | as shipped | 0.6800 (0.700) | 0.7950 (0.800) | 0.7450 | 23.0 min |" in md
    assert ("| FGM, 1-epoch ablation | 0.6800 / 0.6700 (+0.0100) | 0.7950 / 0.8000 (-0.0050) | yes (both Δ within"
            in md)
    assert "FinFE 0.6700 ± 0.0100, CFSC 0.8050 ± 0.0050 (mean ± sd; max − min 0.0200 / 0.0100)" in md
    # ablation models are not shipped models: neither the main table nor the README's brief lists them
    assert "1ep-fgm: as shipped |" not in md and "1ep-fgm" not in q.brief({"rows": ROWS + ABLATION_ROWS,
                                                                            "machine": MACHINE})


def test_rows_are_reused_only_from_the_same_training_run():
    q = _quality()
    old = {"rows": [{"variant": "a", "run_name": "run-1", "setting": "shipped"},
                    {"variant": "a", "run_name": "run-1", "setting": "no_companion"},
                    {"variant": "legacy", "wall_time_s": 12.5, "best_epoch": 2, "setting": "shipped"}]}
    assert [r["setting"] for r in q.reusable_rows(old, "a", {"run_name": "run-1"})] == ["shipped", "no_companion"]
    assert q.reusable_rows(old, "a", {"run_name": "run-2"}) == []  # retrained: scored again
    assert q.reusable_rows(old, "b", {"run_name": "run-1"}) == []
    assert len(q.reusable_rows(old, "legacy", {"run_name": "x", "wall_time_s": 12.5, "best_epoch": 2})) == 1
    assert q.reusable_rows(old, "legacy", {"run_name": "x", "wall_time_s": 99.0, "best_epoch": 2}) == []
    assert q.reusable_rows(None, "a", {"run_name": "run-1"}) == []


def test_a_run_stopped_before_its_calibration_is_not_taken_for_a_trained_variant(tmp_path: Path):
    import json

    q = _quality()
    assert not q.is_trained(tmp_path)  # no report at all
    report = {"config": {"calibrate": True, "companion": True}, "best_epoch": 0}
    (tmp_path / "training_report.json").write_text(json.dumps(report), encoding="utf-8")
    assert not q.is_trained(tmp_path)  # written before the dev fitting, which has not run
    report["postprocessing"] = {"temperature": 1.2}
    (tmp_path / "training_report.json").write_text(json.dumps(report), encoding="utf-8")
    assert q.is_trained(tmp_path)
    plain = {"config": {"calibrate": False, "companion": False}, "best_epoch": 0}
    (tmp_path / "training_report.json").write_text(json.dumps(plain), encoding="utf-8")
    assert q.is_trained(tmp_path)  # nothing to fit after training


def test_reused_rows_keep_the_date_they_were_first_scored():
    q = _quality()
    old = {"machine": {"date": "2026-11-29 21:59"},
           "reused": {"rows_of": ["baselines", "default"], "scored": {"baselines": "2026-11-29 20:45",
                                                                      "default": "2026-11-29 20:45"}}}
    dates = q.scored_dates(old, ["baselines", "default", "1ep-no-fgm"])
    assert dates == {"baselines": "2026-11-29 20:45", "default": "2026-11-29 20:45", "1ep-no-fgm": "2026-11-29 21:59"}
    note = q._reused_note({"reused": {"rows_of": list(dates), "scored": dates}})
    assert note == (" Rows reused from earlier scoring of the same trained models and split (`--reuse`): "
                    "baselines, default on 2026-11-29 20:45; 1ep-no-fgm on 2026-11-29 21:59.")
    legacy = {"machine": {"date": "2026-11-29 22:31"}, "reused": {"rows_of": ["default"], "scored": "2026-11-29 20:45"}}
    assert q.scored_dates(legacy, ["default", "1ep-fgm"]) == {"default": "2026-11-29 20:45",
                                                              "1ep-fgm": "2026-11-29 22:31"}
