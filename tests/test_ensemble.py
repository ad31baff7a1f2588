"""Seed ensembles (dcnn/ensemble.py): S seeds stacked with torch.func and vmapped over functional_call
train exactly as S separate eager models (float64): energies, forces, losses, parameter gradients,
Adam's updates and BatchNorm's running statistics."""
import copy

import pytest
import torch

from dcnn.activations import replace_activations
from dcnn.ensemble import SeedEnsemble
from dcnn.atomistic.graph import molecule_graph
from dcnn.models import build_model

from conftest import dense_ef, positions


def _models(name, act, n=3):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        m = build_model(name, "small")
        if act != "original":
            replace_activations(m, act, "paper")
        out.append(m.double().train())
    return out


@pytest.mark.parametrize("name,act", [("schnet", "irelu"), ("cgcnn", "isilu")])
def test_vmapped_seeds_train_exactly_as_separate_models(name, act, ethanol):
    """CGCNN has BatchNorm in train mode: each seed's statistics come from its own batch."""
    models = _models(name, act)
    singles = [copy.deepcopy(m) for m in models]
    ensemble = SeedEnsemble(models)
    R = positions(ethanol, 48)
    Z = torch.as_tensor(ethanol.numbers)
    E = torch.as_tensor(ethanol.energies[:48]) / 1e4
    F = torch.as_tensor(ethanol.forces[:48]) / 1e4
    batches = torch.arange(48).view(3, 2, 8)  # per seed its own 8 frames, two steps
    graph = molecule_graph(R[:8], Z)  # one structure for every seed's batch (same molecule, 8 frames)
    flat = lambda idx: R[idx].reshape(3, -1, 3)  # noqa: E731 — per seed its frames' positions [S, A, 3]
    e_ens, f_ens = ensemble.energy_and_forces(flat(batches[:, 0]), graph)
    f_ens = f_ens.reshape(3, 8, -1, 3)
    for s, m in enumerate(singles):
        e, f = dense_ef(m, R[batches[s, 0]], Z)
        torch.testing.assert_close(e_ens[s], e.detach(), rtol=0, atol=1e-10)
        torch.testing.assert_close(f_ens[s], f.detach(), rtol=0, atol=1e-6 * max(1.0, float(f.abs().max())))
    # the E-and-F call above ran BatchNorm in train mode: start both sides from the same statistics again
    for s, m in enumerate(singles):
        ensemble.model(s, m)
    opt = torch.optim.Adam(ensemble.parameters(), lr=1e-3)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in singles]
    for step in range(2):
        index = batches[:, step]
        losses = ensemble.step(opt, flat(index), graph, E[index], F[index].reshape(3, -1, 3), 30.0)
        for s, (m, o) in enumerate(zip(singles, opts)):
            e, f = dense_ef(m, R[index[s]], Z, create_graph=True)
            loss = (e - E[index[s]]).abs().mean() + 30 * (f - F[index[s]]).abs().mean()
            o.zero_grad()
            loss.backward()
            o.step()
            assert float(losses[s]) == pytest.approx(float(loss), abs=1e-10), (step, s)
    for s, m in enumerate(singles):
        stacked = {**ensemble.params, **ensemble.buffers}
        for k, v in m.state_dict().items():
            torch.testing.assert_close(stacked[k][s].to(v.dtype), v, rtol=0, atol=1e-10, msg=f"{k} seed {s}")
    if name == "cgcnn":
        assert int(ensemble.buffers["convs.0.bn.num_batches_tracked"][0]) == 3  # the E+F call and two steps


def test_an_ensemble_needs_one_architecture():
    a, b = build_model("schnet", "small"), build_model("schnet", "small", hidden=32)
    with pytest.raises(ValueError, match="one architecture"):
        SeedEnsemble([a, b])
