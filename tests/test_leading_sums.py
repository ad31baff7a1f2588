"""dcnn/leading_sums.py: which sums the post-grad pass sends to ATen, that inductor really calls it in the
forward and the backward it compiles, and that the values do not move."""
import copy

import torch
from torch._inductor.utils import run_and_get_code
from torch.fx.experimental.proxy_tensor import make_fx

from conftest import positions
from dcnn.atomistic.graph import molecule_graph
from dcnn.compiled import EnergyForces
from dcnn.leading_sums import MIN_WIDTH, LeadingSumsToATen, is_leading_sum
from dcnn.models import build_model, energy_and_forces, prepare


def _sum_nodes(fn, *args):
    graph = make_fx(fn)(*args).graph
    return [n for n in graph.nodes if n.target is torch.ops.aten.sum.dim_IntList]


def test_only_wide_leading_float_sums_are_chosen():
    wide, narrow = torch.randn(50, MIN_WIDTH), torch.randn(50, MIN_WIDTH // 2)
    chosen = lambda fn, x: [is_leading_sum(n) for n in _sum_nodes(fn, x)]  # noqa: E731
    assert chosen(lambda x: x.sum(0), wide) == [True]
    assert chosen(lambda x: x.sum(0, keepdim=True), wide) == [True]
    assert chosen(lambda x: x.view(5, 10, -1).sum((0, 1)), wide) == [True]
    assert chosen(lambda x: x.sum(-1), wide) == [False]  # the contiguous one: inductor's loop is good
    assert chosen(lambda x: x.sum((0, 1)), wide) == [False]
    assert chosen(lambda x: x.sum(0), narrow) == [False]
    assert chosen(lambda x: x.sum(0, dtype=torch.float64), wide) == [False]


def test_the_pass_rewrites_and_keeps_values():
    x = torch.randn(40, MIN_WIDTH, dtype=torch.float64)
    gm = make_fx(lambda x: (x.sum(0, keepdim=True) * x).sum(0) + x.sum(-1).sum())(x)
    LeadingSumsToATen()(gm.graph)
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.dcnn.sum_leading.default) == 2
    assert targets.count(torch.ops.aten.sum.dim_IntList) == 1  # the sum over the last dimension
    expected = (x.sum(0, keepdim=True) * x).sum(0) + x.sum(-1).sum()
    torch.testing.assert_close(gm(x), expected, rtol=1e-12, atol=1e-12)


def test_inductor_calls_aten_in_forward_and_backward():
    """A Linear with bias on rows of variable count (dynamic shapes, as periodic batches): its bias gradient
    is a sum over the rows.  Compiled with the pass, the generated code calls `dcnn.sum_leading` and the
    gradients equal eager's."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, MIN_WIDTH, dtype=torch.float64)

    def loss(x, w, b):
        h = torch.nn.functional.linear(x, w, b)
        mean = h.sum(0) / h.shape[0]  # a batch statistic over the rows, as BatchNorm's
        return (torch.sigmoid(h - mean) * h).sum()

    compiled = torch.compile(loss, dynamic=True, fullgraph=True,
                             options={"post_grad_custom_post_pass": LeadingSumsToATen(), "fx_graph_cache": False})
    for rows in (300, 301):
        x = torch.randn(rows, 16, dtype=torch.float64)
        params = (lin.weight, lin.bias)
        expected = torch.autograd.grad(loss(x, *params), params)

        def step():
            return torch.autograd.grad(compiled(x, *params), params)

        got, code = run_and_get_code(step)
        if rows == 300:  # the first call compiles the forward and the backward: both use the op
            assert len(code) == 2 and all("dcnn.sum_leading" in c for c in code)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_cgcnn_compiled_step_uses_it_and_equals_eager(ethanol):
    """CGCNN's edge pre-activations are 2·embedding wide: at embedding 64 (`small`'s) their BatchNorm
    statistics and bias gradients are the sums the pass sends to ATen.  The compiled energy+force step (real
    inductor, float64) calls the op and gives eager's E, F and parameter gradients."""
    torch.manual_seed(0)
    model = build_model("cgcnn", "small", embedding=MIN_WIDTH // 2, convs=1, fc=8, fc_layers=2,
                        gaussians=6).double().train()
    eager = copy.deepcopy(model)
    graph = prepare(model, molecule_graph(positions(ethanol, 3), torch.as_tensor(ethanol.numbers)))
    compiled = EnergyForces(model, backend="inductor", records=None)
    (e, f), code = run_and_get_code(lambda: compiled(graph))
    assert compiled.failed is None
    assert any("dcnn.sum_leading" in c for c in code)
    e0, f0 = energy_and_forces(eager, graph, create_graph=True)
    torch.testing.assert_close(e, e0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f, f0, rtol=1e-9, atol=1e-10)
    gen = torch.Generator().manual_seed(1)
    we, wf = torch.randn(e0.shape, generator=gen, dtype=e0.dtype), torch.randn(f0.shape, generator=gen, dtype=f0.dtype)
    params = list(model.parameters())
    g = torch.autograd.grad((we * e).sum() + (wf * f).sum(), params)
    g0 = torch.autograd.grad((we * e0).sum() + (wf * f0).sum(), list(eager.parameters()))
    scale = max(float(x.abs().max()) for x in g0)
    for x, x0 in zip(g, g0):  # relative to the largest gradient (BatchNorm'd biases have ~0 gradient)
        assert float((x - x0).abs().max()) <= 1e-9 * scale
