"""Copies of a model's weights the trainer evaluates with: an exponential moving average of the training
iterates (MACE's `--ema --ema_decay 0.99`, NequIP's `use_ema`), and the weights of the best validation epoch
(early stopping's restore, MACE's and fairchem's "best" checkpoint).

Both hold plain tensors (parameters and floating buffers) so a checkpoint stores them with
`torch.save`/`torch.load(weights_only=True)` and a resumed run continues bit for bit; `swapped()` puts them
into the model for an evaluation and the live weights back after it.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

__all__ = ["EMAWeights", "BestWeights"]


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """The model's parameters and floating-point buffers, in a fixed order (what an evaluation depends on)."""
    return [p for p in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]


class _Copy:
    def __init__(self, model: nn.Module):
        self.live = _tensors(model)
        self.copy = [t.detach().clone() for t in self.live]

    @contextlib.contextmanager
    def swapped(self):
        """The copy in the model for the block; the live weights back afterwards (exactly: copied, not recomputed)."""
        saved = [t.detach().clone() for t in self.live]
        with torch.no_grad():
            torch._foreach_copy_(self.live, self.copy)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.live, saved)


class EMAWeights(_Copy):
    """θ̄ ← d·θ̄ + (1 − d)·θ after every optimizer step, with d = min(decay, (1 + n)/(10 + n)) after n updates
    (torch_ema's warm-up, which MACE uses): early iterates from the initialisation do not dominate."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model)
        self.decay = float(decay)
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.copy, [t.detach() for t in self.live], 1.0 - d)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": [t.clone() for t in self.copy]}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        with torch.no_grad():
            torch._foreach_copy_(self.copy, list(state["weights"]))


class BestWeights(_Copy):
    """The weights (as evaluated: the moving average where there is one) of the epoch with the lowest
    validation objective so far, and that epoch (−1: none yet)."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.value = math.inf
        self.epoch = -1

    @torch.no_grad()
    def offer(self, objective: float, epoch: int) -> bool:
        """Keep the model's current weights if `objective` is the best so far (call inside the evaluation
        weights' swap); whether they were kept."""
        if not objective < self.value:  # NaN is never better
            return False
        self.value, self.epoch = float(objective), int(epoch)
        torch._foreach_copy_(self.copy, [t.detach() for t in self.live])
        return True

    def state_dict(self) -> dict:
        return {"value": self.value, "epoch": self.epoch, "weights": [t.clone() for t in self.copy]}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.epoch = float(state["value"]), int(state["epoch"])
        with torch.no_grad():
            torch._foreach_copy_(self.copy, list(state["weights"]))
