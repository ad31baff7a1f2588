"""CGCNN (dcnn/models/cgcnn.py) on the graph layout: equal to the dense model it replaced, symmetric,
conservative, local, physical on periodic cells (intensive with the paper's mean readout, extensive with
the sum readout), its BatchNorm statistics over real edges only."""
import importlib

import numpy as np
import pytest
import torch

from dcnn.activations import replace_activations
from dcnn.atomistic.dataset import AtomsDataset
from dcnn.atomistic.graph import collate
from dcnn.atomistic.neighbors import DatasetNeighbors
from dcnn.atomistic.molecules import load_dataset
from dcnn.models import build_model, denormalize, energy_and_forces, get_spec
from dcnn.models.cgcnn import CGCNN, CGCNN_PRESETS, MaskedBatchNorm1d
from conftest import (assert_batch_of_one, assert_periodic_physics, assert_symmetries, atoms_graph,
                      central_difference_forces, dense_ef, dense_energy, positions, slab_with_adsorbate)

Z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol, MD17 order
CUTOFF = CGCNN_PRESETS["small"]["cutoff"]
SIZES = {k: v for k, v in CGCNN_PRESETS["small"].items() if k != "readout"}  # the legacy model has no readout
MODELS = [("original", "mean"), ("igelu", "mean"), ("original", "sum")]


def make(act="original", readout="mean", seed=0):
    torch.manual_seed(seed)
    m = CGCNN(**SIZES, readout=readout)
    if act != "original":
        replace_activations(m, act, "all")
    return m.double().eval()


# -- the dense model it replaced (tests/legacy_dense), same weights -------------------------------------------
def bn_inputs(model):
    """Hooks recording what every (masked) BatchNorm of `model` normalizes: a list of (x, weight) per call."""
    seen = []
    for conv in model.convs:
        conv.bn.register_forward_pre_hook(lambda mod, args: seen.append((args[0].detach(), args[1])))
    return seen


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("graph_kind", ["complete", "radius"])
@pytest.mark.parametrize("molecule", ["ethanol", "aspirin"])
def test_graph_cgcnn_equals_the_dense_cgcnn_it_replaced(molecule, graph_kind, train):
    """float64, same weights (the legacy state_dict loads as it is): E and F to 1e-10 on a complete graph
    and on a radius graph at the cutoff (aspirin has pairs beyond 6 Å); in train mode too, where the
    BatchNorm statistics over the edges inside the cutoff must equal the dense model's masked pairs'."""
    ds = AtomsDataset.from_molecule(load_dataset(molecule).subset(np.arange(6)))
    torch.manual_seed(0)
    graph_model = build_model("cgcnn", "small").double().train(train)
    dense = importlib.import_module("legacy_dense.cgcnn").CGCNN(**SIZES)
    dense = dense.double().train(train)
    dense.load_state_dict(graph_model.state_dict())  # strict: same names and shapes
    graph_model.load_state_dict(dense.state_dict())
    neighbors = DatasetNeighbors.complete(ds) if graph_kind == "complete" else DatasetNeighbors.compute(ds, CUTOFF)
    graph, _, _ = collate(ds, neighbors, np.arange(6), dtype=torch.float64)
    seen_graph, seen_dense = bn_inputs(graph_model), bn_inputs(dense)
    e, f = energy_and_forces(graph_model, graph, create_graph=False)
    n = int(ds.n_atoms[0])
    pos = torch.as_tensor(ds.positions.reshape(6, n, 3)).clone().requires_grad_(True)
    e0 = dense(pos, torch.as_tensor(ds.numbers[:n]))
    (g,) = torch.autograd.grad(e0.sum(), pos)
    torch.testing.assert_close(e.detach(), e0.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(f.reshape(6, n, 3), -g, rtol=0, atol=1e-10)
    if train:
        assert len(seen_graph) == len(seen_dense) == 3
        for (x, w), (x0, w0) in zip(seen_graph, seen_dense):
            assert int(w.sum()) == int(w0.sum())  # the same edges inside the cutoff
            for a, b in zip(MaskedBatchNorm1d.batch_statistics(x, w), MaskedBatchNorm1d.batch_statistics(x0, w0)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        state, state0 = graph_model.state_dict(), dense.state_dict()
        for k in (k for k in state if "running" in k):  # the running statistics folded in alike
            torch.testing.assert_close(state[k], state0[k], rtol=0, atol=1e-12)
    if graph_kind == "radius":
        assert all(bool(w.all()) for _, w in seen_graph)  # a radius graph at the cutoff: every edge counts
        if molecule == "aspirin":
            assert neighbors.n_edges.min() < n * (n - 1)  # some pairs beyond the cutoff: a real radius graph


# -- symmetries, conservation, locality ----------------------------------------------------------------------
@pytest.mark.parametrize("act,readout", MODELS)
def test_energy_invariant_forces_equivariant(act, readout, ethanol):
    assert_symmetries(make(act, readout), positions(ethanol), Z)


@pytest.mark.parametrize("act,readout", MODELS)
def test_forces_are_central_differences_of_energy(act, readout, ethanol):
    m = make(act, readout)
    pos = positions(ethanol, 1)
    _, f = dense_ef(m, pos, Z, False)
    torch.testing.assert_close(f, central_difference_forces(m, pos, Z), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("act,readout", MODELS)
def test_batch_of_one_equals_same_molecule_in_batch(act, readout, ethanol):
    assert_batch_of_one(make(act, readout), positions(ethanol, 5), Z)


@pytest.mark.parametrize("readout", ["mean", "sum"])
def test_energy_smooth_at_cutoff(readout):
    """Atom 2 moves away from atom 0 (atom 1 sits at +1 Å) and its last pair leaves at d = 6, the cutoff: E
    continuous there and constant beyond (its messages switched off exactly), F → 0 (C¹ envelope: F
    falls linearly to 0 at the cutoff, so 1e-3 Å inside it is O(1e-4))."""
    m = make(readout=readout)
    z = torch.tensor([6, 8, 1])
    d = torch.tensor([5.999, 6.0, 6.001, 7.0, 20.0], dtype=torch.float64)
    pos = torch.zeros(5, 3, 3, dtype=torch.float64)
    pos[:, 1, 0] = 1.0
    pos[:, 2] = d[:, None] * torch.tensor([-0.96, 0.28, 0.0], dtype=torch.float64)  # |x_2 − x_0| = d
    e, f = dense_ef(m, pos, z, False)
    assert abs(e[0] - e[1]) < 1e-6
    torch.testing.assert_close(e[1:], e[1].expand(4), rtol=0, atol=1e-12)  # rows round apart, not more
    assert f[1:, 2].abs().max() < 1e-12 and f[0, 2].abs().max() < 1e-3
    assert e[0] != e[4]  # atom 2 did interact inside


# -- periodic cells and the readout --------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["original", "igelu"])
@pytest.mark.parametrize("readout", ["mean", "sum"])
def test_cgcnn_on_periodic_cells(readout, act):
    """Translation + wrap, rotation, supercells, forces = central differences across the boundary, a cell
    smaller than the cutoff (tests/conftest.py assert_periodic_physics): the mean readout (the paper's)
    gives an intensive energy, the sum readout an extensive one."""
    assert_periodic_physics(make(act, readout), cutoff=CUTOFF, intensive=readout == "mean")


def test_readout_option():
    """'mean' is the default (the paper's); 'sum' uses the same parameters (a state_dict loads across) but
    is another function, E = Σ_i head(v_i); anything else is refused."""
    assert build_model("cgcnn", "small").readout == "mean"
    mean, total = make(readout="mean"), make(readout="sum")
    total.load_state_dict(mean.state_dict())
    pos = positions(load_dataset("ethanol"), 2)
    e_mean, e_sum = dense_energy(mean, pos, Z), dense_energy(total, pos, Z)
    assert not torch.allclose(e_mean, e_sum)
    v = {}
    mean.convs[-1].register_forward_hook(lambda mod, args, out: v.setdefault("v", out))
    dense_energy(mean, pos, Z)
    per_atom = mean.head(v["v"]).view(2, 9).sum(1)
    torch.testing.assert_close(e_sum, per_atom.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(e_mean, mean.head(v["v"].view(2, 9, -1).mean(1)).squeeze(-1).detach(), rtol=0,
                               atol=1e-12)
    with pytest.raises(ValueError, match="readout"):
        CGCNN(readout="max")


# -- BatchNorm -----------------------------------------------------------------------------------------------
def test_denormalize_counts_and_removes_batchnorm(ethanol):
    cg = build_model("cgcnn", "small")
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in cg.modules()) == 3
    assert denormalize(cg) == 3
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in cg.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in cg.modules())  # LayerNorm stays
    cg = cg.double()
    pos = positions(ethanol, 3)
    torch.testing.assert_close(dense_energy(cg.train(), pos, Z), dense_energy(cg.eval(), pos, Z), rtol=0, atol=0)


def test_paper_preset():
    assert build_model("cgcnn", "paper").embedding.embedding_dim == 512


def test_cgcnn_batchnorm_statistics_ignore_pairs_beyond_the_cutoff():
    """Train-mode BatchNorm must normalize over pairs inside the cutoff only (OCP's radius-graph edges)."""
    torch.manual_seed(0)
    x = torch.randn(12, 4, dtype=torch.float64)
    inside = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1], dtype=torch.bool)
    bn, ref = MaskedBatchNorm1d(4).double(), torch.nn.BatchNorm1d(4).double()
    out = bn(x, inside)
    expected = ref(x[inside])  # plain BatchNorm on the inside rows alone
    assert torch.allclose(out[inside], expected, atol=1e-12)
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-12)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-12)
    bn.eval()
    assert torch.allclose(bn(x, inside), torch.nn.functional.batch_norm(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))

    # in the model, on a complete graph: a far atom's edges are excluded from the statistics
    model = build_model("cgcnn", cutoff=3.0).double().train()
    seen = []
    model.convs[0].bn.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    pos = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0, 1.2, 0], [20.0, 0, 0]]], dtype=torch.float64)
    dense_energy(model, pos, torch.tensor([6, 1, 8, 1]))
    (weight,) = seen
    assert weight.shape == (12,) and int(weight.sum()) == 6  # 3 close atoms: 6 ordered pairs inside


def test_cgcnn_batchnorm_statistics_over_real_edges_of_a_periodic_slab():
    """A Cu slab with an adsorbate and an H 8 Å above it (no neighbour within the cutoff, periodic images
    included), on a radius graph wider than the cutoff (9 Å: the H's edges are there, all beyond 6 Å).
    In train mode every BatchNorm normalizes over exactly the edges inside the cutoff — its output on them
    is a plain BatchNorm1d's on those rows alone, its running statistics too — so E and F equal those on
    the radius graph at the cutoff, where the H has no edge at all."""
    from ase import Atoms

    slab = slab_with_adsorbate(size=(3, 3, 3))  # cell edges 7.7 Å > cutoff: the H's own images are far
    slab.center(vacuum=10.0, axis=2)
    top = slab.positions[:, 2].max()
    frame = slab + Atoms("H", positions=[[1.0, 1.5, top + 8.0]], cell=slab.cell, pbc=slab.pbc)
    far = len(frame) - 1
    at_cutoff, wide = atoms_graph([frame], CUTOFF), atoms_graph([frame], 9.0)
    assert not (at_cutoff.edge_index == far).any()
    far_edges = (wide.edge_index == far).any(0)
    d = wide.edge_vectors().norm(dim=-1)
    assert far_edges.any() and (d[far_edges] > CUTOFF).all() and (d < CUTOFF).sum() == at_cutoff.n_edges

    def ef(graph):
        torch.manual_seed(0)
        model = build_model("cgcnn", "small").double().train()
        seen = []
        for conv in model.convs:
            conv.bn.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0].detach(), args[1],
                                                                              out.detach())))
        e, f = energy_and_forces(model, graph, create_graph=False)
        return e.detach(), f, seen

    e, f, seen = ef(wide)
    assert len(seen) == 3
    for bn, x, weight, out in seen:
        assert torch.equal(weight, d < CUTOFF) and not weight[far_edges].any()
        ref = torch.nn.BatchNorm1d(x.shape[1]).double()
        ref.load_state_dict({k: v for k, v in bn.state_dict().items() if "running" not in k
                             and "num_batches" not in k}, strict=False)  # the affine parameters
        torch.testing.assert_close(out[weight], ref(x[weight]), rtol=0, atol=1e-12)
        torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(bn.running_var, ref.running_var, rtol=0, atol=1e-12)
        assert not torch.allclose(x.mean(0), x[weight].mean(0))  # the far rows would have shifted the mean
    e_c, f_c, seen_c = ef(at_cutoff)
    assert all(bool(w.all()) for _, _, w, _ in seen_c)  # a radius graph at the cutoff: every edge is real
    torch.testing.assert_close(e, e_c, rtol=0, atol=1e-10)
    torch.testing.assert_close(f, f_c, rtol=0, atol=1e-10)
