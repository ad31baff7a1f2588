"""Activation-aware, data-dependent initialisation: `init = default | lsuv` (a study factor like DN and LR).

Why: an integrated activation squares its input's scale.  For φ = ½·relu², z ~ N(0, q): E[φ(z)²] = 3q²/8,
so a stack of Linear + φ layers maps q → (3σ_w²/8)·q², an unstable fixed point: from a standard (Glorot,
He) initialisation the scale collapses or explodes doubly exponentially with depth (a 6-layer PINN
outputs ≈ 0; DimeNet++'s three output layers take activations from 12 to 4.6e4).  An arm that swaps the
activation *and* starts from a wildly different activation scale does not measure the activation.
LSUV (layer-sequential unit variance, Mishkin & Matas, ICLR 2016) removes that confound: after the
activations are swapped and BatchNorm removed, one training batch is passed through the model and, layer
by layer in forward order, each `nn.Linear`'s weights are scaled so its output has unit variance on that
batch (iterated to a tolerance, since later layers see the earlier ones' new scales).

The readouts (layers with one output: per-atom energies summed into E; or the layer whose output is the
model's, a PINN's u) start at zero, as DimeNet++'s output layers do by design.  Why: with every hidden
layer at unit scale a readout's initial output is O(1), while label rescaling makes the force labels
≈ 1e-3 (ethanol, C = 1e4): measured initial F' std 1.6 (SchNet), 1.5 (ForceNet), 2.8 (GemNet-T) against
labels 2.3e-3, an output-scale artefact as large as the activation's.  From zero, no arm's start depends
on its activation or its labels' scale; the readout's first steps grow it to the labels (it does not
undo LR: without LR the labels are C times larger and the readout has that much farther to grow).

It needs no model-specific code (forward hooks on `nn.Linear`), so it applies to every built-in model
and to plug-ins.  Left alone: hidden layers whose output has zero variance on the batch, and layers the
forward pass never calls as modules (a model that uses a layer's weights directly).  The batch is drawn with its own
generator seeded from the trial seed, so neither the training order nor the global RNG changes: an LSUV
arm differs from its default twin only by the weights' scales.  Running statistics of BatchNorm layers
are restored after the passes.  The scales are in the model's weights, hence in every checkpoint; a
resumed trial recomputes them (deterministically) and then loads the checkpoint's weights.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

__all__ = ["INIT_MODES", "initialise_", "lsuv_", "LSUV_TOLERANCE", "LSUV_MAX_ITER", "INIT_BATCHES"]

INIT_MODES = ("default", "lsuv")  # default: the architecture's own initialisation
LSUV_TOLERANCE = 0.1  # |Var − 1| accepted (Mishkin & Matas' t_Var)
LSUV_MAX_ITER = 10  # rescaling passes per layer (their T_max)
INIT_BATCHES = 16  # training batches a model's own data-dependent init sees (fairchem fits on 16)


class _Stop(Exception):
    """Raised by a forward hook once the layer under fit has produced its output: the rest of the
    forward pass is not needed for that layer (LSUV costs ≈ one forward per layer, not per model)."""


def _restore_batchnorm(model: nn.Module):
    """Snapshot of every BatchNorm's running statistics, and a function that puts them back."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in bns]

    def restore():
        with torch.no_grad():
            for m, buffers in zip(bns, saved):
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)

    return restore


@torch.no_grad()
def lsuv_(model: nn.Module, forward: Callable[[], object], tolerance: float = LSUV_TOLERANCE,
          max_iter: int = LSUV_MAX_ITER) -> dict:
    """Scale each hidden `nn.Linear` of `model` in forward order so its output variance on the batch that
    `forward()` runs is 1, and zero the readouts; returns {"layers": n scaled, "skipped": n, "scales":
    {path: factor}, "readouts_zeroed": [path]}.

    `forward` runs the model on one fixed training batch (the task provides it); it is called about
    once per layer and iteration, each call stopping at the layer being fitted."""
    restore = _restore_batchnorm(model)
    linears = {m: name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    order: list[nn.Linear] = []  # forward order, from one full pass
    outputs: dict = {}

    def record(module, args, output):
        if module not in order:
            order.append(module)
            outputs[module] = output

    handles = [m.register_forward_hook(record) for m in linears]
    try:
        result = forward()
    finally:
        for h in handles:
            h.remove()
    # readouts: scalar outputs (per-atom energies summed into E) and the layer whose output is the model's
    readouts = [m for m in order if m.out_features == 1 or outputs[m] is result]
    outputs.clear()
    scales, skipped = {}, 0
    for layer in order:
        if layer in readouts:
            continue
        seen: dict = {}

        def capture(module, args, output):
            seen["var"] = float(output.detach().to(torch.float64).var())
            raise _Stop

        handle = layer.register_forward_hook(capture)
        total, fitted = 1.0, False
        try:
            for _ in range(max_iter):
                seen.clear()
                try:
                    forward()
                except _Stop:
                    pass
                var = seen.get("var", math.nan)
                if not math.isfinite(var) or var <= 0.0:
                    break  # zero output (zero-initialised) or not reached: left as built
                fitted = True
                if abs(var - 1.0) < tolerance:
                    break
                # weight and bias together: the output scales by exactly `factor` (one pass usually suffices)
                factor = 1.0 / math.sqrt(var)
                layer.weight.mul_(factor)
                if layer.bias is not None:
                    layer.bias.mul_(factor)
                total *= factor
        finally:
            handle.remove()
        if fitted:
            scales[linears[layer]] = total
        else:
            skipped += 1
    for layer in readouts:  # start every arm from E = F = 0 (u = 0): see the module docstring
        layer.weight.zero_()
        if layer.bias is not None:
            layer.bias.zero_()
    restore()
    return {"layers": len(scales), "skipped": skipped, "scales": scales,
            "readouts_zeroed": [linears[m] for m in readouts]}


def initialise_(model: nn.Module, mode: str, forwards: list[Callable[[], object]]) -> dict:
    """A trial's initialisation, after the activations are swapped and BatchNorm removed: the model's own
    data-dependent initialisation if it has one (a `data_init_(forwards)` method: GemNet-T fits its scale
    factors, as fairchem does), then LSUV on the first batch (mode "lsuv"), in forward order over the
    final network, so every hidden Linear ends at unit variance whatever the factors did.  `forwards`: calls
    that each run the model on one training batch (seeded; the task builds them).  Returns what was done,
    for the trial's record (`Task.info`, the checkpoint)."""
    if mode not in INIT_MODES:
        raise ValueError(f"init={mode!r}; choose one of {', '.join(INIT_MODES)}")
    info: dict = {"init": mode}
    own = getattr(model, "data_init_", None)
    if callable(own):
        with torch.no_grad():
            info["fitted_scale_factors"] = own(forwards)
    if mode == "lsuv":
        done = lsuv_(model, forwards[0])
        info.update(lsuv_layers=done["layers"], lsuv_skipped=done["skipped"], lsuv_scales=done["scales"],
                    lsuv_readouts_zeroed=done["readouts_zeroed"])
    return info
