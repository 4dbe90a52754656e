"""The finsent model directory — the contract between training, serving and the stream, owned here.

Everything about its format lives in this module: which files it holds, the ``finsent`` metadata section,
the format version, the checks that name a missing or broken file and the command that fixes it, and the
model version string that every prediction carries. Other modules read and write a model directory only
through these functions.

Layout (``FORMAT_VERSION`` 2)::

    config.json            the encoder's Hugging Face config + id2label/label2id + a "finsent" section (ModelMeta)
    model.safetensors      encoder weights under its base_model_prefix, head as classifier.weight/.bias
    tokenizer files        as the base tokenizer saves them (tokenizer.json, ...)
    compound_tokens.txt    compound words (WoBERT style) and the base pieces each replaced
    jieba_userdict.txt     the jieba user dictionary used to segment text
    training_report.json   optional: how the model was trained and scored
    calibration.json       optional: post-processing of the logits (temperature; blend with the companion)
    companion/             optional: the stacked linear companion model (JSON + safetensors, never pickle)
    drift_reference.json   optional: label / confidence distribution on dev, the stream's drift-alarm reference
    onnx/                  optional cache: ONNX exports keyed by the weights' hash (rebuilt when stale)

Format 1 (before calibration and companions) is format 2 without the optional files; it loads unchanged.
Weights are read with safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from classifier.errors import ModelDirError
from classifier.labels import LabelSet
from classifier.tokenization import (
    COMPOUND_FILE,
    USERDICT_FILE,
    FinsentTokenizer,
    TruncationConfig,
    _check_dir,
)

if TYPE_CHECKING:  # torch and the model class load only where weights are read or written
    import torch

    from classifier.modeling import FinsentClassifier

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
REPORT_FILE = "training_report.json"
CALIBRATION_FILE = "calibration.json"
COMPANION_DIR = "companion"
DRIFT_REFERENCE_FILE = "drift_reference.json"
ONNX_DIR = "onnx"
#: files every model directory must have (the tokenizer's own files are checked by loading it)
REQUIRED_FILES: tuple[str, ...] = (CONFIG_FILE, WEIGHTS_FILE, COMPOUND_FILE, USERDICT_FILE)
#: optional files that change predictions: they enter the model version
VERSIONED_EXTRAS: tuple[str, ...] = (CALIBRATION_FILE, COMPANION_DIR)


@dataclass
class ModelMeta:
    """The ``finsent`` section of a model directory's config.json."""

    labels: tuple[str, ...]
    base_model: str
    truncation: TruncationConfig
    dropout: float = 0.1
    name: str = "finsent"
    compound_base_id: int = 0
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        t = self.truncation
        return {
            "format_version": self.format_version,
            "labels": list(self.labels),
            "base_model": self.base_model,
            "truncation": {"max_len": t.max_len, "head_tokens": t.head_tokens, "strategy": t.strategy,
                           "window_stride": t.window_stride, "pooling": t.pooling},
            "dropout": self.dropout,
            "name": self.name,
            "compound_base_id": self.compound_base_id,
            **self.extra,
        }


# ================================================================================================ writing
def save_model_dir(
    out_dir: str | Path,
    model: FinsentClassifier,
    tokenizer: FinsentTokenizer,
    meta: ModelMeta,
    report: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete finsent model directory (weights, config, tokenizer); returns its path.

    Optional files of an earlier export into the same directory (calibration, companion, drift reference,
    ONNX cache) are removed: they belonged to other weights."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clear_extras(out)
    labelset = LabelSet.of(meta.labels)
    config = copy.deepcopy(model.encoder.config)
    config.id2label = labelset.id2label
    config.label2id = labelset.label2id
    config.num_labels = len(labelset)
    config.architectures = [type(model.encoder).__name__]
    config.vocab_size = tokenizer.vocab_size
    config.dtype = "float32"
    meta.compound_base_id = tokenizer.compound_base_id
    meta.truncation = tokenizer.truncation
    meta.format_version = FORMAT_VERSION
    config.finsent = meta.to_json()
    config.save_pretrained(str(out))
    prefix = model.encoder.base_model_prefix
    import torch

    state = {f"{prefix}.{k}": v.detach().to("cpu", torch.float32).contiguous()
             for k, v in model.encoder.state_dict().items()}
    state["classifier.weight"] = model.classifier.weight.detach().cpu().float().contiguous()
    state["classifier.bias"] = model.classifier.bias.detach().cpu().float().contiguous()
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save(out)
    if report is not None:
        write_report(out, report)
    return out


def clear_extras(model_dir: str | Path) -> None:
    """Remove the optional files (calibration, companion, drift reference, ONNX cache): they belong to the
    weights they were fitted or exported with, so new weights start without them."""
    import shutil

    out = Path(model_dir)
    for stale in (CALIBRATION_FILE, DRIFT_REFERENCE_FILE):
        (out / stale).unlink(missing_ok=True)
    for stale_dir in (COMPANION_DIR, ONNX_DIR):
        if (out / stale_dir).is_dir():
            shutil.rmtree(out / stale_dir)


def write_report(model_dir: str | Path, report: Mapping[str, Any]) -> Path:
    return write_json(model_dir, REPORT_FILE, report)


def write_json(model_dir: str | Path, name: str, data: Mapping[str, Any]) -> Path:
    """Write one of the directory's JSON files (atomically: a reader never sees half a file)."""
    p = Path(model_dir) / name
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    tmp.replace(p)
    return p


def read_json(model_dir: str | Path, name: str) -> dict[str, Any] | None:
    """One of the directory's optional JSON files, ``None`` when absent; a broken file raises naming it."""
    p = Path(model_dir) / name
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{p} is not valid JSON ({e}): delete it and re-export the model directory") from None
    if not isinstance(data, dict):
        raise ModelDirError(f"{p} must hold a JSON object: delete it and re-export the model directory")
    return data


# ================================================================================================ reading
def read_meta(model_dir: str | Path) -> tuple[dict[str, Any], ModelMeta]:
    """``(config.json as a dict, its finsent section)``; a plain Hugging Face checkpoint raises saying so."""
    d = _check_dir(model_dir)
    cfg = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    fs = cfg.get("finsent")
    if not isinstance(fs, dict):
        raise ModelDirError(
            f"{d / CONFIG_FILE} has no 'finsent' section: {d} is a plain Hugging Face checkpoint, not a finsent "
            "model. Fine-tune it first: `finsent finetune base_model=" + str(d) + "`"
        )
    version = int(fs.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise ModelDirError(f"{d} has model-directory format {version}, newer than this finsent reads "
                            f"({FORMAT_VERSION}): upgrade finsent")
    known = {"labels", "base_model", "truncation", "dropout", "name", "compound_base_id", "format_version"}
    meta = ModelMeta(
        labels=tuple(fs["labels"]),
        base_model=str(fs.get("base_model", "")),
        truncation=TruncationConfig(**fs.get("truncation", {})),
        dropout=float(fs.get("dropout", 0.1)),
        name=str(fs.get("name", d.name)),
        compound_base_id=int(fs.get("compound_base_id", 0)),
        format_version=version,
        extra={k: v for k, v in fs.items() if k not in known},
    )
    return cfg, meta


def check_model_dir(model_dir: str | Path) -> Path:
    """Raise :class:`ModelDirError` naming the first missing or unreadable file and how to fix it."""
    d = _check_dir(model_dir)
    read_meta(d)
    for name in REQUIRED_FILES:
        if not (d / name).is_file():
            raise ModelDirError(
                f"{d / name} is missing: {d} is not a complete finsent model directory. Re-export it with "
                "`finsent finetune` (only safetensors weights are read)")
    for name in (CALIBRATION_FILE, DRIFT_REFERENCE_FILE, REPORT_FILE):
        read_json(d, name)
    return d


def load_weights(model: FinsentClassifier, model_dir: str | Path) -> None:
    """Load a model directory's safetensors weights into a classifier of the same shape."""
    from safetensors.torch import load_file

    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelDirError(f"{weights} is missing: re-export the model directory (only safetensors weights are read)")
    state = load_file(str(weights))
    prefix = model.encoder.base_model_prefix + "."
    enc_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = model.encoder.load_state_dict(enc_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected or "classifier.weight" not in state:
        raise ModelDirError(f"{weights} does not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
                            "use the same base_model, lexicon and labels, or re-export the model directory")
    model.classifier.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})


def load_model_dir(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[FinsentClassifier, FinsentTokenizer, ModelMeta]:
    """Load a finsent model directory (safetensors only) → (model in eval mode, tokenizer, meta)."""
    from transformers import AutoConfig, AutoModel

    from classifier.modeling import FinsentClassifier

    d = check_model_dir(model_dir)
    _, meta = read_meta(d)
    config = AutoConfig.from_pretrained(str(d))
    try:
        encoder = AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        encoder = AutoModel.from_config(config)
    model = FinsentClassifier(encoder, len(meta.labels), meta.dropout)
    load_weights(model, d)
    tokenizer = FinsentTokenizer.from_dir(d, meta.truncation)
    model.to(device).eval()
    return model, tokenizer, meta


# ================================================================================================ versions
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_version(path: str | Path) -> str:
    """First 8 hex digits of a weights file's sha256."""
    return file_sha256(path)[:8]


def content_version(model_dir: str | Path) -> str:
    """8 hex digits identifying what a model directory predicts: the weights' hash, mixed with the hashes of
    the optional files that change predictions (calibration, companion) when they are present. A directory
    without them keeps the plain weights hash."""
    d = Path(model_dir)
    weights = file_sha256(d / WEIGHTS_FILE)
    extras: list[str] = []
    for name in VERSIONED_EXTRAS:
        p = d / name
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else ([p] if p.is_file() else [])
        extras += [f"{f.relative_to(d).as_posix()}:{file_sha256(f)}" for f in files]
    if not extras:
        return weights[:8]
    return hashlib.sha256("\n".join([weights, *extras]).encode()).hexdigest()[:8]


def model_version(model_dir: str | Path, meta: ModelMeta | None = None) -> str:
    """``<name>@<content version>``: what every prediction carries."""
    if meta is None:
        meta = read_meta(model_dir)[1]
    return f"{meta.name}@{content_version(model_dir)}"


# ================================================================================================ ONNX cache
def user_cache_dir() -> Path:
    """finsent's per-user cache: ``$FINSENT_CACHE``, else ``~/.cache/finsent``."""
    return Path(os.environ.get("FINSENT_CACHE") or Path.home() / ".cache" / "finsent").expanduser()


def onnx_cache_dirs(model_dir: str | Path) -> tuple[Path, Path]:
    """Where ONNX exports of a model directory live, in order: its own ``onnx/``, then the user cache's
    ``onnx/`` (used when the model directory is read-only). Files are named by the weights' hash."""
    return Path(model_dir) / ONNX_DIR, user_cache_dir() / ONNX_DIR


def onnx_file_name(weights_sha: str, precision: str) -> str:
    """``<sha8>-fp32.onnx`` / ``<sha8>-int8.onnx``: an export of other weights never has this name."""
    return f"{weights_sha}-{precision}.onnx"


def find_onnx_file(model_dir: str | Path, weights_sha: str, precision: str) -> Path | None:
    """The cached export of these weights at ``precision``, or ``None``."""
    for d in onnx_cache_dirs(model_dir):
        p = d / onnx_file_name(weights_sha, precision)
        if p.is_file() and p.stat().st_size > 0:
            return p
    return None


def writable_cache_dir(model_dir: str | Path, weights_sha: str) -> Path:
    """The first cache directory (model directory's ``onnx/``, else the user cache) this process can write
    to. Entering the model directory's own cache removes the files of other weights there (stale exports)."""
    own, user = onnx_cache_dirs(model_dir)
    for d in (own, user):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError:
            continue
        if d == own:
            for stale in d.iterdir():
                if stale.is_file() and not stale.name.startswith((weights_sha, ".")):
                    stale.unlink(missing_ok=True)
        return d
    raise ModelDirError(f"neither {own} nor {user} is writable for the ONNX export: make one of them writable or "
                        "set FINSENT_CACHE to a writable directory")


def writable_onnx_file(model_dir: str | Path, weights_sha: str, precision: str) -> Path:
    return writable_cache_dir(model_dir, weights_sha) / onnx_file_name(weights_sha, precision)


def auto_decision_name(weights_sha: str, key_digest: str) -> str:
    """``<sha8>-auto-<host key>.json``: a backend=auto decision for these weights on one kind of host."""
    return f"{weights_sha}-auto-{key_digest}.json"


def find_auto_decision(model_dir: str | Path, weights_sha: str, key_digest: str) -> dict[str, Any] | None:
    """A cached ``auto`` decision (``None`` when absent or unreadable: it is measured again)."""
    for d in onnx_cache_dirs(model_dir):
        p = d / auto_decision_name(weights_sha, key_digest)
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                log.warning("ignoring the unreadable auto decision %s", p)
                continue
            if isinstance(data, dict):
                return data
    return None


def write_auto_decision(model_dir: str | Path, weights_sha: str, key_digest: str, data: Mapping[str, Any]) -> Path:
    return write_json(writable_cache_dir(model_dir, weights_sha), auto_decision_name(weights_sha, key_digest), data)
