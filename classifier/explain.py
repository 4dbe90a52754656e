"""Per-token attributions: which input tokens pushed the model towards a label.

Two methods over the word-embedding layer (pure torch + ``Predictor``; no Ray, no hooks, thread-safe):

- ``integrated_gradients`` (Sundararajan et al., 2017): average the gradient of P(target) along the straight
  path from a baseline to the input embeddings, times (input − baseline), summed over the hidden dimension.
  The attributions add up to P(target | x) − P(target | baseline) up to the integration error reported as
  ``delta`` (midpoint rule; more ``steps`` → smaller delta).
- ``grad_x_input``: one gradient at the input, times (input − baseline). Cheap, noisier.

The baseline replaces every content token's embedding by the [PAD] embedding ("no word here") and keeps
[CLS]/[SEP], whose attributions are therefore exactly 0. Attributions are computed in float32 (no autocast)
on the head+tail truncated input, i.e. exactly the tokens ``Predictor.token_strings`` lists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from classifier.errors import ConfigError, InputError

if TYPE_CHECKING:
    import torch

    from classifier.predict import Predictor

log = logging.getLogger(__name__)

Method = Literal["integrated_gradients", "grad_x_input"]
METHODS: tuple[str, ...] = ("integrated_gradients", "grad_x_input")


def explain(
    predictor: Predictor,
    texts: Sequence[str],
    targets: Sequence[str | None] | None = None,
    method: Method = "integrated_gradients",
    steps: int = 32,
    internal_batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Attributions for each text.

    Args:
        predictor: a loaded ``Predictor`` (its model and tokenizer are used as they are).
        texts: non-empty texts.
        targets: label to explain per text; ``None`` (or a ``None`` entry) → the predicted label.
        method: ``integrated_gradients`` or ``grad_x_input``.
        steps: interpolation steps of integrated gradients (ignored by ``grad_x_input``).
        internal_batch_size: interpolated inputs per forward/backward pass (memory bound).

    Returns:
        per text ``{"tokens", "attributions", "target", "probability", "method", "steps", "delta"}`` where
        ``tokens == predictor.token_strings(text)`` and ``len(attributions) == len(tokens)``.
    """
    if method not in METHODS:
        raise ConfigError(f"explain method {method!r} is unknown: choose one of {list(METHODS)}")
    if steps < 1 or internal_batch_size < 1:
        raise ConfigError(f"steps ({steps}) and internal_batch_size ({internal_batch_size}) must be >= 1")
    if targets is not None and len(targets) != len(texts):
        raise InputError(f"targets has {len(targets)} entries for {len(texts)} texts: give one per text or none")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"text #{i} is empty or not a string: every text must contain something to explain")
    n_steps = steps if method == "integrated_gradients" else 1
    out = []
    for i, text in enumerate(texts):
        target = targets[i] if targets is not None else None
        out.append(_explain_one(predictor, text, target, method, n_steps, internal_batch_size))
    return out


def _explain_one(
    predictor: Predictor, text: str, target: str | None, method: str, steps: int, chunk: int
) -> dict[str, Any]:
    import torch

    model = predictor.model
    tok = predictor.tokenizer
    ids_list = tok.model_inputs([text])[0]
    tokens = tok.convert_ids_to_tokens(ids_list)
    device = predictor.device
    ids = torch.tensor([ids_list], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            emb_layer = model.word_embeddings
            x = emb_layer(ids).detach().float()  # [1, L, H]
            baseline = _baseline(emb_layer, ids, tok.pad_id, tok.cls_id, tok.sep_id).float()
            with torch.no_grad():
                probs_x = torch.softmax(model(inputs_embeds=x, attention_mask=mask).float(), dim=-1)[0]
                probs_b = torch.softmax(model(inputs_embeds=baseline, attention_mask=mask).float(), dim=-1)[0]
            target_id = int(probs_x.argmax()) if target is None else predictor.labelset.id(target)
            if method == "integrated_gradients":
                alphas = (torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps
            else:
                alphas = torch.ones(1, device=device)
            diff = x - baseline  # [1, L, H]
            grad_sum = torch.zeros_like(x)
            for start in range(0, len(alphas), chunk):
                a = alphas[start : start + chunk].view(-1, 1, 1)
                path = (baseline + a * diff).detach().requires_grad_(True)  # [k, L, H]
                logits = model(inputs_embeds=path, attention_mask=mask.expand(len(a), -1)).float()
                p = torch.softmax(logits, dim=-1)[:, target_id]
                (grad,) = torch.autograd.grad(p.sum(), path)
                grad_sum += grad.sum(dim=0, keepdim=True)
            attributions = (grad_sum / len(alphas) * diff).sum(dim=-1)[0]  # [L]
    finally:
        model.train(was_training)
    gap = float(probs_x[target_id] - probs_b[target_id])
    return {
        "tokens": tokens,
        "attributions": [float(v) for v in attributions.detach().cpu()],
        "target": predictor.labels[target_id],
        "probability": float(probs_x[target_id]),
        "method": method,
        "steps": len(alphas),
        "delta": float(attributions.sum()) - gap,
    }


def _baseline(emb_layer: torch.nn.Module, ids: torch.Tensor, pad_id: int, cls_id: int, sep_id: int) -> torch.Tensor:
    """Input embeddings with every non-special token replaced by the [PAD] embedding."""
    import torch

    keep = (ids == cls_id) | (ids == sep_id)
    base_ids = torch.where(keep, ids, torch.full_like(ids, pad_id))
    return emb_layer(base_ids).detach()


def top_tokens(explanation: dict[str, Any], k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` tokens with the largest attributions, as (token, value), largest first."""
    pairs = list(zip(explanation["tokens"], explanation["attributions"], strict=True))
    return sorted(pairs, key=lambda p: p[1], reverse=True)[:k]
