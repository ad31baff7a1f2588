"""Energy models E(positions, numbers) and what the trainer does to them (denormalize, forces).

Built-in models by name (`BUILTIN_SPECS`, the same `ModelSpec` a plug-in brings) and the name → spec lookup the
tasks build with; which task family a model trains in and the plug-in check live above, in dcnn/registry.py
and dcnn/plugin_check.py.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dcnn.models.cgcnn import CGCNN, CGCNN_PRESETS
from dcnn.models.dimenetpp import DIMENETPP_PRESETS, DimeNetPP
from dcnn.models.fcn import FCN, FCN_PRESETS
from dcnn.models.forcenet import FORCENET_PRESETS, ForceNet
from dcnn.models.gemnet_t import GEMNET_T_PRESETS, GemNetT
from dcnn.models.plugins import ModelSpec, UnknownModelError, known_names, resolve
from dcnn.models.schnet import SCHNET_PRESETS, SchNet

# name -> (class, presets, original activation, task family)
MODELS = {"schnet": (SchNet, SCHNET_PRESETS, "ssp", "atomistic"), "cgcnn": (CGCNN, CGCNN_PRESETS, "softplus", "atomistic"),
          "forcenet": (ForceNet, FORCENET_PRESETS, "silu", "atomistic"),
          "dimenetpp": (DimeNetPP, DIMENETPP_PRESETS, "silu", "atomistic"),
          "gemnet_t": (GemNetT, GEMNET_T_PRESETS, "scaled_silu", "atomistic"),
          # the PINN network (task family "pinn", dcnn/pinn): inputs are PDE coordinates, not atoms
          "fcn": (FCN, FCN_PRESETS, "tanh", "pinn")}
MODEL_NAMES = tuple(MODELS)
PRESET_NAMES = ("small", "paper")


def _builtin_spec(name: str, cls, presets: dict, activation: str, family: str) -> ModelSpec:
    """A built-in's ModelSpec, from its class: placement (`paper_activation_scope`), the build arguments the task
    sets (`task_args`) and the values of its sizes (`size_choices`); every number in its presets is a width,
    a count or a length, so positive."""
    numeric = dict.fromkeys(k for p in presets.values() for k, v in p.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool))
    return ModelSpec(cls, presets, activation, cls.paper_activation_scope, name=name, family=family,
                     task_args=cls.task_args, size_choices=getattr(cls, "size_choices", {}),
                     positive_sizes=tuple(numeric))


# one registry path: built-ins are ModelSpecs like plug-ins (dcnn/models/plugins.py)
BUILTIN_SPECS = {name: _builtin_spec(name, cls, presets, act, family)
                 for name, (cls, presets, act, family) in MODELS.items()}

__all__ = ["SchNet", "CGCNN", "ForceNet", "DimeNetPP", "GemNetT", "FCN", "MODELS", "MODEL_NAMES", "PRESET_NAMES", "build_model",
           "default_activation", "denormalize", "energy_and_forces", "prepare",
           "has_normalization", "MAX_Z", "ModelSpec", "get_spec", "model_names", "UnknownModelError"]


def get_spec(name: str) -> ModelSpec:
    """The ModelSpec of a model name: built-in, optional built-in (mace), `module:attr` or entry point."""
    return resolve(name, BUILTIN_SPECS)


def model_names() -> list[str]:
    """Every plain model name (built-ins, optional built-ins, installed entry points) for messages."""
    return known_names(BUILTIN_SPECS)


def default_activation(model: str) -> str:
    """The architecture's own activation (what `activation="original"` means)."""
    return get_spec(model).original_activation


MAX_Z = 100  # the models' element-embedding size: atomic numbers 1..MAX_Z-1 (MoleculeDataset.check_numbers)


def has_normalization(name: str, preset: str = "small", **sizes) -> bool:
    """Whether the built model has a BatchNorm layer for denormalization to remove (else DN is a no-op).
    Remembered per (model, preset, sizes): a study asks several times and some models take seconds to build."""
    key = (name, preset, tuple(sorted(sizes.items())))
    if key not in _HAS_NORMALIZATION:
        model = build_model(name, preset, **sizes)
        _HAS_NORMALIZATION[key] = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return _HAS_NORMALIZATION[key]


_HAS_NORMALIZATION: dict = {}


def build_model(name: str, preset: str = "small", data: dict | None = None, **overrides) -> nn.Module:
    """A model by name from a size preset; `overrides` replace preset sizes (None values ignored);
    `data` ({"elements", "n_atoms"} of the data set) reaches models whose spec asks for it."""
    return get_spec(name).instantiate(preset, data, **overrides)


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


def prepare(model: nn.Module, graph):
    """The graph with the index tables the model derives from its edges (`model.prepare_graph(graph)`:
    triplets for DimeNet++ and GemNet-T), made outside the differentiable step; unchanged for models
    without one, or when they are there already."""
    hook = getattr(model, "prepare_graph", None)
    return graph if hook is None else hook(graph)


def energy_and_forces(model: nn.Module, graph, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """E [B] and F = −∂E/∂positions [A, 3] of an AtomicGraph (dcnn.atomistic.graph): the one place forces
    are made (NequIP's design: models return energy, a generic wrapper takes its gradient); through the edge
    vectors, so periodic images get their forces too.  `create_graph=True` when F enters a training loss."""
    graph = prepare(model, graph)
    with torch.enable_grad():
        if not graph.positions.requires_grad:
            graph = dataclasses.replace(graph, positions=graph.positions.detach().requires_grad_(True))
        energy = model(graph)
        (grad,) = torch.autograd.grad(energy.sum(), graph.positions, create_graph=create_graph)
    return energy, -grad
