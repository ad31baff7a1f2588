"""An inductor post-grad pass for the compiled training step: sums over leading dimensions run as ATen's
kernel, not as inductor's generated loop.

Why: inductor's C++ backend (torch 2.13) writes a reduction over the rows of a row-major [N, D] tensor —
`x.sum(0)`, what every bias gradient, BatchNorm statistic and LayerNorm weight gradient of an edge or atom
tensor is — as a loop over the D columns outside a loop over the N rows, so each vector load strides
D floats through memory and the tensor is read through the cache up to 16 times.  Measured (2026-12-07, 2
cores AMD EPYC, one thread, `sigmoid(x * y).sum(0)`, [60,000, 32]): 6.2 ms as inductor fuses it, 3.1 ms as
the element-wise kernel followed by ATen's row-order sum (1.04–2.0× faster at every size from [1,000, 32]
to [60,000, 128]); in the energy+force training step on mlearn Mo batches: docs/speed.md.  The pass
rewrites those nodes into `dcnn::sum_leading`, an opaque op inductor runs as an extern ATen call; the sums
over the last dimension (contiguous: inductor's loops are good there) are left alone, and so are rows
narrower than `MIN_WIDTH`: applied to every leading sum, the compiled steps of SchNet, ForceNet and DimeNet++
(`small`: 32–64 wide) moved by −5 to +4 % (a control A/B of identical twins: −2 %), CGCNN's (128-wide edge
rows: BatchNorm statistics, bias gradients) gained 16–17 % (docs/speed.md).

It is handed to `torch.compile(options=...)` by `dcnn.compiled.EnergyForces`, so it applies to our graphs
(forward and backward) only, and its `uuid` enters inductor's cache key: graphs compiled without it are
not reused.  The values are the same sums (ATen's own kernel: eager's), so compiled and eager steps agree
as before (tests/test_compiled.py, tests/test_leading_sums.py).
"""
from __future__ import annotations

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch.fx.experimental.symbolic_shapes import optimization_hint

aten = torch.ops.aten

MIN_WIDTH = 128  # rows narrower than this keep inductor's loop (measured: no gain there; docstring above)


@torch.library.custom_op("dcnn::sum_leading", mutates_args=())
def sum_leading(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    """x.sum(dims, keepdim), as ATen computes it (an op inductor cannot fuse, so it calls this)."""
    return x.sum(dims, keepdim=keepdim)


@sum_leading.register_fake
def _(x: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    return x.sum(dims, keepdim=keepdim)


def is_leading_sum(node: torch.fx.Node) -> bool:
    """A floating-point `aten.sum.dim_IntList` over dimensions that exclude the last one, of rows at least
    `MIN_WIDTH` wide, with no dtype change: the reductions inductor's C++ loops stride through where it costs."""
    if node.op != "call_function" or node.target is not aten.sum.dim_IntList or node.kwargs.get("dtype"):
        return False
    x, dims = node.args[0], node.args[1]
    value = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    if value is None or not value.is_floating_point() or not dims:
        return False
    n = value.dim()
    # a symbolic width (a traced parameter's size) is judged by its example value: either way the sum is exact
    wide = optimization_hint(value.shape[-1], fallback=0) >= MIN_WIDTH if n else False
    return n >= 2 and wide and all(d % n != n - 1 for d in dims)


class LeadingSumsToATen(CustomGraphPass):
    """The post-grad pass: every `is_leading_sum` node becomes `dcnn::sum_leading`."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in list(graph.find_nodes(op="call_function", target=aten.sum.dim_IntList)):
            if is_leading_sum(node):
                keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
                node.target = torch.ops.dcnn.sum_leading.default
                node.args, node.kwargs = (node.args[0], list(node.args[1]), bool(keepdim)), {}

    def uuid(self) -> bytes:
        return get_hash_for_files((__file__,))
