"""Fully connected PINN network as in the paper's PINN experiments (DeepXDE's FNN): `hidden_layers`
hidden layers of `hidden` units, Glorot-normal weights, zero biases, tanh, and optionally BatchNorm after
each hidden activation (the official code's `--batchnorm`; what DN removes).

Inputs are mapped affinely from the problem's box [lower, upper] to [−1, 1]² inside the model, so one
initialisation suits domains like t ∈ [0, 5]; derivatives w.r.t. the physical inputs include that map
through autograd.
"""
from __future__ import annotations

import torch
from torch import nn

FCN_PRESETS = {
    "small": {"hidden": 40, "hidden_layers": 6, "batchnorm": True},
    "paper": {"hidden": 40, "hidden_layers": 6, "batchnorm": True},
}


class FCN(nn.Module):
    # the paper replaces the activation of every hidden layer
    paper_activation_scope = ("",)
    task_args = ("in_dim", "out_dim", "lower", "upper")  # the PDE problem's, set by the PINN task

    def __init__(self, hidden: int = 40, hidden_layers: int = 6, batchnorm: bool = True, in_dim: int = 2,
                 out_dim: int = 1, lower=None, upper=None):
        super().__init__()
        lower = torch.as_tensor(lower if lower is not None else [-1.0] * in_dim, dtype=torch.float64)
        upper = torch.as_tensor(upper if upper is not None else [1.0] * in_dim, dtype=torch.float64)
        if lower.shape != (in_dim,) or upper.shape != (in_dim,) or not bool((upper > lower).all()):
            raise ValueError(f"FCN: lower/upper must be {in_dim} bounds with upper > lower, got {lower}, {upper}")
        self.register_buffer("center", (upper + lower) / 2)
        self.register_buffer("half_width", (upper - lower) / 2)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(hidden_layers):
            lin = nn.Linear(width, hidden)
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.Tanh()]
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden))
            width = hidden
        out = nn.Linear(width, out_dim)
        nn.init.xavier_normal_(out.weight)
        nn.init.zeros_(out.bias)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.net((X - self.center) / self.half_width)
