"""MACE through the plug-in API (dcnn/models/mace.py): symmetries, forces vs central differences, the
wrapped activations are MACE's own function, placement counts, no BatchNorm, a short learning run.
The tiny study run with `--models schnet,mace,plug-in` is tests/test_plugins.py's Ray test."""
import copy

import pytest
import torch

pytest.importorskip("mace", reason="mace-torch is not installed (optional extra: pip install 'dcnn-ablate[mace]')")

from conftest import assert_symmetries, central_difference_forces, positions  # noqa: E402

ETHANOL = {"elements": (1, 6, 8), "n_atoms": 9}


@pytest.fixture(scope="module")
def built():
    """One float64 MACE per size set (building one costs seconds: e3nn generates code); tests get copies."""
    from dcnn.models import build_model

    cache = {}

    def get(**sizes):
        key = tuple(sorted(sizes.items()))
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = build_model("mace", "small", ETHANOL, **sizes).to(torch.float64)
        return copy.deepcopy(cache[key])
    return get


def test_energy_invariant_forces_equivariant(ethanol, built):
    Z = torch.as_tensor(ethanol.numbers)
    assert_symmetries(built(), positions(ethanol), Z)


def test_forces_match_central_differences(ethanol, built):
    """−∂E/∂x by autograd through the adapter's graph equals central differences of E (float64); a
    2.5 Å cutoff puts pairs near r_max, where the radius graph changes and MACE's envelope must be smooth."""
    from dcnn.models import energy_and_forces

    Z = torch.as_tensor(ethanol.numbers)
    pos = positions(ethanol, 1)
    for model in (built(), built(cutoff=2.5)):
        _, f = energy_and_forces(model, pos, Z, create_graph=False)
        torch.testing.assert_close(f, central_difference_forces(model, pos, Z), rtol=1e-6, atol=1e-7)
        assert f.abs().max() > 1e-3  # not trivially zero


def test_wrapped_activations_are_maces_own_function_and_swap_by_scope(ethanol, built):
    """The swappable MomentNormalized(SiLU) gives upstream MACE's energy exactly; paper scope swaps the
    radial MLPs (2 interactions × 2 layers), all scope also the readout gate; no BatchNorm."""
    from dcnn.activations import count_activations, replace_activations
    from dcnn.models.mace import MomentNormalized

    Z = torch.as_tensor(ethanol.numbers)
    pos = positions(ethanol, 3)
    model = built()
    upstream = model._build(model.elements, 8.0, 5.0, 8, 1, 2, 16, 16, 2, 16, 2).to(torch.float64)
    upstream.load_state_dict(model.mace.state_dict())
    graph = model.graph(pos.clone().requires_grad_(True), Z)
    torch.testing.assert_close(model(pos, Z), upstream(graph, compute_force=False)["energy"], rtol=0, atol=0)

    assert model.paper_activation_scope == ("mace.interactions.0.conv_tp_weights", "mace.interactions.1.conv_tp_weights")
    assert count_activations(model) == count_activations(model, "silu") == 5
    for scope, n in (("paper", 4), ("all", 5)):
        m = replace_activations(built(), "irelu", scope)
        assert m.replaced_activations == count_activations(m, "irelu") == n
        gate = m.mace.readouts[1].non_linearity.acts[0].act.name
        assert gate == ("irelu" if scope == "all" else "silu")
        m(pos, Z)  # the e3nn normalisation is redone for the new activation: E[(½relu(z)²)²] = 3/8
        scales = {a.act.name: a._scale for a in m.modules() if isinstance(a, MomentNormalized)}
        assert scales["irelu"] == pytest.approx((8 / 3) ** 0.5, rel=5e-3)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with pytest.raises(ValueError, match=r"built for elements \[1, 6, 8\]; the data has \[7\]"):
        model(pos, torch.tensor([6, 6, 7, 1, 1, 1, 1, 1, 1]))


def test_short_training_run_learns():
    """IReLU + LR (C = 10) + ES on 20 frames, 16 Adam steps: validation errors fall (forces from ~the
    zero-force baseline) — the adapter trains end to end through our force loss."""
    from dcnn.config import TrainConfig
    from dcnn.train import Trainer

    cfg = TrainConfig(model="mace", activation="irelu", rescale=True, rescale_factor=10.0, shift=True, lr=2e-2,
                      n_train=20, n_val=20, n_test=0, batch_size=5, epochs=4)
    trainer = Trainer(cfg)
    before = trainer.task.evaluate("val")
    for _ in range(cfg.epochs):
        after = trainer.run_epoch()
    assert trainer.task.info["activations_replaced"] == 4 and not trainer.diverged
    assert after["force_loss"] < 0.98 * before["force_loss"]
    assert after["energy_loss"] < 0.7 * before["energy_loss"]
