"""Seed ensembles: S seeds of one arm (same architecture, own weights, own batches) in one energy+force
training step, with `torch.func` (`stack_module_state` + `vmap` over `functional_call`).

Why: a study's arm runs the same small model for several seeds; on a GPU one seed leaves most of the
device idle, and on a CPU each step is dominated by per-op overhead on small tensors.  Stacking the
seeds turns S small ops into one batched op.  Whether that pays on our CPUs is measured by
`benchmarks/bench_ensemble.py` (docs/speed.md): this module is the step that benchmark times and the
tests check against S separate eager steps (energies, forces, parameter gradients, BatchNorm running
statistics, float64).

Forces are −∂E/∂x by `torch.func.vjp` inside the vmapped function (the `autograd.grad` path is not
available under torch.func transforms), and the parameter gradients of the E+F loss by
`torch.func.grad_and_value` around it: the double backward of force training, per seed.  BatchNorm in
train mode normalises with each seed's batch statistics, which come out of the vmapped function and are
folded into that seed's stacked running statistics afterwards (`dcnn.batchnorm`), exactly as S
separate models would update theirs.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vjp, vmap

from dcnn.batchnorm import batch_statistics_as_outputs, fold_running_statistics
from dcnn.models import prepare

__all__ = ["SeedEnsemble"]


class SeedEnsemble:
    """S models of one architecture as stacked parameters ([S, ...] leaf tensors an optimizer steps) and
    stacked buffers, with a vmapped energy+force loss and its gradients."""

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("a seed ensemble needs at least one model")
        shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError("a seed ensemble stacks models of one architecture; their state_dict shapes differ")
        self.size = len(models)
        self.training = models[0].training
        params, buffers = stack_module_state(list(models))
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")  # the structure only; weights come from the stacks
        self.base.train(self.training)
        self.base_like = models[0]  # for `prepare_graph` (index tables from the edges: no weights involved)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def _energy(self, params, buffers, positions, graph):
        return functional_call(self.base, (params, buffers), (dataclasses.replace(graph, positions=positions),))

    def _warm(self, positions: torch.Tensor, graph) -> None:
        """One plain forward of seed 0 before any transform: a model that caches tables on first use would
        otherwise build them inside `grad`, as functorch wrappers that escape their level on the next call."""
        key = (tuple(positions.shape[1:]), positions.device)
        if getattr(self, "_warmed", None) != key:
            with torch.no_grad():
                self._energy({k: v[0] for k, v in self.params.items()},
                             {k: v[0].clone() for k, v in self.buffers.items()}, positions[0], graph)
            self._warmed = key

    def energy_and_forces(self, positions: torch.Tensor, graph):
        """E [S, B] and F [S, A, 3] of each seed on its own batch: `positions` [S, A, 3], one graph structure
        for every seed (`graph`, prepared: its edges and tables; its positions are ignored) — seeds of one
        arm on a molecule data set draw different frames of one molecule, so their graphs differ only in
        positions."""
        graph = prepare(self.base_like, graph)
        self._warm(positions, graph)
        with batch_statistics_as_outputs(self.base) as (layers, sink):

            def one(params, buffers, pos):
                def energy(p):
                    sink.clear()
                    return self._energy(params, buffers, p, graph), tuple(sink)

                e, pullback, stats = vjp(energy, pos, has_aux=True)
                (g,) = pullback(torch.ones_like(e))
                return e, -g, stats

            e, f, stats = vmap(one, in_dims=(0, 0, 0), randomness="different")(self.params, self.buffers, positions)
        self._fold(layers, stats)
        return e, f

    def _fold(self, layers, stats) -> None:
        """Each seed's BatchNorm statistics ([S, C], from its own batch) into its stacked running buffers."""
        names = {m: n for n, m in self.base.named_modules()}
        for layer, (mean, var) in zip(layers, stats):
            prefix = names[layer] + "."
            fold_running_statistics(layer, mean, var, self.buffers[prefix + "running_mean"],
                                    self.buffers[prefix + "running_var"], self.buffers[prefix + "num_batches_tracked"])

    def loss_and_grads(self, positions: torch.Tensor, graph, energies: torch.Tensor, forces: torch.Tensor,
                       force_weight: float):
        """Per seed: L = MAE(E) + β·MAE(F) on its batch (labels as the trainer's, [S, B] and [S, A, 3]),
        its gradient w.r.t. that seed's parameters (a dict of [S, ...] tensors) and the loss [S]."""
        graph = prepare(self.base_like, graph)
        self._warm(positions, graph)
        with batch_statistics_as_outputs(self.base) as (layers, sink):

            def loss(params, buffers, pos, e_label, f_label):
                def energy(p):
                    sink.clear()
                    return self._energy(params, buffers, p, graph), tuple(sink)

                e, pullback, stats = vjp(energy, pos, has_aux=True)
                (g,) = pullback(torch.ones_like(e))
                return (e - e_label).abs().mean() + force_weight * (-g - f_label).abs().mean(), stats

            grads, (value, stats) = vmap(grad_and_value(loss, has_aux=True), in_dims=(0, 0, 0, 0, 0),
                                         randomness="different")(self.params, self.buffers, positions, energies,
                                                                 forces)
        self._fold(layers, stats)
        return value, grads

    def step(self, optimizer: torch.optim.Optimizer, positions, graph, energies, forces,
             force_weight: float) -> torch.Tensor:
        """One training step of every seed (the optimizer holds `parameters()`); returns the losses [S]."""
        value, grads = self.loss_and_grads(positions, graph, energies, forces, force_weight)
        for name, p in self.params.items():
            p.grad = grads[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value.detach()

    def model(self, index: int, like: nn.Module) -> nn.Module:
        """Seed `index`'s weights and buffers copied into `like` (a model of the same architecture)."""
        state = {k: v[index].detach().clone() for k, v in {**self.params, **self.buffers}.items()}
        like.load_state_dict(state)
        return like
