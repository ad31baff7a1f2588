"""The plug-in check: a model's contract tried on CPU before Ray starts (`dcnn-ablate ablate` runs it for every
model that is not built in), so a broken plug-in fails in seconds with its name and the cause, not in every
worker.

Above the models and the tasks (it builds a model by its registered spec and batches frames as the atomistic
task does), so dcnn/models/ stays free of task code.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from dcnn.activations import _targets, is_activation, replace_activations
from dcnn.atomistic.dataset import AtomsDataset
from dcnn.atomistic.graph import collate, molecule_graph
from dcnn.atomistic.io import load_atoms
from dcnn.atomistic.task import neighbors_for
from dcnn.models import prepare
from dcnn.models.plugins import ModelPluginError, as_written
from dcnn.registry import get_spec

__all__ = ["check_plugin"]


def _check_graph(dataset: Optional[str], model: nn.Module):
    """The graph a plug-in is checked on: the first two frames of the study's data set (as the task would
    batch them: complete graph for one molecule, radius graph at the model's cutoff otherwise), or a small
    bent molecule without data, in float64."""
    if dataset is None:
        pos = torch.tensor([[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0], [0.3, -0.5, 1.2]]],
                           dtype=torch.float64)
        pos = torch.cat([pos, pos + 0.05 * torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0),
                                                       dtype=torch.float64)])
        return molecule_graph(pos, torch.tensor([8, 1, 1, 6]))
    full: AtomsDataset = load_atoms(dataset)
    ds = full.subset(np.arange(min(2, len(full))))
    graph, _, _ = collate(ds, neighbors_for(ds, model), np.arange(len(ds)), dtype=torch.float64)
    return graph


def check_plugin(name: str, preset: str = "small", sizes: Optional[Mapping[str, Any]] = None,
                 dataset: Optional[str] = None) -> dict:
    """The contract of one model, checked on CPU in float64: builds, placement finds activations, E is
    one finite number per structure and differentiable w.r.t. positions, on a graph of the study's data
    (`dataset`) or a small molecule. Returns what it found; raises ModelPluginError naming the model and
    what broke."""
    spec = get_spec(name)
    where = f"model {name!r}"
    if spec.family != "atomistic":  # a PINN net: built and placed here; its task checks the problem
        model = spec.instantiate(preset, None, **dict(sizes or {}))
        return {"activations": len(_targets(model, "all")), "paper_activations": len(_targets(model, "paper")),
                "n_parameters": sum(p.numel() for p in model.parameters())}

    def build(data):
        try:
            return spec.instantiate(preset, data, **dict(sizes or {}))
        except ModelPluginError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelPluginError(f"{where}: building preset {preset!r} failed: {type(e).__name__}: {e}") from e

    probe = build(None)  # to know its cutoff for the data's graph
    graph = _check_graph(dataset, probe)
    data = {"elements": tuple(sorted({int(z) for z in graph.numbers.tolist()})),
            "n_atoms": int(graph.n_atoms.max())}
    model = build(data)
    types = tuple(spec.activation_types)
    own = as_written(model)  # placement messages in the plug-in's own module paths
    try:
        n_all, n_placed = len(_targets(own, "all")), len(_targets(own, "paper"))
    except ValueError as e:  # a placement path naming a module with parameters
        raise ModelPluginError(f"{where}: {e}") from None
    if n_all == 0 and not n_placed:
        raise ModelPluginError(f"{where}: has no activation module the ablation can swap (swappable: "
                               f"dcnn.activations.get_activation(...) modules, torch.nn activations such as "
                               f"nn.SiLU or nn.Mish, the model's own classes listed in ModelSpec(activation_types="
                               f"(...)), and any module a paper_placement path names; a functional call like "
                               f"F.silu(x) cannot be swapped)")
    for path in own.paper_activation_scope:
        sub = own.get_submodule(path) if path else own
        if list(sub.children()):
            if not any(is_activation(m, types) for m in list(sub.modules())[1:]):
                raise ModelPluginError(f"{where}: paper_placement {path!r} holds no activation module to swap "
                                       f"(found {', '.join(sorted({type(m).__name__ for m in sub.modules()})[:6])}; "
                                       f"name the activation modules themselves, e.g. {path}.1, or list the "
                                       f"model's own activation class in ModelSpec(activation_types=(...)))")
    try:  # a copy is much cheaper than a second build for some models (MACE generates code when built)
        twin = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - a model that cannot be copied is built again
        twin = build(data)
    n_paper = replace_activations(twin, "irelu", "paper").replaced_activations

    model = model.to(torch.float64)
    b = graph.n_structures
    graph = prepare(model, graph)
    pos = graph.positions.detach().clone().requires_grad_(True)
    graph = dataclasses.replace(graph, positions=pos)
    try:
        energy = model(graph)
    except Exception as e:  # noqa: BLE001
        call = ("forward(positions [B, N, 3], numbers [N])" if getattr(model, "dense_layout", False)
                else "forward(graph)")
        raise ModelPluginError(f"{where}: {call} failed on a batch of {b} frames: {type(e).__name__}: {e}") from e
    if not isinstance(energy, torch.Tensor):
        raise ModelPluginError(f"{where}: forward returned {type(energy).__name__}, expected the energy tensor [B]")
    if tuple(energy.shape) != (b,):
        raise ModelPluginError(f"{where}: forward returned shape {tuple(energy.shape)} for {b} frames; "
                               f"expected one energy per frame, shape ({b},)")
    if not torch.isfinite(energy).all():
        raise ModelPluginError(f"{where}: forward returned non-finite energies {energy.tolist()}")
    grad = None
    if energy.requires_grad:
        (grad,) = torch.autograd.grad(energy.sum(), pos, allow_unused=True)
    if grad is None or not torch.any(grad != 0):
        raise ModelPluginError(f"{where}: the energy is not differentiable w.r.t. positions (gradient "
                               f"{'None' if grad is None else 'zero'}); forces are −∂E/∂positions, so the "
                               f"forward must use graph.positions (no .detach(), .numpy(), torch.no_grad() or "
                               f"positions copied into a new tensor)")
    forces = -grad
    if not torch.isfinite(forces).all():
        raise ModelPluginError(f"{where}: non-finite forces (gradient of the energy w.r.t. positions)")
    return {"activations": n_all, "paper_activations": n_paper,
            "n_parameters": sum(p.numel() for p in model.parameters())}
