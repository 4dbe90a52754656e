"""`finsent serve` / `finsent classify` entry points (serving.cli.main)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serving_testutil import free_port

from serving.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_help_config_lists_every_field(capsys):
    from serving.config import ServeConfig

    assert main(["serve", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} = " in out for name in ServeConfig.model_fields)


def test_serve_rejects_bad_config_before_starting_ray(capsys, tmp_path):
    assert main(["serve", f"model_dir={tmp_path / 'missing'}"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["serve", "model_dir=/x", "max_batch_sise=8"]) == 2
    assert "did you mean max_batch_size?" in capsys.readouterr().err


def test_classify_needs_texts(capsys, tmp_path):
    assert main(["classify"]) == 2
    assert "nothing to classify" in capsys.readouterr().err
    assert main(["classify", "--file", str(tmp_path / "none.txt")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_finsent_serve_subprocess_serves_and_stops_on_ctrl_c(toy_model_dir):
    """The real command: its own local Ray (1 CPU), prints the URL, answers, exits 0 on SIGINT."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "serve", "--num-cpus", "1", f"model_dir={toy_model_dir}",
         f"port={port}", "num_cpus=0.5", "max_replicas=1", "app_name=finsent-cli"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if line.startswith("finsent serving"):
                break
        assert line.startswith("finsent serving toy0@") and f"http://127.0.0.1:{port}/v1/classify" in line
        assert main(["classify", "--url", f"http://127.0.0.1:{port}", "公司发布利好公告"]) == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
