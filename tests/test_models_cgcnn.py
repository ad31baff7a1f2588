"""CGCNN (dcnn/models/cgcnn.py): symmetric, conservative, local, its BatchNorm statistics over real edges."""
import pytest
import torch

from dcnn.activations import replace_activations
from dcnn.models import build_model, denormalize
from conftest import assert_symmetries, central_difference_forces, dense_ef, dense_energy, positions

Z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])  # ethanol, MD17 order
MODELS = [("cgcnn", "original"), ("cgcnn", "igelu")]


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


def test_denormalize_counts_and_removes_batchnorm():
    cg = build_model("cgcnn", "small")
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in cg.modules()) == 3
    assert denormalize(cg) == 3
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in cg.modules())
    assert any(isinstance(m, torch.nn.LayerNorm) for m in cg.modules())  # LayerNorm stays


def test_paper_preset():
    assert build_model("cgcnn", "paper").embedding.embedding_dim == 512


def test_cgcnn_batchnorm_statistics_ignore_pairs_beyond_the_cutoff():
    """Train-mode BatchNorm must normalize over pairs inside the cutoff only (OCP's radius-graph edges)."""
    from dcnn.models.cgcnn import MaskedBatchNorm1d

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

    # in the model: a far atom's pairs are excluded from the statistics, so the other pairs' normalized
    # messages (and the energy without that atom's own embedding) do not depend on it
    model = build_model("cgcnn", cutoff=3.0).double().train()
    seen = []
    model.convs[0].bn.register_forward_pre_hook(lambda mod, args: seen.append(args[1].clone()))
    pos = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0, 1.2, 0], [20.0, 0, 0]]], dtype=torch.float64)
    dense_energy(model, pos, torch.tensor([6, 1, 8, 1]))
    (weight,) = seen
    assert weight.shape == (12,) and int(weight.sum()) == 6  # 3 close atoms: 6 ordered pairs inside
