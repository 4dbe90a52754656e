"""Nothing heavy at import time: the CLI, the configs and the model-directory contract load without torch,
transformers, Ray, ONNX Runtime, scikit-learn or the Kafka client (each is imported where it is used)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LIGHT = ["finsent.cli", "finsent.__main__", "classifier.config", "classifier.modeldir", "classifier.drift",
         "classifier.splits", "serving.config", "serving.client", "stream.config", "stream.codec", "stream.runner",
         "labeling.config", "training.config"]
HEAVY = ["torch", "transformers", "ray", "onnxruntime", "sklearn", "kafka"]


def test_light_modules_import_no_heavy_library():
    code = (f"import importlib, sys\nfor m in {LIGHT!r}: importlib.import_module(m)\n"
            f"print(','.join(h for h in {HEAVY!r} if h in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
