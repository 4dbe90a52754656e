"""`finsent demo` end to end with a tiny budget: real broker, real Ray Train + Serve, real consumer group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.metrics import compute_metrics

REPO = Path(__file__).resolve().parents[2]


def _cmdlines() -> list[str]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out.append((p / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                continue
    return out


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path: Path, shared_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FINSENT_SHARED": str(shared_dir)}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "finsent", "demo", "--tiny", "--records", "120", "--rate", "200", "--quiet",
           "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--timeout-s", "240"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== finsent demo summary ==" in r.stdout
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["records_in"] == 120
    assert s["records_in"] == s["records_out"] + s["dlq"] and s["missing"] == 0
    assert s["dlq"] == 0  # CFSC sentences are all valid records
    assert sum(s["label_distribution"].values()) == s["records_out"]
    assert s["latency_ms_p50"] <= s["latency_ms_p99"]
    # the accuracy is computed against the held-back labels: recompute it from the per-record file
    rows = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 120 and all(row["true"] for row in rows)
    m = compute_metrics([row["true"] for row in rows], [row["pred"] for row in rows], ["其他", "利多", "利空"])
    assert s["scored_against_held_back_labels"] == 120
    assert s["accuracy"] == pytest.approx(m["accuracy"]) and s["macro_f1"] == pytest.approx(m["macro_f1"])
    # nothing left running: the broker process and every process of the demo's Ray session are gone
    assert s["broker_pid"] and not Path(f"/proc/{s['broker_pid']}").exists()
    session = s["ray_session_dir"]
    assert session and not [c for c in _cmdlines() if session in c]
    # second run: the cached model is used (no fine-tune)
    r2 = subprocess.run(cmd[:-2] + ["--timeout-s", "240", "--records", "30"], capture_output=True, text=True,
                        env=env, timeout=600, cwd=tmp_path)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-2000:]
    assert "using the cached demo model" in r2.stdout
