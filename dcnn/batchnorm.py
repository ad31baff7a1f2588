"""BatchNorm in functional training steps (the traced/compiled step of `dcnn.compiled`, the vmapped seed
ensemble of `dcnn.ensemble`).

A BatchNorm in train mode updates its running statistics in place, which `torch.func` transforms refuse
(a mutated captured tensor) and a traced graph should not contain.  Inside `batch_statistics_as_outputs`
every such layer normalises with its batch statistics *without* touching its buffers
(`track_running_stats=False`), while a pre-hook collects the (mean, unbiased variance) the layer would
have folded in; the caller returns them from its function and `fold_running_statistics` applies eager
BatchNorm's momentum update afterwards, so the running statistics equal eager's (tested in both users).
CGCNN's masked BatchNorm (statistics over the pairs inside the cutoff) is handled through its own
`batch_statistics`.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["batchnorms", "batch_statistics", "batch_statistics_as_outputs", "fold_running_statistics"]


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batch_statistics(module: nn.Module, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) a BatchNorm in train mode folds into its running statistics."""
    x = args[0]
    weight = args[1] if len(args) > 1 else None
    if weight is not None and hasattr(module, "batch_statistics"):  # CGCNN's masked BatchNorm
        mean, var, count = module.batch_statistics(x, weight)
    else:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        # the sample count as a tensor from the data (not torch.tensor of a size: a symbolic size while
        # dcnn.compiled traces for batches of any size must stay symbolic)
        count = x.new_ones(()).expand(x.shape[0]).sum() * (x.numel() // (x.shape[0] * x.shape[1]))
    unbiased = var * (count / (count - 1).clamp(min=1.0))
    return mean.detach(), unbiased.detach()


@contextmanager
def batch_statistics_as_outputs(model: nn.Module):
    """Yields (layers, sink): the train-mode BatchNorm layers that track statistics, and a list that each
    forward pass fills with their (mean, variance) in call order (clear it at the start of the function)."""
    layers = [m for m in batchnorms(model) if m.training and m.track_running_stats]
    sink: list = []
    handles = [m.register_forward_pre_hook(lambda module, args: sink.append(batch_statistics(module, args)))
               for m in layers]
    for m in layers:
        m.track_running_stats = False  # normalise with batch statistics, leave the buffers alone
        if not hasattr(m, "batch_statistics"):  # a plain BatchNorm: its formula in plain ops (see below)
            m.forward = _batch_norm_in_plain_ops.__get__(m)
    try:
        yield layers, sink
    finally:
        for m in layers:
            m.track_running_stats = True
            m.__dict__.pop("forward", None)
        for h in handles:
            h.remove()


def _batch_norm_in_plain_ops(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Train-mode BatchNorm with batch statistics, as mean/var/rsqrt: the same function as
    `F.batch_norm(training=True)`.  While `dcnn.compiled` traces with symbolic sizes, aten's fused
    native_batch_norm's backward (traced by AOT autograd) pins the batch dimension to the traced batch's size,
    so every batch of another size recompiled; these ops keep it symbolic."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    var, mean = torch.var_mean(x, dims, unbiased=False, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y


@torch.no_grad()
def fold_running_statistics(layer: nn.Module, mean: torch.Tensor, var: torch.Tensor, running_mean: torch.Tensor,
                            running_var: torch.Tensor, num_batches_tracked: torch.Tensor) -> None:
    """Eager BatchNorm's update, in place on the given buffers (a layer's own, or a seed ensemble's
    stacked [S, C] ones with mean/var [S, C] and num_batches_tracked [S])."""
    num_batches_tracked += 1
    if layer.momentum is None:  # cumulative average: 1 / batches seen (the same count for every seed)
        momentum = 1.0 / float(num_batches_tracked.reshape(-1)[0])
    else:
        momentum = layer.momentum
    running_mean.mul_(1 - momentum).add_(momentum * mean)
    running_var.mul_(1 - momentum).add_(momentum * var)
