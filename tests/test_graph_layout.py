"""The graph layout (issue 17) reproduces the dense all-pairs models it replaced: same weights, same
energies and forces in float64 to 1e-10 on the bundled molecules (tests/legacy_dense holds the dense models
as they were), on complete graphs and on radius graphs alike."""
import dataclasses

import numpy as np
import pytest
import torch

from dcnn.atomistic.dataset import AtomsDataset
from dcnn.atomistic.graph import collate
from dcnn.atomistic.neighbors import DatasetNeighbors
from dcnn.atomistic.molecules import load_dataset
from dcnn.models import build_model, energy_and_forces

LEGACY = {"schnet": ("legacy_dense.schnet", "SchNet")}


def _legacy(name, sizes):
    import importlib

    module, cls = LEGACY[name]
    return getattr(importlib.import_module(module), cls)(**sizes)


def _dense_energy_forces(model, positions, numbers):
    pos = positions.clone().requires_grad_(True)
    e = model(pos, numbers)
    (g,) = torch.autograd.grad(e.sum(), pos)
    return e.detach(), -g


@pytest.mark.parametrize("molecule", ["ethanol", "aspirin"])
@pytest.mark.parametrize("graph_kind", ["complete", "radius"])
@pytest.mark.parametrize("name", list(LEGACY))
def test_graph_model_equals_the_dense_model_it_replaced(name, molecule, graph_kind):
    from dcnn.models import get_spec

    ds = AtomsDataset.from_molecule(load_dataset(molecule).subset(np.arange(6)))
    torch.manual_seed(0)
    graph_model = build_model(name, "small").double()
    sizes = get_spec(name).sizes("small", {})
    dense = _legacy(name, sizes).double()
    missing, unexpected = dense.load_state_dict(graph_model.state_dict(), strict=False)
    assert not unexpected and all("cache" in k or "geometry" in k for k in missing), (missing, unexpected)
    cutoff = sizes["cutoff"]
    neighbors = DatasetNeighbors.complete(ds) if graph_kind == "complete" else DatasetNeighbors.compute(ds, cutoff)
    graph, _, _ = collate(ds, neighbors, np.arange(6), dtype=torch.float64)
    e, f = energy_and_forces(graph_model, graph, create_graph=False)
    n = int(ds.n_atoms[0])
    pos = torch.as_tensor(ds.positions.reshape(6, n, 3))
    e0, f0 = _dense_energy_forces(dense, pos, torch.as_tensor(ds.numbers[:n]))
    torch.testing.assert_close(e.detach(), e0, rtol=0, atol=1e-10)
    torch.testing.assert_close(f.reshape(6, n, 3), f0, rtol=0, atol=1e-10)
    if molecule == "aspirin" and graph_kind == "radius":
        assert neighbors.n_edges.min() < n * (n - 1)  # some pairs beyond the cutoff: a real radius graph
