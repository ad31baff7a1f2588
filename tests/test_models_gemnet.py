"""GemNet-T (dcnn/models/gemnet_t.py) on the graph layout: the dense model it replaced and fairchem's
function (molecules and periodic slabs/crystals), energy-conserving, smooth, periodic physics, trainable,
and its divergence (the paper's unstable model) reported rather than raised."""
import math

import numpy as np
import pytest
import torch

from dcnn.activations import count_activations, replace_activations
from dcnn.atomistic.graph import molecule_graph
from dcnn.models import build_model, denormalize, has_normalization
from dcnn.models.angular import legendre_cbf
from dcnn.models.gemnet_t import GEMNET_T_PRESETS, TRIPLETS_KEY, GemNetT, triplet_table
from conftest import (assert_batch_of_one, assert_periodic_physics, assert_smooth_at_cutoff, assert_symmetries,
                      atoms_graph, central_difference_forces, dense_ef, dense_energy, positions,
                      slab_with_adsorbate)

Z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol, MD17 order
OTHER_SIZES = dict(blocks=1, emb_atom=16, emb_edge=24, emb_trip=8, emb_rbf=4, emb_cbf=6, emb_bil_trip=12,
                   spherical=4, radial=8, cutoff=5.0, before_skip=2, after_skip=1, concat=2, num_atom=2,
                   rbf="spherical_bessel", envelope_exponent=6)


def make(act="original", scope="all", seed=0, **sizes):
    torch.manual_seed(seed)
    m = build_model("gemnet_t", "small", **sizes)
    if act != "original":
        replace_activations(m, act, scope)
    return m.double().eval()


def _fairchem_pair(sizes, act="original"):
    """fairchem's GemNetT and ours with the same weights (float64), `act` in both (ScaledSiLU or softplus
    everywhere); skipped where fairchem-core is not installed (it is optional: tests/fairchem_gemnet.py)."""
    from fairchem_gemnet import build_fairchem_gemnet_t, import_fairchem_gemnet, load_into_ours

    if import_fairchem_gemnet() is None:
        pytest.skip("fairchem-core not installed (pip install fairchem-core==1.10.0 --no-deps)")
    torch.manual_seed(0)
    theirs, run = build_fairchem_gemnet_t(**sizes)
    theirs.double()
    ours = GemNetT(**sizes).double()
    load_into_ours(ours, theirs)
    if act != "original":
        assert act == "softplus"
        replace_activations(ours, act, "all")
        for module in theirs.modules():
            if type(getattr(module, "_activation", None)).__name__ == "ScaledSiLU":
                module._activation = torch.nn.Softplus()
    return ours, theirs, run


@pytest.mark.slow  # importing fairchem.core takes ≈ 8 s
@pytest.mark.parametrize("sizes,act,graph_kind", [
    (GEMNET_T_PRESETS["small"], "original", "complete"), (OTHER_SIZES, "original", "complete"),
    (GEMNET_T_PRESETS["small"], "softplus", "complete"), (OTHER_SIZES, "softplus", "radius")],
    ids=["small", "other", "softplus", "other-softplus-radius"])
def test_equals_fairchem_gemnet_t_with_same_weights(sizes, act, graph_kind, ethanol):
    """Same E and F as fairchem-core's GemNetT (direct_forces=False) on its own radius graph, with our
    weights copied in (float64), ours on the complete graph (what fixed-size molecules train on) or on
    the radius graph at the cutoff.  Softplus everywhere (act(0) ≠ 0) checks that edges beyond the cutoff
    send no triplet messages on the complete graph, as on fairchem's graph."""
    ours, _, run = _fairchem_pair(sizes, act)
    pos = positions(ethanol, 3) * 2.2  # stretched: some pairs beyond the cutoff (absent from fairchem's graph)
    far = (torch.cdist(pos, pos) > sizes["cutoff"]).sum().item()
    assert 0 < far < 3 * 72
    e, f = dense_ef(ours, pos, Z, False, cutoff=sizes["cutoff"] if graph_kind == "radius" else None)
    e_fc, f_fc = run(pos, Z)
    assert e.abs().min() > 1e-2 and f.abs().max() > 1e-2
    torch.testing.assert_close(e, e_fc.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(f, f_fc.detach(), rtol=0, atol=1e-12)


def _periodic_frames(kind):
    """Frames for the fairchem comparison, cells rounded so fairchem's float32 cell offsets are exact."""
    from ase.build import bulk

    from fairchem_gemnet import dyadic_cell

    if kind == "slabs":  # two Cu(111) slabs with an O on top in one batch, periodic in x, y
        return [dyadic_cell(slab_with_adsorbate(seed=s)) for s in (0, 1)]
    # a one-atom cell ≈ 2.5 Å (every neighbour an image, of itself too) and a jittered 2×1×1 Ni–Cu cell
    pair = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    pair.numbers[1] = 28
    pair.positions += np.random.default_rng(0).normal(0.0, 0.05, pair.positions.shape)
    return [dyadic_cell(bulk("Cu", "fcc", a=3.6)), dyadic_cell(pair)]


@pytest.mark.slow  # importing fairchem.core takes ≈ 8 s
@pytest.mark.parametrize("kind,act", [("slabs", "original"), ("crystals", "original"), ("slabs", "softplus")])
def test_equals_fairchem_gemnet_t_on_periodic_frames(kind, act):
    """Same E and F as fairchem's GemNetT through its periodic path (use_pbc=True: its radius_graph_pbc,
    get_pbc_distances, symmetric-edge reordering, swap and image-aware triplets) on slabs and on bulk
    cells smaller than the cutoff, ours on the data layer's radius graph (vesin), float64."""
    from fairchem_gemnet import run_periodic

    sizes = GEMNET_T_PRESETS["small"]
    ours, theirs, _ = _fairchem_pair(sizes, act)
    frames = _periodic_frames(kind)
    graph = atoms_graph(frames, sizes["cutoff"])
    e, f = graph_ef(ours, graph)
    e_fc, f_fc = run_periodic(theirs, frames)
    assert f.abs().max() > 1e-2
    torch.testing.assert_close(e, e_fc.detach(), rtol=0, atol=1e-11)
    torch.testing.assert_close(f, f_fc.detach(), rtol=0, atol=1e-12)


def graph_ef(model, graph):
    """E [B] and F [A, 3] of an AtomicGraph, detached."""
    from dcnn.models import energy_and_forces

    e, f = energy_and_forces(model, graph, False)
    return e.detach(), f.detach()


def _fairchem_fit(theirs, run_batches):
    """fairchem's own fit (its ScaleFactor modules' fit_context_/fit_ in computation order,
    fairchem/core/modules/scaling/fit.py) over the callables `run_batches`: {module path: factor}."""
    from fairchem.core.modules.scaling import ScaleFactor as FairchemScaleFactor

    factors = {n: m for n, m in theirs.named_modules() if isinstance(m, FairchemScaleFactor)}
    order: list = []
    for name, m in factors.items():
        m.initialize_(index_fn=lambda name=name: order.append(name) if name not in order else None)
    run_batches[0]()
    for name in order:
        with factors[name].fit_context_():
            for run in run_batches:
                run()
            factors[name].fit_()
    return {n: float(factors[n].scale_factor) for n in order}


@pytest.mark.slow  # importing fairchem.core takes ≈ 8 s
@pytest.mark.parametrize("data", ["molecules", "slabs"])
def test_scale_factor_fit_equals_fairchem(data, ethanol):
    """`data_init_` fits the same scale factors as fairchem's own fitting procedure on the same batches,
    with the same weights, in float64: on stretched molecules on the complete graph (edges beyond the
    cutoff, absent from fairchem's radius graph, must be left out of the statistics), and on periodic
    slabs on the radius graph (every edge and triplet counts, images included)."""
    from fairchem_gemnet import run_periodic

    sizes = GEMNET_T_PRESETS["small"]
    ours, theirs, run = _fairchem_pair(sizes)
    ours.eval(), theirs.eval()
    if data == "molecules":
        pos = positions(ethanol, 12) * 2.0
        assert (torch.cdist(pos, pos) > sizes["cutoff"]).any()
        batches = [pos[k:k + 4] for k in range(0, 12, 4)]
        graphs = [ours.prepare_graph(molecule_graph(b, Z)) for b in batches]
        theirs_runs = [lambda b=b: run(b, Z) for b in batches]
    else:
        first = _periodic_frames("slabs")
        second = [slab.copy() for slab in first]
        for slab in second:
            slab.rattle(0.05, seed=3)  # other positions, the same (dyadic) cells
        frames = [first, second]
        graphs = [ours.prepare_graph(atoms_graph(f, sizes["cutoff"])) for f in frames]
        theirs_runs = [lambda f=f: run_periodic(theirs, f) for f in frames]
    fitted = ours.data_init_([lambda g=g: ours(g) for g in graphs])
    expected = _fairchem_fit(theirs, theirs_runs)
    assert set(fitted) == set(expected) and len(fitted) == 3 * sizes["blocks"] + sizes["blocks"] + 1
    assert all(abs(v - 1.0) > 1e-3 for v in fitted.values())  # fitting changed every one of them
    for name, value in expected.items():
        assert fitted[name] == pytest.approx(value, rel=1e-10), name


def test_scale_factor_fit_makes_outputs_unit_scale(ethanol):
    """After `data_init_` each factor's output has the variance of its reference input on the fit batches
    (what fairchem's fit is for), and the fitted model's energy differs from the unfitted one's."""
    m = make()
    pos = positions(ethanol, 8)
    e_before = dense_energy(m, pos, Z)
    graphs = [m.prepare_graph(molecule_graph(pos[:4], Z)), m.prepare_graph(molecule_graph(pos[4:], Z))]
    fitted = m.data_init_([lambda g=g: m(g) for g in graphs])
    assert len(fitted) == 3 * GEMNET_T_PRESETS["small"]["blocks"] + GEMNET_T_PRESETS["small"]["blocks"] + 1
    for module in (mod for mod in m.modules() if type(mod).__name__ == "ScaleFactor"):
        module.stats = [0.0, 0.0, 0]
    for g in graphs:
        m(g)
    for name, module in m.named_modules():
        if type(module).__name__ == "ScaleFactor":
            var_out, var_in, _ = module.stats
            module.stats = None
            # fitted in computation order: each factor's input is what it was fitted on, so exactly 1
            assert var_out / var_in == pytest.approx(1.0, rel=1e-9), name
    assert not torch.allclose(dense_energy(m, pos, Z), e_before)


@pytest.mark.parametrize("molecule", ["ethanol", "aspirin"])
@pytest.mark.parametrize("graph_kind", ["complete", "radius"])
@pytest.mark.parametrize("variant", ["small", "other-softplus"])
def test_equals_the_dense_model_it_replaced(variant, graph_kind, molecule):
    """Same E and F (float64, 1e-10) as the dense all-pairs GemNet-T (tests/legacy_dense/gemnet_t.py) with
    the same weights — a state_dict loads both ways — on the complete graph and on the radius graph at
    the cutoff, for ethanol and aspirin frames (aspirin: pairs beyond the cutoff, so the radius graph is
    a real one); softplus everywhere (act(0) ≠ 0) with other sizes (spherical Bessel basis, 5 Å): the dense
    model's `inside` mask and the graph's agree."""
    from dcnn.atomistic.dataset import AtomsDataset
    from dcnn.atomistic.graph import collate
    from dcnn.atomistic.neighbors import DatasetNeighbors
    from dcnn.atomistic.molecules import load_dataset
    from legacy_dense.gemnet_t import GemNetT as DenseGemNetT

    sizes = dict(GEMNET_T_PRESETS["small"]) if variant == "small" else OTHER_SIZES
    torch.manual_seed(0)
    graph_model = GemNetT(**sizes).double()
    dense = DenseGemNetT(**sizes).double()
    dense.load_state_dict(graph_model.state_dict())
    graph_model.load_state_dict(dense.state_dict())
    if variant != "small":
        replace_activations(graph_model, "softplus", "all")
        replace_activations(dense, "softplus", "all")
    ds = AtomsDataset.from_molecule(load_dataset(molecule).subset(np.arange(4)))
    cutoff = sizes["cutoff"]
    neighbors = DatasetNeighbors.complete(ds) if graph_kind == "complete" else DatasetNeighbors.compute(ds, cutoff)
    graph, _, _ = collate(ds, neighbors, np.arange(4), dtype=torch.float64)
    e, f = graph_ef(graph_model, graph)
    n = int(ds.n_atoms[0])
    pos = torch.as_tensor(ds.positions.reshape(4, n, 3)).requires_grad_(True)
    e0 = dense(pos, torch.as_tensor(ds.numbers[:n]))
    (g,) = torch.autograd.grad(e0.sum(), pos)
    assert f.abs().max() > 1e-2
    torch.testing.assert_close(e, e0.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(f.reshape(4, n, 3), -g, rtol=0, atol=1e-10)
    if molecule == "aspirin" and graph_kind == "radius":
        assert neighbors.n_edges.min() < n * (n - 1)  # some pairs beyond the cutoff: a real radius graph


def test_triplet_table_is_every_other_edge_into_the_same_atom():
    """id3_ba row e = every edge b → a ≠ e into e's target (edges, not atoms: with periodic images two
    images of one atom are two b's, b may be another image of c), K_max = max in-degree − 1, the rest
    padded with E; on a complete molecular graph every row is full (N − 2); prepare_graph builds a table
    where triplet by triplet is cheaper and keeps one that is there."""
    from ase.build import bulk

    molecule = torch.rand(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    graphs = [atoms_graph([slab_with_adsorbate(), bulk("Cu", "fcc", a=3.6)], 6.0),
              molecule_graph(molecule, torch.tensor([6, 1, 1, 1, 8]))]
    for graph in graphs:
        tgt = graph.edge_index[1]
        e = graph.n_edges
        table = triplet_table(tgt, graph.positions.shape[0])
        into = torch.bincount(tgt)
        assert table.shape == (e, int(into.max()) - 1)
        want = (tgt[:, None] == tgt[None, :]) & ~torch.eye(e, dtype=torch.bool)  # [e, b]
        got = torch.zeros(e, e + 1, dtype=torch.bool)
        got[torch.arange(e)[:, None].expand_as(table), table] = True
        assert torch.equal(got[:, :e], want)
        assert torch.equal((table < e).sum(1), want.sum(1))  # each b once
        assert torch.equal(table[table < e].unique(), torch.arange(e))
    complete = triplet_table(graphs[1].edge_index[1], 10)
    assert complete.shape == (2 * 5 * 4, 5 - 2) and (complete < graphs[1].n_edges).all()  # full rows, no padding
    periodic = graphs[0]
    source, target = periodic.edge_index
    assert ((source == target) & (periodic.cell_shifts != 0).any(1)).any()  # self images are edges
    assert (triplet_table(target, periodic.positions.shape[0]) == periodic.n_edges).any()  # padded rows
    # dense cells sum by density (no table); a small molecule gets one, kept when it is there
    assert TRIPLETS_KEY not in GemNetT().prepare_graph(periodic).extras
    prepared = GemNetT().prepare_graph(graphs[1])
    assert prepared.extras[TRIPLETS_KEY].shape[0] == graphs[1].n_edges and TRIPLETS_KEY not in graphs[1].extras
    assert GemNetT().prepare_graph(prepared) is prepared


# integrated activations where the paper puts them (output blocks); isilu everywhere overflows to NaN at
# initialization through ~40 stacked layers (the paper: "full replacement was unstable")
ACTS = [("original", "all"), ("irelu", "paper"), ("softplus", "all")]


@pytest.mark.parametrize("act,scope", ACTS)
def test_energy_invariant_forces_equivariant(act, scope, ethanol):
    m = make(act, scope)
    pos = positions(ethanol, 2)
    e, f = dense_ef(m, pos, Z, False)
    assert_symmetries(m, pos, Z, e_atol=1e-10 * max(1.0, e.abs().max().item()),
                      f_atol=1e-9 * max(1.0, f.abs().max().item()))


@pytest.mark.parametrize("act,scope", ACTS)
def test_forces_are_central_differences_of_energy(act, scope, ethanol, monkeypatch):
    """F = −∇E including the angular terms: with the angles taken from detached positions the forces
    miss a term the differences see."""
    m = make(act, scope)
    pos = positions(ethanol, 1)
    _, f = dense_ef(m, pos, Z, False)
    fd = central_difference_forces(m, pos, Z)
    scale = max(1.0, f.abs().max().item())
    torch.testing.assert_close(f, fd, rtol=1e-6, atol=1e-7 * scale)

    # ethanol sums triplet by triplet: the angular basis of each triplet's cosine, detached here
    import dcnn.models.gemnet_t as module

    monkeypatch.setattr(module, "legendre_cbf", lambda n, cos: legendre_cbf(n, cos.detach()))
    _, f_det = dense_ef(m, pos, Z, False)
    assert (f_det - fd).abs().max() > 1e-3 * scale


@pytest.mark.parametrize("act,scope", [("original", "all"), ("irelu", "paper")])
def test_periodic_physics(act, scope):
    """Translation + wrap, rotation, supercell extensivity, forces = central differences across the cell
    boundary, a cell smaller than the cutoff (tests/conftest.py assert_periodic_physics)."""
    assert_periodic_physics(make(act, scope), cutoff=GEMNET_T_PRESETS["small"]["cutoff"])


def test_batch_of_one_equals_same_molecule_in_batch(ethanol):
    assert_batch_of_one(make(), positions(ethanol, 5), Z)


def test_energy_smooth_at_cutoff():
    assert_smooth_at_cutoff(make(), far_atol=1e-13)


def test_paper_placement_swaps_only_output_blocks():
    """The paper's code swaps out_blocks[k].layers[*] activations: 1 + 2·num_atom per output block."""
    blocks, num_atom = GEMNET_T_PRESETS["small"]["blocks"], 3
    paper = replace_activations(build_model("gemnet_t"), "irelu", "paper")
    assert paper.replaced_activations == (blocks + 1) * (1 + 2 * num_atom)
    assert count_activations(paper.out_blocks, "irelu") == (blocks + 1) * (1 + 2 * num_atom)
    assert count_activations(paper.int_blocks, "scaled_silu") > 0 and count_activations(paper.int_blocks, "irelu") == 0
    everywhere = replace_activations(build_model("gemnet_t"), "irelu", "all")
    # dense_ca; triplet: dense_ba, down, up_ca, up_ac; 2 per residual layer (1 before, 2 after skip, 1 concat);
    # atom update 1 + 2·num_atom; concat layer 1
    per_block = 1 + 4 + 2 * (1 + 2 + 1) + (1 + 2 * num_atom) + 1
    assert everywhere.replaced_activations == 1 + blocks * per_block + (blocks + 1) * (1 + 2 * num_atom)
    assert count_activations(everywhere, "scaled_silu") == 0


def test_presets_no_batchnorm_and_float32(ethanol):
    paper = build_model("gemnet_t", "paper")
    assert paper.atom_emb.embedding_dim == 512 and len(paper.int_blocks) == 3 and len(paper.out_blocks) == 4
    assert paper.mlp_cbf3.weight.shape == (7, 128, 16) and paper.int_blocks[0].trip_interaction.mlp_cbf.weight.shape == (64, 16, 64)
    assert len(paper.out_blocks[0].layers) == 4 and len(paper.int_blocks[0].layers_after_skip) == 2
    assert denormalize(paper) == 0 and not has_normalization("gemnet_t")  # DN is the identity here
    with pytest.raises(ValueError, match="unknown size"):
        build_model("gemnet_t", "small", filters=3)
    m64 = make()
    m32 = make().float()
    pos = positions(ethanol, 2)
    e64, f64 = dense_ef(m64, pos, Z, False)
    e32, f32 = dense_ef(m32, pos.float(), Z, False)
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32.double(), e64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f32.double(), f64, rtol=1e-3, atol=1e-3)


def test_short_training_reduces_force_error():
    from dcnn.config import TrainConfig
    from dcnn.train import Trainer

    cfg = TrainConfig(model="gemnet_t", n_train=100, n_val=40, n_test=20, epochs=4, lr=3e-3, shift=True)
    tr = Trainer(cfg)
    before = tr.task.evaluate("val")["force_loss"]
    while not tr.done:
        tr.run_epoch()
    after = tr.history[-1]["force_loss"]
    assert not tr.diverged and after < 0.7 * before, (before, after)


def test_diverging_run_is_reported_not_raised():
    """The paper's GemNet diverged (NaN) without LR: a blown-up run ends as diverged with NaN test metrics."""
    from dcnn.config import TrainConfig
    from dcnn.train import train

    out = train(TrainConfig(model="gemnet_t", activation="irelu", lr=1e8, epochs=2, n_train=20, n_val=10,
                            n_test=10))
    assert out["diverged"] == 1 and out["epochs_completed"] == out["diverged_epoch"] == 1
    assert math.isnan(out["test_energy_loss"]) and math.isnan(out["test_force_loss"])
