"""Adversarial training on the word-embedding matrix: FGM and PGD.

FGM (Miyato et al., 2017 — the text form of Goodfellow's FGSM): after the clean backward pass, with ``g`` the
gradient of the word-embedding matrix ``E``, set ``E ← E + ε·g/‖g‖₂``, compute the loss on the same batch,
backpropagate it (its gradients add to the clean ones), and put ``E`` back exactly as it was.

PGD (Madry et al., 2018): ``k`` such ascent steps of size ``α``, each projected back into the ball
``‖E' − E‖₂ ≤ ε``; only the last step's gradient is kept on top of the clean gradients.

Both need one extra forward/backward per step (PGD: ``k``), so they roughly double (PGD: ×(k+1)) the step time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

LossFn = Callable[[], torch.Tensor]
BackwardFn = Callable[[torch.Tensor], None]


def _default_backward(loss: torch.Tensor) -> None:
    loss.backward()


class FGM:
    """Fast Gradient Method on an embedding matrix."""

    def __init__(self, embedding: nn.Embedding | nn.Parameter, epsilon: float = 1.0) -> None:
        self.param = embedding.weight if isinstance(embedding, nn.Embedding) else embedding
        self.epsilon = float(epsilon)
        self._backup: torch.Tensor | None = None

    def perturbation(self) -> torch.Tensor | None:
        """``ε·g/‖g‖`` for the current gradient, or ``None`` when there is no usable gradient."""
        g = self.param.grad
        if g is None:
            return None
        norm = torch.linalg.vector_norm(g.float())
        if not torch.isfinite(norm) or norm == 0:
            return None
        return (self.epsilon * g.float() / norm).to(self.param.dtype)

    def attack(self) -> bool:
        """Move the embeddings along the gradient; ``False`` (nothing changed) without a usable gradient."""
        r = self.perturbation()
        if r is None:
            return False
        self._backup = self.param.data.clone()
        self.param.data.add_(r)
        return True

    def restore(self) -> None:
        """Put the exact pre-attack embeddings back."""
        if self._backup is not None:
            self.param.data.copy_(self._backup)
            self._backup = None

    def step(self, loss_fn: LossFn, backward: BackwardFn = _default_backward) -> torch.Tensor | None:
        """Attack, compute and backpropagate the adversarial loss, restore. Returns the adversarial loss
        (detached), or ``None`` if there was no gradient to attack along."""
        if not self.attack():
            return None
        try:
            adv_loss = loss_fn()
            backward(adv_loss)
        finally:
            self.restore()
        return adv_loss.detach()


class PGD:
    """Projected gradient descent (``steps`` ascent steps of size ``alpha`` inside an ε-ball)."""

    def __init__(self, embedding: nn.Embedding | nn.Parameter, params: Iterable[nn.Parameter],
                 epsilon: float = 1.0, alpha: float = 0.3, steps: int = 3) -> None:
        self.param = embedding.weight if isinstance(embedding, nn.Embedding) else embedding
        self.params = [p for p in params if p.requires_grad]
        self.epsilon, self.alpha, self.steps = float(epsilon), float(alpha), int(steps)
        if self.steps < 1:
            raise ValueError(f"PGD needs at least one step, got {steps}")
        self._backup: torch.Tensor | None = None
        self._grads: list[torch.Tensor | None] = []

    def _ascend(self) -> bool:
        g = self.param.grad
        if g is None:
            return False
        norm = torch.linalg.vector_norm(g.float())
        if not torch.isfinite(norm) or norm == 0:
            return False
        self.param.data.add_((self.alpha * g.float() / norm).to(self.param.dtype))
        delta = self.param.data - self._backup
        dnorm = torch.linalg.vector_norm(delta.float())
        if dnorm > self.epsilon:
            self.param.data.copy_(self._backup + delta * (self.epsilon / dnorm))
        return True

    def restore(self) -> None:
        if self._backup is not None:
            self.param.data.copy_(self._backup)
            self._backup = None

    def step(self, loss_fn: LossFn, backward: BackwardFn = _default_backward) -> torch.Tensor | None:
        """Run the ``steps`` attacks; the clean gradients plus the last adversarial gradient remain."""
        if self.param.grad is None:
            return None
        self._grads = [None if p.grad is None else p.grad.clone() for p in self.params]
        self._backup = self.param.data.clone()
        adv_loss = None
        try:
            for t in range(self.steps):
                if not self._ascend():
                    break
                if t < self.steps - 1:
                    for p in self.params:
                        p.grad = None
                else:  # last step: accumulate its gradient on top of the clean gradients
                    for p, g in zip(self.params, self._grads, strict=True):
                        p.grad = None if g is None else g.clone()
                adv_loss = loss_fn()
                backward(adv_loss)
        finally:
            if adv_loss is None or t < self.steps - 1:  # stopped early: keep only the clean gradients
                for p, g in zip(self.params, self._grads, strict=True):
                    p.grad = g
            self.restore()
            self._grads = []
        return None if adv_loss is None else adv_loss.detach()


def build_adversary(kind: str, model: nn.Module, embedding: nn.Embedding, epsilon: float, alpha: float,
                    steps: int) -> FGM | PGD | None:
    if kind == "none":
        return None
    if kind == "fgm":
        return FGM(embedding, epsilon)
    if kind == "pgd":
        return PGD(embedding, model.parameters(), epsilon, alpha, steps)
    raise ValueError(f"adversarial: unknown kind {kind!r}; choose none, fgm or pgd")
