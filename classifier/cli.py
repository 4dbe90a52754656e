"""``finsent evaluate`` and ``finsent predict``: thin commands over :class:`classifier.predict.Predictor`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from classifier.config import Alias, Config, parse_command, run_command
from classifier.errors import ConfigError

log = logging.getLogger(__name__)


class _ModelCommand(Config):
    """Settings shared by the commands that load a finsent model directory."""

    model_dir: str | None = Field(None, description="finsent model directory (as exported by `finsent finetune`).")
    device: str = Field("auto", description="cpu, cuda (or cuda:N) or auto (cuda when available).")
    quantize: Literal["none", "int8", "auto"] = Field(
        "none",
        description="int8: dynamic int8 Linear layers on CPU, as serving's quantize=int8 (measure its cost here); "
        "auto: measure fp32 and int8 on this CPU and keep the faster one within tolerance.",
    )
    backend: Literal["torch", "onnx", "auto"] = Field(
        "torch",
        description="CPU inference backend, as serving's backend: torch, onnx (ONNX Runtime; export cached in "
        "the model directory) or auto (measure on this CPU, keep the fastest within tolerance of torch fp32).",
    )

    @model_validator(mode="after")
    def _needs_model(self) -> _ModelCommand:
        if not self.model_dir or not str(self.model_dir).strip():
            raise ConfigError("model_dir is not set: pass model_dir=DIR (a directory written by `finsent finetune`)")
        return self


class EvaluateConfig(_ModelCommand):
    """Score a model directory on labelled files: per file (source) and per length bucket (pieces), with the
    calibration error (ECE, 15 bins); report.json, confusion and reliability-diagram PNGs."""

    example_overrides = ("model_dir=runs/finetune", "data=[dev.txt]")

    data: list[str] = Field([], description="labelled files: label|||text (.txt), .jsonl or .csv.")
    out: str | None = Field(None, description="where report.json and confusion PNGs go; unset = <model_dir>/eval.")
    batch_size: int = Field(64, ge=1, description="texts per forward pass.")
    on_error: Literal["skip", "raise"] = Field(
        "skip", description="bad data lines: skip and count them, or stop at the first."
    )
    perturb: list[float] = Field(
        [],
        description="also evaluate on deterministically perturbed copies of the data (character noise at each "
        "rate, e.g. perturb=[0.05,0.1]) and report the metric drop.",
    )
    seed: int = Field(0, description="seed of the perturbations.")

    @model_validator(mode="after")
    def _needs_data(self) -> EvaluateConfig:
        if not self.data:
            raise ConfigError("data is not set: pass data=[dev.txt] (labelled files: label|||text, .jsonl or .csv)")
        if any(not 0 <= r <= 1 for r in self.perturb):
            raise ConfigError(f"perturb: rates must lie in [0, 1], got {self.perturb}")
        return self


class PredictConfig(_ModelCommand):
    """Classify texts given as arguments (or one a line on stdin) and print JSON lines."""

    example_overrides = ("model_dir=runs/finetune",)

    texts: list[str] = Field([], description="texts to classify (the command's bare arguments); none = read "
                                             "one text a line from stdin.")
    batch_size: int = Field(32, ge=1, description="texts per forward pass.")


#: the config class of each command ("module:Class")
CONFIGS = {"evaluate": "classifier.cli:EvaluateConfig", "predict": "classifier.cli:PredictConfig"}

#: old spellings kept for one release (each use logs a deprecation note)
_MODEL_ALIASES: dict[str, str | Alias] = {"--model": "model_dir", "--batch-size": "batch_size", "--device": "device",
                                          "--quantize": "quantize"}
ALIASES: dict[str, dict[str, str | Alias]] = {
    "evaluate": {**_MODEL_ALIASES, "--data": Alias("data", many=True), "--out": "out", "--on-error": "on_error",
                 "--perturb": Alias("perturb", many=True), "--seed": "seed"},
    "predict": dict(_MODEL_ALIASES),
}


def evaluate(argv: list[str]) -> int:
    from classifier.data import read_examples
    from classifier.evaluation import evaluate_texts, write_plots
    from classifier.metrics import compute_metrics, format_report, save_report
    from classifier.predict import Predictor

    cfg = parse_command(EvaluateConfig, argv, prog="finsent evaluate", aliases=ALIASES["evaluate"])
    _setup_logging()
    predictor = Predictor.from_dir(cfg.model_dir, device=cfg.device, batch_size=cfg.batch_size,
                                   quantize=cfg.quantize, backend=cfg.backend)
    out_dir = Path(cfg.out) if cfg.out else Path(str(cfg.model_dir)) / "eval"
    report: dict = {"model_version": predictor.model_version, "files": {}}
    calibrated = "calibrated" if predictor.calibration else "uncalibrated"
    print(f"{predictor.model_version}: {calibrated} probabilities"
          + (", blended with its companion" if predictor.companion else ""))
    for path in cfg.data:
        data = read_examples(path, predictor.labels, on_error=cfg.on_error)
        if data.bad:
            print(f"{path}: skipped {len(data.bad)} bad line(s); first: {data.bad[0]}", file=sys.stderr)
        m = evaluate_texts(predictor, data.texts, data.labels)
        probs = m.pop("_probs")
        m["skipped_lines"] = len(data.bad)
        print(format_report(m, title=f"== {path} ({predictor.model_version})"))
        for bucket, b in m["by_length"].items():
            print(f"   {bucket:>8} pieces: {b['examples']:>6} examples  accuracy {b['accuracy']:.4f}  "
                  f"macro-F1 {b['macro_f1']:.4f}")
        print(f"   calibration: ECE {m['ece']:.4f} (15 bins), NLL {m['nll']:.4f}")
        entry = {"clean": m}
        stem = Path(path).stem if Path(path).stem not in report["files"] else Path(path).as_posix().replace("/", "_")
        if Path(path).parent.name and stem in {Path(p).stem for p in cfg.data if p != path}:
            stem = f"{Path(path).parent.name}_{stem}"
        write_plots(m, probs, data.labels, predictor.labels, out_dir, stem)
        if cfg.perturb:
            from classifier.perturb import perturb_texts

            for rate in cfg.perturb:
                noisy = perturb_texts(data.texts, rate=rate, seed=cfg.seed)
                npreds = predictor.predict_labels(noisy)
                nm = compute_metrics(data.labels, npreds, predictor.labels)
                entry[f"perturb_{rate}"] = nm
                print(f"   perturb rate {rate}: accuracy {nm['accuracy']:.4f} ({nm['accuracy'] - m['accuracy']:+.4f})"
                      f"  macro-F1 {nm['macro_f1']:.4f} ({nm['macro_f1'] - m['macro_f1']:+.4f})")
        report["files"][path] = entry
    save_report(report, out_dir / "report.json")
    print(f"wrote {out_dir / 'report.json'} (and confusion_*.png, reliability_*.png)")
    return 0


def predict(argv: list[str]) -> int:
    from classifier.predict import Predictor

    cfg = parse_command(PredictConfig, argv, prog="finsent predict", positional="texts", aliases=ALIASES["predict"])
    _setup_logging()
    texts = list(cfg.texts)
    if not texts:
        texts = [line.rstrip("\n") for line in sys.stdin]
    texts = [t for t in texts if t.strip()]
    if not texts:
        print("no text given: pass texts as arguments or one a line on stdin", file=sys.stderr)
        return 2
    predictor = Predictor.from_dir(cfg.model_dir, device=cfg.device, batch_size=cfg.batch_size,
                                   quantize=cfg.quantize, backend=cfg.backend)
    for text, pred in zip(texts, predictor.predict(texts), strict=True):
        print(json.dumps({"text": text, **pred}, ensure_ascii=False))
    return 0


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


COMMANDS = {"evaluate": evaluate, "predict": predict}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        asked = argv[:1] in (["-h"], ["--help"])
        print("usage: python -m classifier {evaluate,predict} [--config FILE.yaml] [key=value ...] "
              "[--help-config] [--print-config]", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return run_command(f"finsent {argv[0]}", COMMANDS[argv[0]], argv[1:])
