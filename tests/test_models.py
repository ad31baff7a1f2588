import math

import pytest
import torch

from dcnn.activations import replace_activations
from dcnn.models import build_model, denormalize
from dcnn.models.pyg_reference import build_pyg_schnet
from dcnn.models.schnet import SCHNET_PRESETS
from conftest import assert_symmetries, central_difference_forces, dense_ef, positions

Z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol, MD17 order
MODELS = [("schnet", "original"), ("schnet", "isilu")]


def make(name, act, seed=0):
    torch.manual_seed(seed)
    m = build_model(name, "small")
    if act != "original":
        replace_activations(m, act, "all")
    return m.double().eval()


@pytest.mark.parametrize("name,act", MODELS)
def test_energy_invariant_forces_equivariant(name, act, ethanol):
    assert_symmetries(make(name, act), positions(ethanol), Z)


@pytest.mark.parametrize("name,act", MODELS)
def test_forces_are_central_differences_of_energy(name, act, ethanol):
    m = make(name, act)
    pos = positions(ethanol, 1)
    _, f = dense_ef(m, pos, Z, False)
    torch.testing.assert_close(f, central_difference_forces(m, pos, Z), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,act", MODELS)
def test_batch_of_one_equals_same_molecule_in_batch(name, act, ethanol):
    m = make(name, act)
    pos = positions(ethanol, 5)
    e_all, f_all = dense_ef(m, pos, Z, False)
    e_one, f_one = dense_ef(m, pos[3:4], Z, False)
    torch.testing.assert_close(e_one, e_all[3:4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f_one, f_all[3:4], rtol=1e-12, atol=1e-12)


def test_schnet_equals_pyg_schnet_with_same_weights(ethanol):
    """Same function as torch_geometric's SchNet, pairs beyond the cutoff included."""
    torch.manual_seed(0)
    pyg = build_pyg_schnet(**SCHNET_PRESETS["small"]).double()
    for mod in pyg.modules():  # PyG stores log 2 rounded to float32; we use the exact value
        if hasattr(mod, "shift"):
            mod.shift = math.log(2.0)
    ours = build_model("schnet", "small").double().load_pyg_(pyg)
    pos = positions(ethanol, 3) * 2.5  # stretched: some pairs beyond 6 Å
    assert (torch.cdist(pos, pos) > 6.0).any()
    e, f = dense_ef(ours, pos, Z, False)
    flat = pos.reshape(-1, 3).clone().requires_grad_(True)
    e_pyg = pyg(Z.repeat(3), flat, torch.arange(3).repeat_interleave(9)).view(-1)
    (g,) = torch.autograd.grad(e_pyg.sum(), flat)
    torch.testing.assert_close(e, e_pyg.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(f.reshape(-1, 3), -g, rtol=1e-10, atol=1e-10)


def test_energy_smooth_at_cutoff():
    m = make("schnet", "original")
    z = torch.tensor([6, 8])
    d = torch.tensor([5.999, 6.0, 6.001, 7.0], dtype=torch.float64)
    pos = torch.zeros(4, 2, 3, dtype=torch.float64)
    pos[:, 1, 0] = d
    e, f = dense_ef(m, pos, z, False)
    assert abs(e[0] - e[1]) < 1e-6 and e[2] == e[3]  # no pair term beyond the cutoff
    assert f[1:].abs().max() < 1e-6


def test_denormalize_is_a_no_op_on_schnet():
    assert denormalize(build_model("schnet", "small")) == 0


def test_presets_and_bad_sizes():
    paper = build_model("schnet", "paper")
    assert paper.embedding.embedding_dim == 1024 and len(paper.interactions) == 5
    assert paper.rbf.offset.numel() == 200
    with pytest.raises(ValueError, match="unknown model"):
        build_model("painn")
    with pytest.raises(ValueError, match="unknown size"):
        build_model("schnet", "small", embedding=3)


@pytest.mark.parametrize("act", ["original", "irelu"])
def test_schnet_on_periodic_cells(act):
    """Translation + wrap, rotation, supercell extensivity, forces = central differences across the
    boundary, a cell smaller than the cutoff (tests/conftest.py assert_periodic_physics)."""
    from conftest import assert_periodic_physics

    assert_periodic_physics(make("schnet", act), cutoff=SCHNET_PRESETS["small"]["cutoff"])
