"""GemNet-T (dcnn/models/gemnet_t.py): fairchem's function, energy-conserving, smooth, trainable, and its
divergence (the paper's unstable model) reported rather than raised."""
import math

import pytest
import torch

from dcnn.activations import count_activations, replace_activations
from dcnn.models import build_model, denormalize, energy_and_forces, has_normalization
from dcnn.models.gemnet_t import GEMNET_T_PRESETS, GemNetT
from conftest import (assert_batch_of_one, assert_smooth_at_cutoff, assert_symmetries, central_difference_forces,
                      positions)

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


@pytest.mark.slow  # importing fairchem.core takes ≈ 8 s
@pytest.mark.parametrize("sizes,act", [(GEMNET_T_PRESETS["small"], "original"), (OTHER_SIZES, "original"),
                                       (GEMNET_T_PRESETS["small"], "softplus")], ids=["small", "other", "softplus"])
def test_equals_fairchem_gemnet_t_with_same_weights(sizes, act, ethanol):
    """Same E and F as fairchem-core's GemNetT (direct_forces=False) on its own radius graph, with our
    weights copied in (float64).  Softplus everywhere (act(0) ≠ 0) checks that edges beyond the cutoff
    send no triplet messages, as on fairchem's graph.  Skipped where fairchem-core is not installed (it is
    optional: see tests/fairchem_gemnet.py)."""
    from fairchem_gemnet import build_fairchem_gemnet_t, import_fairchem_gemnet, load_into_ours

    if import_fairchem_gemnet() is None:
        pytest.skip("fairchem-core not installed (pip install fairchem-core==1.10.0 --no-deps)")
    torch.manual_seed(0)
    theirs, run = build_fairchem_gemnet_t(**sizes)
    theirs.double()
    ours = GemNetT(**sizes).double()
    load_into_ours(ours, theirs)
    if act != "original":
        replace_activations(ours, act, "all")
        for module in theirs.modules():
            if type(getattr(module, "_activation", None)).__name__ == "ScaledSiLU":
                module._activation = torch.nn.Softplus()
    pos = positions(ethanol, 3) * 2.2  # stretched: some pairs beyond the cutoff (absent from fairchem's graph)
    far = (torch.cdist(pos, pos) > sizes["cutoff"]).sum().item()
    assert 0 < far < 3 * 72
    e, f = energy_and_forces(ours, pos, Z, False)
    e_fc, f_fc = run(pos, Z)
    assert e.abs().min() > 1e-2 and f.abs().max() > 1e-2
    torch.testing.assert_close(e, e_fc.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(f, f_fc.detach(), rtol=0, atol=1e-12)


@pytest.mark.slow  # importing fairchem.core takes ≈ 8 s
def test_scale_factor_fit_equals_fairchem(ethanol):
    """`data_init_` fits the same scale factors as fairchem's own fitting procedure (its ScaleFactor
    modules' fit_context_/fit_ in computation order, fairchem/core/modules/scaling/fit.py) on the same
    batches, with the same weights, in float64 — on stretched geometries, so that edges beyond the cutoff
    (absent from fairchem's radius graph) must be left out of the statistics."""
    from fairchem_gemnet import build_fairchem_gemnet_t, import_fairchem_gemnet, load_into_ours

    if import_fairchem_gemnet() is None:
        pytest.skip("fairchem-core not installed (pip install fairchem-core==1.10.0 --no-deps)")
    from fairchem.core.modules.scaling import ScaleFactor as FairchemScaleFactor

    sizes = GEMNET_T_PRESETS["small"]
    torch.manual_seed(0)
    theirs, run = build_fairchem_gemnet_t(**sizes)
    theirs.double().eval()
    ours = GemNetT(**sizes).double().eval()
    load_into_ours(ours, theirs)
    pos = positions(ethanol, 12) * 2.0
    assert (torch.cdist(pos, pos) > sizes["cutoff"]).any()
    batches = [pos[k:k + 4] for k in range(0, 12, 4)]
    fitted = ours.data_init_([lambda b=b: ours(b, Z) for b in batches])

    factors = {n: m for n, m in theirs.named_modules() if isinstance(m, FairchemScaleFactor)}
    order: list = []
    for name, m in factors.items():
        m.initialize_(index_fn=lambda name=name: order.append(name) if name not in order else None)
    run(batches[0], Z)
    for name in order:
        with factors[name].fit_context_():
            for b in batches:
                run(b, Z)
            factors[name].fit_()
    expected = {n: float(factors[n].scale_factor) for n in order}
    assert set(fitted) == set(expected) and len(fitted) == 3 * sizes["blocks"] + sizes["blocks"] + 1
    assert all(abs(v - 1.0) > 1e-3 for v in fitted.values())  # fitting changed every one of them
    for name, value in expected.items():
        assert fitted[name] == pytest.approx(value, rel=1e-10), name


def test_scale_factor_fit_makes_outputs_unit_scale(ethanol):
    """After `data_init_` each factor's output has the variance of its reference input on the fit batches
    (what fairchem's fit is for), and the fitted model's energy differs from the unfitted one's."""
    m = make()
    pos = positions(ethanol, 8)
    e_before = m(pos, Z)
    fitted = m.data_init_([lambda: m(pos[:4], Z), lambda: m(pos[4:], Z)])
    assert len(fitted) == 3 * GEMNET_T_PRESETS["small"]["blocks"] + GEMNET_T_PRESETS["small"]["blocks"] + 1
    for module in (mod for mod in m.modules() if type(mod).__name__ == "ScaleFactor"):
        module.stats = [0.0, 0.0, 0]
    m(pos[:4], Z), m(pos[4:], Z)
    for name, module in m.named_modules():
        if type(module).__name__ == "ScaleFactor":
            var_out, var_in, _ = module.stats
            module.stats = None
            # fitted in computation order: each factor's input is what it was fitted on, so exactly 1
            assert var_out / var_in == pytest.approx(1.0, rel=1e-9), name
    assert not torch.allclose(m(pos, Z), e_before)


# integrated activations where the paper puts them (output blocks); isilu everywhere overflows to NaN at
# initialization through ~40 stacked layers (the paper: "full replacement was unstable")
ACTS = [("original", "all"), ("irelu", "paper"), ("softplus", "all")]


@pytest.mark.parametrize("act,scope", ACTS)
def test_energy_invariant_forces_equivariant(act, scope, ethanol):
    m = make(act, scope)
    pos = positions(ethanol, 2)
    e, f = energy_and_forces(m, pos, Z, False)
    assert_symmetries(m, pos, Z, e_atol=1e-10 * max(1.0, e.abs().max().item()),
                      f_atol=1e-9 * max(1.0, f.abs().max().item()))


@pytest.mark.parametrize("act,scope", ACTS)
def test_forces_are_central_differences_of_energy(act, scope, ethanol):
    """F = −∇E including the angular terms: with the angles taken from detached positions the forces
    miss a term the differences see."""
    m = make(act, scope)
    pos = positions(ethanol, 1)
    _, f = energy_and_forces(m, pos, Z, False)
    fd = central_difference_forces(m, pos, Z)
    scale = max(1.0, f.abs().max().item())
    torch.testing.assert_close(f, fd, rtol=1e-6, atol=1e-7 * scale)

    basis = m.cbf_basis3.forward
    m.cbf_basis3.forward = lambda d, cos: basis(d, cos.detach())
    try:
        _, f_det = energy_and_forces(m, pos, Z, False)
    finally:
        del m.cbf_basis3.forward
    assert (f_det - fd).abs().max() > 1e-3 * scale


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
    e64, f64 = energy_and_forces(m64, pos, Z, False)
    e32, f32 = energy_and_forces(m32, pos.float(), Z, False)
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
