"""Energy models E(positions, numbers) and what the trainer does to them (denormalize, forces)."""
from __future__ import annotations

import torch
from torch import nn

from dcnn.models.cgcnn import CGCNN, CGCNN_PRESETS
from dcnn.models.dimenetpp import DIMENETPP_PRESETS, DimeNetPP
from dcnn.models.fcn import FCN, FCN_PRESETS
from dcnn.models.forcenet import FORCENET_PRESETS, ForceNet
from dcnn.models.schnet import SCHNET_PRESETS, SchNet

MODELS = {"schnet": (SchNet, SCHNET_PRESETS, "ssp"), "cgcnn": (CGCNN, CGCNN_PRESETS, "softplus"),
          "forcenet": (ForceNet, FORCENET_PRESETS, "silu"), "dimenetpp": (DimeNetPP, DIMENETPP_PRESETS, "silu"),
          # the PINN network (task family "pinn", dcnn/pinn): inputs are PDE coordinates, not atoms
          "fcn": (FCN, FCN_PRESETS, "tanh")}
MODEL_NAMES = tuple(MODELS)
PRESET_NAMES = ("small", "paper")

__all__ = ["SchNet", "CGCNN", "ForceNet", "DimeNetPP", "FCN", "MODELS", "MODEL_NAMES", "PRESET_NAMES", "build_model",
           "default_activation", "denormalize", "energy_and_forces",
           "has_normalization", "MAX_Z"]


def default_activation(model: str) -> str:
    """The architecture's own activation (what `activation="original"` means)."""
    return MODELS[model][2]


MAX_Z = 100  # the models' element-embedding size: atomic numbers 1..MAX_Z-1 (MoleculeDataset.check_numbers)


def has_normalization(name: str, preset: str = "small", **sizes) -> bool:
    """Whether the built model has a BatchNorm layer for denormalization to remove (else DN is a no-op)."""
    model = build_model(name, preset, **sizes)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def build_model(name: str, preset: str = "small", **overrides) -> nn.Module:
    """A model by name from a size preset; `overrides` replace preset sizes (None values ignored)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    cls, presets, _ = MODELS[name]
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(presets)}")
    sizes = dict(presets[preset])
    unknown = set(overrides) - set(sizes)
    if unknown:
        raise ValueError(f"unknown size(s) {sorted(unknown)} for {name}; known: {', '.join(sizes)}")
    sizes.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**sizes)


def denormalize(model: nn.Module) -> int:
    """Replace every BatchNorm layer by Identity (the paper's "denormalization"); return how many."""
    count = 0
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, child_name, nn.Identity())
                count += 1
    model.denormalized_layers = count
    return count


def energy_and_forces(model: nn.Module, positions: torch.Tensor, numbers: torch.Tensor,
                      create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """E [B] and F = −∂E/∂positions [B, N, 3]; `create_graph=True` when F enters a training loss."""
    with torch.enable_grad():
        if not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        energy = model(positions, numbers)
        (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
    return energy, -grad
