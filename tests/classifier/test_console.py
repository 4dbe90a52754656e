"""The quiet terminal: Ray and library output only in the log file, finsent's own lines on the screen."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from classifier.console import LineFilter

RAY_CONTROLLER = "\x1b[36m(TrainController pid=8941)\x1b[0m Requesting resources: {'CPU': 1} * 1"
CLEANER = "\x1b[36m(PlacementGroupCleaner pid=9028)\x1b[0m Exception in thread PlacementGroupCleanerMonitor:"
WORKER_OWN = ("\x1b[36m(RayTrainWorker pid=9062)\x1b[0m 2026-11-29 17:27:42,835 INFO training.finetune: 300 train / "
              "60 dev examples")
WORKER_BLOCK = "\x1b[36m(RayTrainWorker pid=9062)\x1b[0m n=60  accuracy=0.3333  macro P/R/F1=0.1111/0.3333/0.1667"
WORKER_NOISE = "\x1b[36m(RayTrainWorker pid=9062)\x1b[0m Checkpoint successfully created at: Checkpoint(...)"
WORKER_RAY_LOG = ("\x1b[36m(RayTrainWorker pid=9062)\x1b[0m 2026-11-29 17:27:43,619 INFO /x/ray/train/v2/context.py: "
                  "Reporting training result 1")
PROGRESS = "\x1b[36m(RayTrainWorker pid=9062)\x1b[0m epoch 1/2: 100%|##########| 10/10 [00:00<00:00, 70.96it/s]"


def test_line_filter_shows_own_lines_and_hides_ray_internals():
    keep = LineFilter()
    assert keep(RAY_CONTROLLER) is None and keep(CLEANER) is None
    assert keep(WORKER_OWN) == "2026-11-29 17:27:42,835 INFO training.finetune: 300 train / 60 dev examples"
    assert keep(WORKER_BLOCK) == "n=60  accuracy=0.3333  macro P/R/F1=0.1111/0.3333/0.1667"  # the report block
    assert keep(WORKER_NOISE) is None
    assert keep(WORKER_RAY_LOG) is None  # a timestamped foreign line ends the block
    assert keep(WORKER_BLOCK) is None
    assert keep(PROGRESS).startswith("epoch 1/2: 100%")
    assert keep("2026-11-29 17:29:10,112 INFO classifier.postfit: post-processing fitted") is not None
    assert keep("[2026-11-29 17:27:37,415 E 8941 8977] core_worker.cc:2465: Actor with class name") is None
    assert keep("W1129 17:27:37.413050873 socket.cpp:207] [c10d] hostname") is None
    assert keep("2026-11-29 17:30:01,000 INFO worker-1 stream.runner: 64 records → 64 labelled") is not None
    assert keep("2026-11-29 17:30:01,000 WARNING MainProcess kafka.conn: blocking the event loop") is None


def test_quiet_terminal_routes_child_processes_and_loggers(tmp_path: Path):
    log = tmp_path / "run.log"
    script = textwrap.dedent(f"""
        import logging, os, subprocess, sys
        from classifier.console import quiet_terminal
        with quiet_terminal({str(log)!r}) as term:
            logging.getLogger("training.finetune").info("epoch 1 done")
            logging.getLogger("ray.train").warning("controller chatter")
            subprocess.run(["sh", "-c", "echo raylet noise >&2; echo more noise"])
            print("a print from a library")
            term.write("summary for the user\\n")
        print("after: back on stdout")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    shown = r.stdout + r.stderr
    assert "epoch 1 done" in r.stderr and "summary for the user" in r.stdout and "after: back on stdout" in r.stdout
    for hidden in ("controller chatter", "raylet noise", "more noise", "a print from a library"):
        assert hidden not in shown
    logged = log.read_text(encoding="utf-8")
    for line in ("epoch 1 done", "controller chatter", "raylet noise", "more noise", "a print from a library"):
        assert line in logged


def test_results_follow_a_replaced_sys_stdout(tmp_path: Path, monkeypatch):
    """When sys.stdout is not fd 1 (pytest's capsys, a caller's StringIO), the command's results go to it and
    the quiet terminal neither closes it nor writes them past it to fd 1."""
    import io
    import logging

    from classifier.console import quiet_terminal

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with quiet_terminal(tmp_path / "run.log") as term:
        term.write("gate REFUSED the new model\n")
        logging.getLogger("kafka.conn").warning("serve chatter")
    assert sys.stdout is out and not out.closed and out.getvalue() == "gate REFUSED the new model\n"
    assert "serve chatter" in (tmp_path / "run.log").read_text(encoding="utf-8")
    assert "serve chatter" not in out.getvalue() + err.getvalue()
