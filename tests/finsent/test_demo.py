"""`finsent demo` end to end with a tiny budget: real broker, real Ray Train + Serve, real consumer group.

It must replay only held-out test records, say so in its summary, replay at a rate it measured this host can
keep, keep Ray/Kafka internals off the terminal (in its log file instead) and leave no process behind."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.data import read_examples
from classifier.metrics import compute_metrics

REPO = Path(__file__).resolve().parents[2]

#: lines of Ray, Serve, Ray Train, Kafka clients and libraries that must not reach the demo's terminal
INTERNALS = re.compile(
    r"PlacementGroupCleaner|ServeController|TrainController|RayTrainWorker|raylet|core_worker|\(pid=|"
    r"\bray\.(serve|train|_private)|\bkafka\.|blocking the event loop|Traceback|Loading weights|"
    r"\d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR)|\b(INFO|WARNING) (ray|kafka|stream|serving|training|classifier)|"
    r"\x1b\[3\dm"
)


def _cmdlines() -> list[str]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out.append((p / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                continue
    return out


def _texts(*paths: Path) -> set[str]:
    return {e.text for p in paths for e in read_examples(p).examples}


def _env(shared_dir: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FINSENT_SHARED": str(shared_dir)}
    env.pop("RAY_ADDRESS", None)
    return env


def _no_internals(r: subprocess.CompletedProcess[str]) -> None:
    terminal = r.stdout + r.stderr
    found = [line for line in terminal.splitlines() if INTERNALS.search(line)]
    assert not found, "internal lines on the terminal:\n" + "\n".join(found[:20])


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path: Path, shared_dir: Path) -> None:
    env = _env(shared_dir)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "finsent", "demo", "tiny=true", "records=120", "quiet=false",
           f"cache_dir={tmp_path / 'cache'}", f"out={out}", "timeout_s=180"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== finsent demo summary ==" in r.stdout
    _no_internals(r)

    # the log file: printed first, exists, and holds what the terminal did not show
    log_file = out / "demo.log"
    assert r.stdout.splitlines()[0] == f"[demo] log: {log_file} (Ray, Serve, Kafka and library messages)"
    log_text = log_file.read_text(encoding="utf-8")
    assert "Started a local Ray instance" in log_text  # the ray driver logger
    assert re.search(r"serve .* Started Serve", log_text)  # Serve's driver messages
    assert re.search(r"INFO stream\.runner: worker 0 batch \d+", log_text)  # the stream's per-batch lines
    assert "INFO training.lifecycle: finetune run" in log_text  # the Ray Train driver

    s = json.loads((out / "summary.json").read_text())
    assert s["records_in"] == 120 and s["records_out"] + s["dlq"] == 120 and s["missing"] == 0
    assert s["dlq"] == 0  # CFSC sentences are all valid records
    assert sum(s["label_distribution"].values()) == s["records_out"]
    assert s["latency_ms_p50"] <= s["latency_ms_p99"]

    # held-out truth: every replayed record is a line of the test split, none is in train or dev
    split = tmp_path / "runs" / "split"
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 120 and {row["source"] for row in rows} == {"cfsc"}
    test = _texts(split / "cfsc" / "test.txt")
    seen_in_training = _texts(split / "cfsc" / "train.txt", split / "cfsc" / "dev.txt",
                              split / "finfe" / "train.txt", split / "finfe" / "dev.txt")
    assert all(row["text"] in test for row in rows)
    assert not [row["id"] for row in rows if row["text"] in seen_in_training]
    lines = (split / "cfsc" / "test.txt").read_text(encoding="utf-8").splitlines()
    assert all(lines[row["line"] - 1].split("|||", 1)[0] == row["true"] for row in rows)
    h = s["held_out"]
    assert h["records"] == 120 and list(h["sources"]) == ["cfsc"] and h["sources"]["cfsc"]["records"] == 120
    assert h["sources"]["cfsc"]["file"] == str(split / "cfsc" / "test.txt")
    assert h["verified"].startswith("the model never trained or selected on them") and h["dropped"] == 0
    assert "held-out test: 120 CFSC news sentences from runs/split/cfsc/test.txt scored" in r.stdout

    # the accuracy is computed against the held-back labels of what came out: recompute it from the records
    m = compute_metrics([row["true"] for row in rows], [row["pred"] for row in rows], ["其他", "利多", "利空"])
    assert s["scored_against_held_back_labels"] == 120
    assert s["accuracy"] == pytest.approx(m["accuracy"]) and s["macro_f1"] == pytest.approx(m["macro_f1"])
    assert s["review"] == sum(1 for row in rows if row["review"])

    # the rate: measured end to end first, replayed at headroom x measured, both printed
    rate = s["rate"]
    assert rate["measured_per_s"] > 0 and rate["probe_records"] == 128
    assert rate["chosen_per_s"] <= rate["measured_per_s"]
    assert rate["chosen_per_s"] == pytest.approx(0.7 * rate["measured_per_s"])
    assert re.search(r"measuring what this host sustains end to end: .* [\d.]+ records/s -> replaying at "
                     r"[\d.]+/s \(70%\)", r.stdout)
    assert "fine-tuning one on Ray Train" in r.stdout and re.search(r"\.\.\. about [\d.]+ (s|min) on this machine",
                                                                     r.stdout)
    assert s["max_lag"] >= 0 and re.search(r"lag +\d+", r.stdout)  # the live view shows the consumer lag

    # nothing left running: the broker process and every process of the demo's Ray session are gone
    assert s["broker_pid"] and not Path(f"/proc/{s['broker_pid']}").exists()
    session = s["ray_session_dir"]
    assert session and not [c for c in _cmdlines() if session in c]

    # second run: the cached model (no fine-tune), a given rate (no probe)
    r2 = subprocess.run(cmd + ["records=30", "rate=40"], capture_output=True, text=True, env=env, timeout=600,
                        cwd=tmp_path)
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr[-2000:]
    assert "using the cached demo model" in r2.stdout or "the cached demo model" in r2.stdout
    assert "fine-tuning" not in r2.stdout and "measuring what this host sustains" not in r2.stdout
    _no_internals(r2)
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["rate"]["chosen_per_s"] == 40.0 and s2["rate"]["measured_per_s"] is None
    assert s2["records_out"] == 30


def test_demo_failure_shows_cause_on_terminal(tmp_path: Path, shared_dir: Path, tiny_model_dir: Path) -> None:
    """A broker that is not there: the terminal names the cause and the log file, without a traceback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens once the socket is closed
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "finsent", "demo", f"model={tiny_model_dir}", f"bootstrap_servers=127.0.0.1:{closed}",
           f"out={out}", "records=10"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(shared_dir), timeout=300, cwd=tmp_path)
    assert r.returncode != 0
    assert f"finsent demo: error: bootstrap_servers: no Kafka broker answers at 127.0.0.1:{closed}" in r.stderr, \
        r.stderr
    assert f"full traceback and Ray/Kafka messages: {out / 'demo.log'}" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "Traceback" in (out / "demo.log").read_text(encoding="utf-8")


@pytest.mark.slow
def test_demo_sigterm_shuts_everything_down(tmp_path: Path, shared_dir: Path, tiny_model_dir: Path) -> None:
    """``kill`` (SIGTERM) in the middle of the replay stops the demo like Ctrl-C: exit 130, the cause on the
    terminal, no broker and no process of its Ray session left."""
    import signal
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "finsent", "demo", f"model={tiny_model_dir}", f"out={out}", "records=300", "rate=5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(shared_dir),
                            cwd=tmp_path)
    lines = []
    deadline = time.monotonic() + 400
    for line in proc.stdout:  # the replay has started: broker, Ray, Serve and the stream are all up
        lines.append(line)
        if line.startswith("[demo] replaying") or time.monotonic() > deadline:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    stdout = "".join(lines) + stdout
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "[demo] interrupted: everything was shut down" in stderr
    assert "[demo] stopped: stream, Serve, Ray and broker shut down" in stdout
    assert "Traceback" not in stdout + stderr
    log_text = (out / "demo.log").read_text(encoding="utf-8")
    session = re.search(r"local Ray session: (\S+)", log_text).group(1)
    broker_pid = int(re.search(r"embedded broker ready at \S+ \(pid (\d+)\)", log_text).group(1))
    assert not Path(f"/proc/{broker_pid}").exists()
    assert not [c for c in _cmdlines() if session in c]
