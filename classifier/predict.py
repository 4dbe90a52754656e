"""Batch prediction over a finsent model directory: the one inference path for evaluate, serving and stream."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from classifier.backends import (
    AutoDecision,
    InferenceBackend,
    TorchBackend,
    build_backend,
    candidates,
    choose_backend,
)
from classifier.calibration import Calibration, decide
from classifier.errors import ConfigError, InputError
from classifier.labels import LabelSet
from classifier.modeldir import (
    CALIBRATION_FILE,
    COMPANION_DIR,
    REPORT_FILE,
    ModelMeta,
    load_model_dir,
    model_version,
    read_json,
)
from classifier.modeling import FinsentClassifier
from classifier.text import normalize
from classifier.tokenization import FinsentTokenizer

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Predictor:
    """Label, probabilities and score for batches of texts.

    Texts are sorted by length and cut into batches of ``batch_size`` so little padding is wasted; the
    forward pass runs under ``torch.inference_mode()`` (and bf16 autocast on CUDA).
    """

    def __init__(
        self,
        model: FinsentClassifier,
        tokenizer: FinsentTokenizer,
        meta: ModelMeta,
        model_version: str,
        device: torch.device,
        batch_size: int = 32,
        report: dict[str, Any] | None = None,
        calibration: Calibration | None = None,
        companion: Any = None,
        backend: InferenceBackend | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self.labelset = LabelSet.of(meta.labels)
        self.model_version = model_version
        self.device = device
        self.batch_size = batch_size
        self.report = report
        #: post-processing of the model directory (temperature, blend with the companion); None = raw softmax
        self.calibration = calibration
        #: the linear companion model (classifier.companion.LinearCompanion) when the blend needs it
        self.companion = companion
        if calibration is not None and calibration.needs_companion and companion is None:
            raise ConfigError("the calibration blends with a companion model: pass companion=")
        #: what runs the network (classifier.backends): torch eager unless from_dir chose another
        self.backend: InferenceBackend = backend if backend is not None else TorchBackend(model, device)
        #: the figures backend=auto / quantize=auto chose on (None when nothing was measured)
        self.auto_decision: AutoDecision | None = None
        #: forward passes run so far (serving reports it to show batching)
        self.forward_calls = 0

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "auto",
        batch_size: int = 32,
        quantize: str = "none",
        backend: str = "torch",
        threads: int | None = None,
    ) -> Predictor:
        """Load a model directory to run on ``backend`` (``torch`` | ``onnx`` | ``auto``) at ``quantize``
        (``none`` | ``int8`` | ``auto``); see :mod:`classifier.backends`.

        * ``quantize="int8"`` (CPU only): dynamic int8 Linear layers with per-channel weights (torch) or
          ONNX Runtime dynamic int8 MatMuls (onnx), for about half a point of macro-F1. The speed-up depends on
          the CPU: about 3x with AVX-512 VNNI, about 1.05x (torch) / 1.45x (onnx) on an AVX2-only host.
        * ``backend="onnx"`` (CPU only): the graph exported once and cached under the model directory's
          ``onnx/`` (or ``$FINSENT_CACHE``), run by ONNX Runtime with ``threads`` intra-op threads (default:
          torch's thread count).
        * ``auto``: measure the allowed variants on this host and keep the fastest within tolerance of torch
          fp32; the decision is cached per weights and kind of host. The first load costs the exports plus the
          measurement (about a minute for the default encoder on 2 busy cores), later ones about a second.
          On CUDA both mean torch with bf16 autocast.

        The model version names what produced the outputs: ``+int8`` (torch int8), ``+onnx``, ``+onnx-int8``.
        ``self.model`` stays the float torch model except for torch int8; gradients (``classifier.explain``)
        need :attr:`explainable`."""
        dev = resolve_device(device)
        allowed = candidates(backend, quantize, dev)  # validates backend / quantize / device
        model, tokenizer, meta = load_model_dir(model_dir, dev)
        d = Path(model_dir)
        version = model_version(d, meta)
        if len(allowed) > 1:
            runner, decision = choose_backend(d, model, tokenizer, dev, allowed, threads)
        else:
            runner, decision = build_backend(allowed[0], d, model, tokenizer, dev, threads), None
        version += runner.version_suffix
        calibration, companion = load_postprocessing(d, meta)
        log.info("loaded %s from %s on %s (%s)%s", version, d, dev, runner.name,
                 " (calibrated" + (", blended with its companion)" if companion else ")") if calibration else "")
        predictor = cls(runner.model if isinstance(runner, TorchBackend) else model, tokenizer, meta, version, dev,
                        batch_size, read_json(d, REPORT_FILE), calibration, companion, backend=runner)
        predictor.auto_decision = decision
        return predictor

    # ------------------------------------------------------------------ properties
    @property
    def labels(self) -> tuple[str, ...]:
        return self.labelset.names

    @property
    def max_len(self) -> int:
        return self.tokenizer.truncation.max_len

    @property
    def explainable(self) -> bool:
        """Whether :attr:`model` has float weights (gradient explanations need them; torch int8 does not)."""
        return self.backend.name != "torch-int8"

    def info(self) -> dict[str, Any]:
        summary = None
        if self.report:
            summary = {k: self.report[k] for k in ("best_epoch", "best_metric", "dev_metrics", "wall_time_s",
                                                     "train_files") if k in self.report}
        return {
            "model_version": self.model_version,
            "labels": list(self.labels),
            "base_model": self.meta.base_model,
            "max_len": self.max_len,
            "truncation": self.tokenizer.truncation.strategy,
            "num_compound_tokens": len(self.tokenizer.compound_words),
            "training_report": summary,
        }

    # ------------------------------------------------------------------ inputs
    def _check(self, texts: Sequence[str]) -> None:
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not normalize(t):
                raise InputError(f"text #{i} is empty or not a string: every text must contain something to classify")

    def encode_batch(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded, head+tail truncated inputs — exactly what :meth:`predict` feeds the model."""
        self._check(texts)
        return self.tokenizer(texts)

    def token_strings(self, text: str) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(self.tokenizer.model_inputs([text])[0])

    # ------------------------------------------------------------------ forward
    def _forward(self, batch: list[list[int]]) -> torch.Tensor:
        """Encoder logits ``[len(batch), num_labels]`` (float32, CPU) of a batch of model inputs. The one
        place that runs the network, through :attr:`backend`."""
        self.forward_calls += 1
        return self.backend(self.tokenizer.pad(batch))

    def model_inputs(self, texts: Sequence[str]) -> tuple[list[list[int]], list[int]]:
        """The model inputs of ``texts`` under the truncation strategy, and for each input the index of its text
        (several inputs per long text with ``sliding_window`` / ``sentences``)."""
        strategy = self.tokenizer.truncation.strategy
        if strategy == "head_tail":
            return [self.tokenizer.truncate(ids) for ids in self.tokenizer.encode(texts)], list(range(len(texts)))
        seqs: list[list[int]] = []
        owner: list[int] = []
        if strategy == "sentences":
            per_text = [self.tokenizer.sentence_chunks(t) for t in texts]
        else:
            per_text = [self.tokenizer.windows(ids) for ids in self.tokenizer.encode(texts)]
        for i, chunks in enumerate(per_text):
            seqs.extend(chunks)
            owner.extend([i] * len(chunks))
        return seqs, owner

    def logits_of(self, seqs: Sequence[list[int]]) -> torch.Tensor:
        """Encoder logits of model inputs, run in length-sorted batches of ``batch_size``."""
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        logits = torch.empty((len(seqs), len(self.labels)))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            logits[idx] = self._forward([seqs[i] for i in idx])
        return logits

    def pool(self, probs: torch.Tensor, owner: Sequence[int], n: int) -> torch.Tensor:
        """One probability row per text from the rows of its inputs (``truncation.pooling``)."""
        if len(owner) == n:
            return probs
        own = torch.tensor(owner)
        if self.tokenizer.truncation.pooling == "max_polar":
            polar = [self.labelset.id(x) for x in (self.labelset.positive, self.labelset.negative) if x]
            strength = probs[:, polar].sum(-1) if polar else probs.max(-1).values
            out = torch.zeros((n, probs.shape[1]))
            best = torch.full((n,), -1.0)
            for row, i in enumerate(owner):
                if strength[row] > best[i]:
                    best[i] = strength[row]
                    out[i] = probs[row]
            return out
        out = torch.zeros((n, probs.shape[1]))
        out.index_add_(0, own, probs)
        return out / torch.bincount(own, minlength=n).clamp(min=1)[:, None]

    @torch.inference_mode()
    def encoder_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """The encoder's own probabilities (temperature-scaled when calibrated, pooled over a long text's
        inputs), before any blend with the companion."""
        self._check(texts)
        if not texts:
            return torch.zeros((0, len(self.labels)))
        self.model.eval()
        seqs, owner = self.model_inputs(texts)
        logits = self.logits_of(seqs)
        temperature = self.calibration.encoder_temperature if self.calibration else 1.0
        return self.pool(torch.softmax(logits / temperature, dim=-1), owner, len(texts))

    def companion_proba(self, texts: Sequence[str]) -> torch.Tensor | None:
        if self.companion is None:
            return None
        return torch.from_numpy(self.companion.predict_proba([normalize(t) for t in texts])).float()

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), num_labels]`` final probabilities (float32, CPU): calibrated and blended as the model
        directory says — the numbers evaluation, serving and the stream all report."""
        p_enc = self.encoder_proba(texts)
        if self.calibration is None or not len(texts):
            return p_enc
        return self.calibration.combine(p_enc, self.companion_proba(texts) if self.calibration.needs_companion
                                        else None).float()

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """For each text: ``{"label", "probabilities", "score", "model_version"}``."""
        probs = self.predict_proba(texts).tolist()
        return [self.to_prediction(p) for p in probs]

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Label ids of final probabilities ``[n, k]``: the argmax, shifted by the model directory's decision
        offsets (fitted on dev for macro-F1) when it has them."""
        offsets = self.calibration.decision_offsets if self.calibration else None
        return decide(torch.as_tensor(probs), offsets)

    def predict_labels(self, texts: Sequence[str]) -> list[str]:
        """Just the label of each text (what ``predict`` names)."""
        return [self.labels[i] for i in self.decide(self.predict_proba(texts)).tolist()]

    def to_prediction(self, probs: Sequence[float]) -> dict[str, Any]:
        best = int(self.decide(torch.tensor([list(probs)], dtype=torch.float64))[0])
        return {
            "label": self.labels[best],
            "probabilities": {name: float(p) for name, p in zip(self.labels, probs, strict=True)},
            "score": self.labelset.score(probs),
            "model_version": self.model_version,
        }


def load_postprocessing(model_dir: str | Path, meta: ModelMeta) -> tuple[Calibration | None, Any]:
    """The calibration of a model directory and, when its blend needs one, the companion model."""
    data = read_json(model_dir, CALIBRATION_FILE)
    if data is None:
        return None, None
    calibration = Calibration.from_json(data, len(meta.labels))
    companion = None
    if calibration.needs_companion:
        from classifier.companion import LinearCompanion

        companion = LinearCompanion.load(Path(model_dir) / COMPANION_DIR)
        if tuple(companion.labels) != tuple(meta.labels):
            raise ConfigError(f"{model_dir}: the companion predicts {list(companion.labels)}, the model "
                              f"{list(meta.labels)}: re-export the model directory")
    return calibration, companion
