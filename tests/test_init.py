"""`init = lsuv` (dcnn/init.py): unit output variance per nn.Linear on a training batch, for any model
(hooks, no per-model code), seeded, without touching the training order, BatchNorm statistics or the
exactness of resume."""
import math

import pytest
import torch
from torch import nn

from dcnn.activations import get_activation, replace_activations
from dcnn.config import TrainConfig
from dcnn.init import LSUV_TOLERANCE, initialise_, lsuv_
from dcnn.atomistic.graph import molecule_graph
from dcnn.models import build_model, prepare
from dcnn.models.fcn import FCN
from dcnn.train import Trainer

from conftest import positions

Z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
FAST = dict(n_train=60, n_val=20, n_test=20, batch_size=20)


def _output_variances(model, forward):
    out = {}

    def hook(module, args, output, name):
        out.setdefault(name, float(output.double().var()))  # the first call of a layer (returns None)

    hooks = [m.register_forward_hook(lambda mod, a, o, name=name: hook(mod, a, o, name))
             for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        forward()
    for h in hooks:
        h.remove()
    return out


@pytest.mark.parametrize("model_name,act", [("schnet", "irelu"), ("dimenetpp", "irelu"), ("cgcnn", "isilu"),
                                           ("forcenet", "igelu")])
def test_every_linear_layer_has_unit_output_variance_after_lsuv(model_name, act, ethanol):
    torch.manual_seed(0)
    model = build_model(model_name, "small").double()
    replace_activations(model, act, "all")
    pos = positions(ethanol, 8)
    graph = prepare(model, molecule_graph(pos, Z))
    forward = lambda: model(graph)  # noqa: E731
    before = _output_variances(model, forward)
    done = lsuv_(model, forward)
    after = _output_variances(model, forward)
    fitted = set(done["scales"])
    assert fitted and done["layers"] == len(fitted)
    # the built model was off unit scale (DimeNet++ with ½·relu² everywhere overflows at its default init)
    assert any(not math.isfinite(before[n]) or abs(math.log(before[n])) > 0.5 for n in fitted)
    for name in fitted:
        assert abs(after[name] - 1.0) < LSUV_TOLERANCE, (name, after[name])
    left = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - fitted
    # scalar readouts start at zero; left alone: zero-output hidden layers and layers whose weights the
    # model uses without calling the module (DimeNet++'s embedding splits `emb.lin`)
    assert done["readouts_zeroed"] and all(model.get_submodule(n).out_features == 1 for n in done["readouts_zeroed"])
    for name in done["readouts_zeroed"]:
        assert not model.get_submodule(name).weight.any(), name
    for name in left - set(done["readouts_zeroed"]):
        assert before.get(name, 0.0) == 0.0, name
    with torch.no_grad():
        assert float(model(graph).abs().max()) == 0.0  # E = 0 (and F = 0) at the start


def test_lsuv_revives_a_deep_irelu_network_that_collapses_at_default_init():
    """The PINN's 6×40 Glorot FCN with ½·relu²: q → (3σ_w²/8)·q² per layer, so its output is ≈ 0 at the
    default init; with LSUV its output has a usable scale (the mechanism of issue 16)."""
    torch.manual_seed(0)
    net = FCN(hidden=40, hidden_layers=6, batchnorm=False, in_dim=2, out_dim=2, lower=(-1.0, 0.0),
              upper=(1.0, 1.0)).double()
    replace_activations(net, "irelu", "all")
    x = torch.rand(512, 2, dtype=torch.float64) * torch.tensor([2.0, 1.0]) - torch.tensor([1.0, 0.0])
    features = lambda: net.net[:-1]((x - net.center) / net.half_width)  # noqa: E731 (what the readout sees)
    with torch.no_grad():
        std_default, out_default = float(features().std()), float(net(x).std())
    done = lsuv_(net, lambda: net(x))
    with torch.no_grad():
        std_lsuv, out_lsuv = float(features().std()), float(net(x).abs().max())
    assert std_default < 1e-3 and out_default < 1e-3 and std_lsuv > 0.05, (std_default, std_lsuv)
    # the two-field readout is the model's output: zeroed, so u starts at 0 whatever the activation
    assert done["readouts_zeroed"] == ["net.12"] and out_lsuv == 0.0


def test_lsuv_works_on_a_model_it_has_never_seen():
    """Plug-ins: any module with nn.Linear layers, with its own activation class, in forward order."""

    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(5, 32)
            self.act = Square()
            self.b = nn.Linear(32, 32)
            self.head = nn.Sequential(get_activation("irelu"), nn.Linear(32, 16), nn.Linear(16, 1))

        def forward(self, x):
            return self.head(self.b(self.act(self.a(x) * 3.0)))

    torch.manual_seed(1)
    net = Net().double()
    x = torch.randn(64, 5, dtype=torch.float64)
    done = lsuv_(net, lambda: net(x))
    assert set(done["scales"]) == {"a", "b", "head.1"} and done["readouts_zeroed"] == ["head.2"]
    after = _output_variances(net, lambda: net(x))
    assert all(abs(after[n] - 1) < LSUV_TOLERANCE for n in ("a", "b", "head.1"))


def test_batchnorm_statistics_are_not_changed_by_the_lsuv_passes(ethanol):
    torch.manual_seed(0)
    model = build_model("cgcnn", "small").double().train()
    pos = positions(ethanol, 4)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    assert before
    graph = molecule_graph(pos, Z)
    initialise_(model, "lsuv", [lambda: model(graph)])
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_lsuv_trials_are_seeded_and_leave_the_training_order_alone():
    """Same seed → the same initial weights; LSUV uses a generator of its own, so an LSUV arm draws the same
    batches and global random numbers as its default twin and differs only in the weights' scales."""
    a = Trainer(TrainConfig(model="schnet", activation="irelu", init="lsuv", **FAST))
    b = Trainer(TrainConfig(model="schnet", activation="irelu", init="lsuv", **FAST))
    c = Trainer(TrainConfig(model="schnet", activation="irelu", init="default", **FAST))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert not all(torch.equal(v, c.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert torch.equal(a.shuffle.get_state(), c.shuffle.get_state())
    assert list(a.task.batches(a.shuffle, 20))[0][1].tolist() == list(c.task.batches(c.shuffle, 20))[0][1].tolist()
    assert a.task.info["init_layers_scaled"] == 16 and c.task.info["init_layers_scaled"] == 0


def test_resume_with_lsuv_is_exact_and_the_checkpoint_records_the_init(tmp_path):
    cfg = TrainConfig(model="cgcnn", activation="irelu", init="lsuv", epochs=3, dtype="float64", rescale=True, **FAST)
    straight = Trainer(cfg)
    for _ in range(3):
        straight.run_epoch()
    first = Trainer(cfg)
    first.run_epoch()
    first.save(tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert state["init"]["init"] == "lsuv" and state["init"]["lsuv_layers"] == first.task.info["init_layers_scaled"] > 0
    torch.manual_seed(999)
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ck.pt")
    while not resumed.done:
        resumed.run_epoch()
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_init_is_validated():
    with pytest.raises(ValueError, match="init='orthogonal' is not allowed; choose one of: default, lsuv"):
        TrainConfig(init="orthogonal")
