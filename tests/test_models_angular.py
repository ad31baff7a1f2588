"""The triplet sums of DimeNet++ and GemNet-T by per-atom densities (dcnn/models/angular.py) are the same
function as triplet by triplet: values, forces and the parameter gradients of a force loss (the double
backward of training), in float64, on periodic cells (images, an atom's own images as neighbours) and on
molecules; and the real harmonics they rest on satisfy the addition theorem."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from ase.build import bulk

from dcnn.atomistic.graph import molecule_graph, triplets
from dcnn.models import build_model, energy_and_forces, prepare
from dcnn.models.angular import (DENSITY_FROM, DENSITY_SLOT, DENSITY_TABLE, legendre_cbf, neighbour_table,
                                 real_spherical_harmonics, sum_by_density, triplets_per_edge)
from dcnn.models.gemnet_t import TRIPLETS_KEY, triplet_table
from conftest import atoms_graph, slab_with_adsorbate


def _unit(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 3, dtype=torch.float64, generator=g), dim=-1)


@pytest.mark.parametrize("n_orders", [1, 5, 7])
def test_real_harmonics_addition_theorem_parity_and_orthonormality(n_orders):
    u, v = _unit(500, 0), _unit(500, 1)
    yu, yv = real_spherical_harmonics(n_orders, u), real_spherical_harmonics(n_orders, v)
    assert yu.shape == (500, n_orders ** 2)
    cbf = legendre_cbf(n_orders, (u * v).sum(-1))
    for l in range(n_orders):
        block = slice(l * l, (l + 1) ** 2)
        # Σ_m Y_lm(u) Y_lm(v) = (2l+1)/4π P_l(u·v) = √((2l+1)/4π)·Y_l0(u·v)
        torch.testing.assert_close((yu[:, block] * yv[:, block]).sum(-1),
                                   math.sqrt((2 * l + 1) / (4 * math.pi)) * cbf[:, l], rtol=0, atol=1e-13)
        torch.testing.assert_close(real_spherical_harmonics(n_orders, -u)[:, block], (-1) ** l * yu[:, block],
                                   rtol=0, atol=1e-14)
    # orthonormal on the sphere: Gauss–Legendre in cos θ × uniform in φ, exact for these degrees
    z, wz = np.polynomial.legendre.leggauss(2 * n_orders)
    phi = np.arange(4 * n_orders) * 2 * np.pi / (4 * n_orders)
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    s = np.sqrt(1 - zz ** 2)
    grid = torch.as_tensor(np.stack([s * np.cos(pp), s * np.sin(pp), zz], -1).reshape(-1, 3))
    w = torch.as_tensor(np.repeat(wz, len(phi)) * 2 * np.pi / len(phi))
    y = real_spherical_harmonics(n_orders, grid)
    torch.testing.assert_close(y.T @ (y * w[:, None]), torch.eye(n_orders ** 2, dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_neighbour_table_lists_each_atoms_incoming_edges_once_in_edge_order():
    """The padded layout the density sums run on: row a = the edges into atom a in edge order, padded with
    E; slot[e] = where edge e sits (row·K + column); K = the largest in-degree; an atom without edges is
    all padding."""
    g = torch.Generator().manual_seed(7)
    n_atoms, n_edges = 9, 60
    target = torch.randint(0, n_atoms - 1, (n_edges,), generator=g)  # atom 8 receives no edge
    table, slot = neighbour_table(target, n_atoms)
    degree = torch.bincount(target, minlength=n_atoms)
    assert table.shape == (n_atoms, int(degree.max()))
    for a in range(n_atoms):
        into = torch.nonzero(target == a).flatten()
        row = table[a]
        assert row[: len(into)].tolist() == into.tolist()
        assert (row[len(into):] == n_edges).all()
    assert table.view(-1)[slot].tolist() == list(range(n_edges))
    table, slot = neighbour_table(target[:0], 3)  # no edges at all: one padding column
    assert table.shape == (3, 1) and (table == 0).all() and slot.numel() == 0


def _with_table(model_name, graph):
    """The graph with the model's triplet table, whatever `sum_by_density` would choose."""
    n = graph.positions.shape[0]
    if model_name == "dimenetpp":
        kj, ji = triplets(graph.edge_index, n, graph.cell_shifts)
        extras = {"dimenet_kj": kj, "dimenet_ji": ji}
    else:
        extras = {TRIPLETS_KEY: triplet_table(graph.edge_index[1], n)}
    return dataclasses.replace(graph, extras={**graph.extras, **extras})


def _graphs():
    mol = torch.rand(2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 3
    small_cell = bulk("Cu", "fcc", a=3.6)  # at 6 Å an atom's own images are its neighbours
    small_cell.rattle(0.05, seed=1)
    return {"periodic": atoms_graph([slab_with_adsorbate(), small_cell], 6.0),
            "molecule": molecule_graph(mol, torch.tensor([6, 1, 1, 8, 1, 7]))}


@pytest.mark.parametrize("model_name", ["dimenetpp", "gemnet_t"])
@pytest.mark.parametrize("kind", ["periodic", "molecule"])
def test_density_and_triplet_sums_are_one_function(model_name, kind):
    torch.manual_seed(0)
    model = build_model(model_name, "small").double()
    if model_name == "dimenetpp":  # a non-zero readout, so that the interaction blocks reach the energy
        for block in model.output_blocks:
            torch.nn.init.normal_(block.lin.weight, std=0.1)
    graph = _graphs()[kind]
    graph = dataclasses.replace(graph, extras={})
    by_table = _with_table(model_name, graph)
    results = []
    by_density = dataclasses.replace(graph, extras=dict(zip((DENSITY_TABLE, DENSITY_SLOT),
                                                             neighbour_table(graph.edge_index[1], graph.positions.shape[0]))))
    for g in (by_density, by_table):  # the density sum on its padded table; triplet by triplet
        model.zero_grad()
        e, f = energy_and_forces(model, g, create_graph=True)
        (e.square().sum() + f.square().sum()).backward()  # reaches the parameters through F: double backward
        results.append((e.detach(), f.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (e0, f0, g0), (e1, f1, g1) = results
    assert f0.abs().max() > 1e-3  # forces that are not trivially zero
    torch.testing.assert_close(e0, e1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f0, f1, rtol=1e-9, atol=1e-10)
    assert len(g0) == len(g1) > 10
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_the_cheaper_sum_is_chosen_from_the_triplets_per_edge():
    """A complete molecular graph of N atoms has N − 2 triplets per edge; dense cells at 6 Å ≈ 50: the
    model builds a triplet table for the first and none for the second."""
    graphs = _graphs()
    mol = graphs["molecule"]
    assert triplets_per_edge(mol.edge_index, mol.positions.shape[0]) == pytest.approx(6 - 2)
    dense = graphs["periodic"]
    k = triplets_per_edge(dense.edge_index, dense.positions.shape[0])
    kj, _ = triplets(dense.edge_index, dense.positions.shape[0], dense.cell_shifts)
    assert k == pytest.approx(kj.numel() / dense.n_edges)  # the count DimeNet's table would have
    for name in ("dimenetpp", "gemnet_t"):
        assert k > DENSITY_FROM[name] * 25 > 6 - 2
        assert sum_by_density(name, dense.edge_index, dense.positions.shape[0], 5)
        assert not sum_by_density(name, mol.edge_index, mol.positions.shape[0], 5)
    for name, key in (("dimenetpp", "dimenet_kj"), ("gemnet_t", TRIPLETS_KEY)):
        model = build_model(name, "small")
        assert key in prepare(model, mol).extras and key not in prepare(model, dense).extras
        assert DENSITY_TABLE in prepare(model, dense).extras and DENSITY_TABLE not in prepare(model, mol).extras
