"""The shape of a training loss term: the paper's L1, the MSE of MACE and NequIP, or Huber (MACE's for
OC-style data).  One function, so every task family computes its terms alike.

Why a choice: L1 gives every structure the same pull whatever its error, so a minority the model fits badly
(the 9 surface slabs among mlearn Mo's 194 training cells) pulls no harder than any bulk cell, and a
mean-absolute optimum can leave it badly fitted; a squared loss weighs large errors more.  Which trains better
is measured, per data set (data/README.md, the mlearn studies in search_spaces/studies/).
"""
from __future__ import annotations

import torch
from torch.nn import functional

__all__ = ["loss_term"]


def loss_term(kind: str, prediction: torch.Tensor, target: torch.Tensor, delta: float = 0.01) -> torch.Tensor:
    """Mean of the elementwise loss `kind` ("l1", "mse", "huber" with switch `delta`, in the tensors' units)."""
    if kind == "l1":
        return (prediction - target).abs().mean()
    if kind == "mse":
        return (prediction - target).square().mean()
    if kind == "huber":
        return functional.huber_loss(prediction, target, delta=delta)
    raise ValueError(f"loss {kind!r} is not one of l1, mse, huber")
