"""MACE through the plug-in API (dcnn/models/mace.py) on the graph layout: the same E and F as the dense
adapter it replaced (upstream MACE on an ASE radius graph of each molecule) and as upstream MACE through
its own data pipeline on periodic cells (virials too: the strain path through the cells); periodic physics;
symmetries, forces vs central differences, the wrapped activations are MACE's own function, placement
counts, no BatchNorm, a short learning run through our force loss.
The tiny study run with `--models schnet,mace,plug-in` is tests/test_plugins.py's Ray test."""
import copy
import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("mace", reason="mace-torch is not installed (optional extra: pip install 'dcnn-ablate[mace]')")

from conftest import (assert_periodic_physics, assert_symmetries, atoms_graph, central_difference_forces,  # noqa: E402
                      dense_ef, dense_energy, positions, slab_with_adsorbate)

ETHANOL = {"elements": (1, 6, 8), "n_atoms": 9}
SLAB = {"elements": (8, 29)}  # O on Cu(111), Cu bulk


@pytest.fixture(scope="module")
def built():
    """One float64 MACE per (data, sizes) (building one costs seconds: e3nn generates code); tests get copies."""
    from dcnn.models import build_model

    cache = {}

    def get(data=None, **sizes):
        data = data or ETHANOL
        key = (tuple(sorted(data.items())), tuple(sorted(sizes.items())))
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = build_model("mace", "small", data, **sizes).to(torch.float64)
        return copy.deepcopy(cache[key])
    return get


@pytest.fixture(scope="module")
def aspirin():
    from dcnn.atomistic.molecules import load_dataset

    return load_dataset("aspirin")


_UPSTREAM: dict = {}


def upstream_of(model):
    """Upstream MACE built as the adapter builds it (e3nn's own normalize2mom SiLU), with its weights (the
    architecture built once per size set: a build costs seconds)."""
    m = model.mace
    key = (model.elements, float(m.interactions[0].avg_num_neighbors), float(m.r_max))
    if key not in _UPSTREAM:
        _UPSTREAM[key] = model._build(*key, 8, 1, 2, 16, 16, 2, 16, 2).to(torch.float64)
    up = copy.deepcopy(_UPSTREAM[key])
    up.load_state_dict(m.state_dict())
    return up


def ase_radius_inputs(model, pos, Z):
    """MACE's input dict of dense molecule frames pos [B, N, 3] on a radius graph at r_max from ASE's
    neighbor_list, in MACE's own convention (sender i, receiver j, D = x_j − x_i): what the dense adapter
    built in torch."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    b, n, _ = pos.shape
    edges = []
    for k, frame in enumerate(pos.numpy()):
        i, j = neighbor_list("ij", Atoms(numbers=Z.numpy(), positions=frame), float(model.mace.r_max))
        edges.append(np.stack([i, j]) + k * n)
    edge_index = torch.as_tensor(np.concatenate(edges, 1), dtype=torch.long)
    e = edge_index.shape[1]
    one_hot = torch.nn.functional.one_hot(model.element_index[Z], len(model.elements)).to(torch.float64)
    return {"positions": pos.reshape(b * n, 3).clone(), "node_attrs": one_hot.repeat(b, 1), "edge_index": edge_index,
            "shifts": torch.zeros(e, 3, dtype=torch.float64), "unit_shifts": torch.zeros(e, 3, dtype=torch.float64),
            "cell": torch.zeros(b, 3, 3, dtype=torch.float64), "batch": torch.arange(b).repeat_interleave(n),
            "ptr": torch.arange(b + 1) * n}


def test_molecules_equal_the_dense_adapter(ethanol, aspirin, built):
    """On the complete graph of a molecule (pairs past r_max dropped by prepare_graph) E and F equal the
    dense adapter's: upstream MACE with the same weights on an ASE radius graph at r_max, its own forces
    (compute_force=True), ≤ 1e-10 in float64.  Ethanol at r_max 2.5 Å and aspirin at 5 Å lose pairs."""
    from dcnn.atomistic.graph import molecule_graph
    from dcnn.models import prepare

    worst = [0.0, 0.0]
    for mol, cutoff in ((ethanol, 5.0), (ethanol, 2.5), (aspirin, 5.0)):
        model = built(cutoff=cutoff)
        pos, Z = positions(mol, 3), torch.as_tensor(mol.numbers)
        graph = molecule_graph(pos, Z)
        prepared = prepare(model, graph)
        dropped = int(prepared.extras[model._prepared_key])
        assert prepared.n_edges == graph.n_edges - 2 * dropped
        assert (dropped > 0) == (mol is aspirin or cutoff < 3)
        assert prepare(model, prepared) is prepared  # idempotent: energy_and_forces prepares again
        e, f = dense_ef(model, pos, Z)
        ref = upstream_of(model)(ase_radius_inputs(model, pos, Z), compute_force=True)
        de = (e - ref["energy"]).abs().max().item()
        df = (f.reshape(-1, 3) - ref["forces"]).abs().max().item()
        assert de <= 1e-10 and df <= 1e-10, (cutoff, de, df)
        assert f.abs().max() > 1e-3
        worst = [max(worst[0], de), max(worst[1], df)]
    print(f"\nmolecules vs dense adapter: max |dE| {worst[0]:.2e}, max |dF| {worst[1]:.2e}")


def test_periodic_physics(built):
    """Wrap, rotation, supercell extensivity, central differences across the boundary, a cell smaller than
    r_max (many images) on O/Cu(111) slabs and Cu bulk."""
    assert_periodic_physics(built(SLAB), cutoff=5.0)


def mace_pipeline(frames, r_max):
    """MACE's own data pipeline: Configuration from ASE Atoms (pbc, cell), AtomicData.from_config (its
    neighbour list, shifts), batched as its data loader does."""
    from mace import data as mace_data
    from mace.tools import AtomicNumberTable, torch_geometric

    table = AtomicNumberTable(list(SLAB["elements"]))
    items = [mace_data.AtomicData.from_config(mace_data.config_from_atoms(a), z_table=table, cutoff=r_max)
             for a in frames]
    batch = torch_geometric.batch.Batch.from_data_list(items).to_dict()
    return {k: (v.to(torch.float64) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}


def test_periodic_equals_upstream_mace_pipeline(built):
    """A slab (pbc T, T, F), a strained slab and a one-atom Cu cell (every neighbour an image) in one batch:
    E and F equal upstream MACE through its own pipeline (Configuration, AtomicData.from_config), and so do
    the virials −∂E/∂ε, ε a symmetric strain applied to positions and cells together (our Cartesian shifts
    are computed from the cells, so the strain reaches them)."""
    from ase.build import bulk

    from dcnn.models import energy_and_forces, prepare

    torch.set_default_dtype(torch.float64)  # MACE's pipeline makes its tensors in the default dtype
    try:
        model = built(SLAB)
        slab = slab_with_adsorbate()
        strained = slab.copy()
        strained.set_cell(np.array(slab.cell) @ (np.eye(3) + np.array([[0.02, 0.01, 0], [0.01, -0.01, 0], [0, 0, 0]])),
                          scale_atoms=True)
        frames = [slab, strained, bulk("Cu", "fcc", a=3.6)]
        graph = atoms_graph(frames, model.cutoff)
        e, f = energy_and_forces(model, graph, False)
        ref = upstream_of(model)(mace_pipeline(frames, model.cutoff), compute_force=True, compute_virials=True)
    finally:
        torch.set_default_dtype(torch.float32)
    de, df = (e - ref["energy"]).abs().max().item(), (f - ref["forces"]).abs().max().item()
    print(f"\nperiodic vs MACE's pipeline: max |dE| {de:.2e}, max |dF| {df:.2e}")
    assert de <= 1e-10 and df <= 1e-10
    assert f[: len(slab)].abs().max() > 1e-3

    strain = torch.zeros(graph.n_structures, 3, 3, dtype=torch.float64, requires_grad=True)
    sym = 0.5 * (strain + strain.transpose(1, 2))
    g = prepare(model, graph)
    g = dataclasses.replace(g, positions=g.positions + torch.einsum("ak,akl->al", g.positions, sym[g.batch]),
                            cells=g.cells + g.cells @ sym)
    (grad,) = torch.autograd.grad(model(g).sum(), strain)
    torch.testing.assert_close(-grad, ref["virials"], rtol=1e-9, atol=1e-10)
    assert ref["virials"].abs().max() > 1e-3


def test_energy_invariant_forces_equivariant(ethanol, built):
    Z = torch.as_tensor(ethanol.numbers)
    assert_symmetries(built(), positions(ethanol), Z)


def test_forces_match_central_differences(ethanol, built):
    """−∂E/∂x by autograd through the adapter equals central differences of E (float64); a 2.5 Å cutoff
    puts pairs near r_max, where the restricted graph changes and MACE's envelope must be smooth."""
    Z = torch.as_tensor(ethanol.numbers)
    pos = positions(ethanol, 1)
    for model in (built(), built(cutoff=2.5)):
        _, f = dense_ef(model, pos, Z)
        torch.testing.assert_close(f, central_difference_forces(model, pos, Z), rtol=1e-6, atol=1e-7)
        assert f.abs().max() > 1e-3  # not trivially zero


def test_wrapped_activations_are_maces_own_function_and_swap_by_scope(ethanol, built):
    """The swappable MomentNormalized(SiLU) gives upstream MACE's energy exactly; paper scope swaps the
    radial MLPs (2 interactions × 2 layers), all scope also the readout gate; no BatchNorm; elements the
    model was not built for are refused."""
    from dcnn.activations import count_activations, replace_activations
    from dcnn.atomistic.graph import molecule_graph
    from dcnn.models import prepare
    from dcnn.models.mace import MomentNormalized

    Z = torch.as_tensor(ethanol.numbers)
    pos = positions(ethanol, 3)
    model = built()
    graph = prepare(model, molecule_graph(pos, Z))
    torch.testing.assert_close(model(graph), upstream_of(model)(model.mace_inputs(graph), compute_force=False)["energy"],
                               rtol=0, atol=0)

    assert model.paper_activation_scope == ("mace.interactions.0.conv_tp_weights", "mace.interactions.1.conv_tp_weights")
    assert count_activations(model) == count_activations(model, "silu") == 5
    for scope, n in (("paper", 4), ("all", 5)):
        m = replace_activations(built(), "irelu", scope)
        assert m.replaced_activations == count_activations(m, "irelu") == n
        gate = m.mace.readouts[1].non_linearity.acts[0].act.name
        assert gate == ("irelu" if scope == "all" else "silu")
        dense_energy(m, pos, Z)  # the e3nn normalisation is redone for the new activation: E[(½relu(z)²)²] = 3/8
        scales = {a.act.name: a._scale for a in m.modules() if isinstance(a, MomentNormalized)}
        assert scales["irelu"] == pytest.approx((8 / 3) ** 0.5, rel=5e-3)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with pytest.raises(ValueError, match=r"built for elements \[1, 6, 8\]; the data has \[7\]"):
        dense_energy(model, pos, torch.tensor([6, 6, 7, 1, 1, 1, 1, 1, 1]))


def test_short_training_run_learns(ethanol, built):
    """IReLU in paper scope, E and F labels scaled by their spread, 20 frames, 32 Adam steps on E + F
    losses through `energy_and_forces(create_graph=True)` (double backward through MACE): validation
    errors fall — the adapter trains end to end through our force loss on the graph layout."""
    from dcnn.activations import replace_activations
    from dcnn.atomistic.graph import molecule_graph
    from dcnn.models import energy_and_forces, prepare

    torch.manual_seed(0)
    model = replace_activations(built(), "irelu", "paper")
    Z = torch.as_tensor(ethanol.numbers)
    pos = torch.as_tensor(ethanol.positions[:40], dtype=torch.float64)
    energy = torch.as_tensor(ethanol.energies[:40], dtype=torch.float64)
    forces = torch.as_tensor(ethanol.forces[:40], dtype=torch.float64)
    e_mean, e_std, f_std = energy[:20].mean(), energy[:20].std(), forces[:20].std()
    train = [prepare(model, molecule_graph(pos[k:k + 5], Z)) for k in range(0, 20, 5)]
    val = prepare(model, molecule_graph(pos[20:], Z))

    def losses(graph, index, create_graph):
        e, f = energy_and_forces(model, graph, create_graph)
        return (((e - (energy[index] - e_mean) / e_std) ** 2).mean(),
                ((f - forces[index].reshape(-1, 3) / f_std) ** 2).mean())

    before = [x.item() for x in losses(val, slice(20, 40), False)]
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(8):
        for k, graph in enumerate(train):
            le, lf = losses(graph, slice(5 * k, 5 * k + 5), True)
            opt.zero_grad()
            (le + lf).backward()
            opt.step()
    after = [x.item() for x in losses(val, slice(20, 40), False)]
    assert all(np.isfinite(after))
    assert after[1] < 0.8 * before[1] and after[0] < 0.75 * before[0], (before, after)  # ≈ 0.57, 0.60
