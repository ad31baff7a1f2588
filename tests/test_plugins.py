"""Bring your own model (dcnn/models/plugins.py): a plug-in in a folder that is on no default path joins
a real study (Ray in-process, MLflow on sqlite) and its report; every contract violation is refused
before Ray starts, naming the plug-in and what broke; entry-point discovery through importlib.metadata.
"""
import itertools

import numpy as np
import json
import textwrap

import pandas as pd
import pytest

from conftest import write_study

_ids = itertools.count()

# A small distance-MLP energy model on the graph layout. Placeholders let each case break one part of the
# contract.
PLUGIN = '''
import torch
from torch import nn
from dcnn.models import ModelSpec
from dcnn.models.common import scatter_sum, sum_per_structure

class PairNet(nn.Module):
    def __init__(self, hidden=16, cutoff=5.0):
        super().__init__()
        self.cutoff = cutoff
        self.filter = nn.Sequential(nn.Linear(8, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.embed = nn.Embedding(10, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.register_buffer("mu", torch.linspace(0.5, cutoff, 8))

    def forward(self, graph):
        positions = graph.positions
        POSITIONS
        source, target = graph.edge_index
        d = (positions[source] - positions[target]).pow(2).sum(-1).add(1e-9).sqrt()
        w = self.filter(torch.exp(-(d[:, None] - self.mu) ** 2))
        h = self.embed(graph.numbers % 10)
        h = h + scatter_sum(w * h[source], target, h.shape[0])
        return RETURN

spec = ModelSpec(build=PairNet, presets=PRESETS, original_activation=ACTIVATION, paper_placement=PLACEMENT)
EXTRA
'''
GOOD = {"EXTRA": "", "POSITIONS": "", "RETURN": "sum_per_structure(self.head(h).squeeze(-1), graph)", "PRESETS": '{"small": {"hidden": 16, "cutoff": 5.0}}',
        "ACTIVATION": '"silu"', "PLACEMENT": '("filter",)'}


def write_plugin(folder, **changes) -> str:
    """A plug-in package in `folder` (a new name each time, never imported before); returns its model name."""
    name = f"myplug{next(_ids)}"
    pkg = folder / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    source = PLUGIN
    for key, value in {**GOOD, **changes}.items():
        source = source.replace(key, value)
    (pkg / "potentials.py").write_text(source)
    return f"{name}.potentials:spec"


@pytest.fixture
def plugin_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("plugins")
    monkeypatch.syspath_prepend(str(folder))  # the driver finds it; Ray's workers do not by themselves
    return folder


def _have_mace() -> bool:
    try:
        import mace  # noqa: F401
        return True
    except ImportError:  # mace-torch is an optional extra; the plug-in path is tested without it
        return False


def test_cli_models_mix_builtin_optional_and_plugin_pass_every_check(plugin_dir, tmp_path, monkeypatch, capsys):
    """`ablate --models schnet,mace,pkg.mod:spec` passes every check up to the start of Ray."""
    import orchestrator.runner
    from orchestrator.cli import main

    class RayWouldStart(Exception):
        pass

    def ray_would_start(*a, **k):
        raise RayWouldStart

    monkeypatch.setattr(orchestrator.runner, "_init_ray", ray_would_start)
    models = ["schnet", "mace", write_plugin(plugin_dir)] if _have_mace() else ["schnet", write_plugin(plugin_dir)]
    study = write_study(tmp_path / "mix.yaml", [{"activation": ["irelu"], "denorm": [True], "rescale": [True]}])
    with pytest.raises(RayWouldStart):
        main(["ablate", "--study", study, "--models", ",".join(models), "--storage", str(tmp_path / "res")])
    assert "error" not in capsys.readouterr().err


@pytest.mark.slow
def test_plugin_and_mace_join_a_real_study(plugin_dir, ray_session, tracking_uri, tmp_path, capsys):
    """`--models mace,pkg.mod:spec`: each trains in a Ray worker (the plug-in's folder is on no worker's
    path: the study hands it over) and appears in the report, MLflow and the twin note under its name."""
    from mlflow import MlflowClient

    from orchestrator.cli import main

    plugin = write_plugin(plugin_dir)
    models = ["mace", plugin] if _have_mace() else [plugin]
    # ES without LR: one optimizer step leaves errors near the baselines (not blown up), for every model
    arm = {"activation": "irelu", "denorm": True, "rescale": False, "shift": True}
    study = write_study(tmp_path / "plug.yaml", [{**{k: [v] for k, v in arm.items()}, "denorm": [True, False]}], arm,
                        fixed={"n_train": 20, "n_val": 10, "n_test": 10, "epochs": 1})
    rc = main(["ablate", "--study", study, "--models", ",".join(models), "--storage", str(tmp_path / "res"),
               "--tracking-uri", tracking_uri, "--experiment", "plugin-study"])
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = pd.read_csv(tmp_path / "res/plugin-study/report/summary.csv")
    assert set(summary.model) == set(models)
    ran = summary[summary.arm == "irelu+DN+ES"].set_index("model")
    assert ran.F_mean.notna().all() and (ran.n == 1).all(), ran
    assert f"## ethanol · {plugin}" in (tmp_path / "res/plugin-study/report/report.md").read_text()
    # none of them has BatchNorm: the DN-free arm is the DN arm's twin, for the plug-in too
    assert all(f"{m}: has no BatchNorm" in out for m in models)
    trials = pd.read_csv(tmp_path / "res/plugin-study/report/trials.csv")
    c = MlflowClient(tracking_uri)
    names = {c.get_run(r).info.run_name for r in trials.mlflow_run_id.dropna().unique()}
    assert f"{plugin} · irelu · DN+ES · seed 0" in names


BROKEN = [
    ("cannot-import", None, "cannot import module 'nosuchpkg_zz.potentials': ModuleNotFoundError"),
    ("import-raises", {"POSITIONS": "", "PRESETS": "1/0"}, "cannot import module"),
    ("not-a-spec", {"EXTRA": "spec = PairNet"}, "is type (<class"),
    ("returns-a-module", {"EXTRA": "spec = lambda: PairNet()"}, "is PairNet (PairNet("),
    ("no-small-preset", {"PRESETS": '{"tiny": {"hidden": 8}}'}, "include 'small'"),
    ("unknown-activation", {"ACTIVATION": '"swish"'}, "original_activation 'swish' is not one of"),
    ("wrong-shape", {"RETURN": "sum_per_structure(self.head(h).squeeze(-1), graph)[:, None]"},
     "shape (2, 1) for 2 frames; expected one energy per frame"),
    ("detached", {"POSITIONS": "positions = positions.detach()"}, "not differentiable w.r.t. positions (gradient None)"),
    ("zero-gradient", {"RETURN": "sum_per_structure(self.head(h).squeeze(-1), graph) * 0 + positions.sum() * 0"},
     "not differentiable w.r.t. positions (gradient zero)"),
    ("forward-raises", {"POSITIONS": "raise RuntimeError('kaput')"}, "forward(graph) failed"),
    ("placement-no-module", {"PLACEMENT": '("filters",)'}, "paper_placement 'filters' matches no submodule"),
    ("placement-no-activation", {"PLACEMENT": '("embed",)'}, "paper_placement 'embed' holds no activation module"),
    ("no-swappable-activation", {"PLACEMENT": '("",)', "RETURN": "sum_per_structure(torch.nn.functional.silu(h).sum(-1), graph)",
                                 "nn.SiLU()": "nn.Identity()"}, "no activation module the ablation can swap"),
]


@pytest.mark.parametrize("case,changes,message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_plugin_is_refused_before_ray(case, changes, message, plugin_dir, tmp_path, monkeypatch):
    import orchestrator.runner
    from orchestrator.runner import AblateOptions, run_ablation

    def no_ray(*a, **k):
        raise AssertionError("Ray started although the plug-in is broken")

    monkeypatch.setattr(orchestrator.runner, "_init_ray", no_ray)
    name = "nosuchpkg_zz.potentials:spec" if changes is None else write_plugin(plugin_dir, **changes)
    study = write_study(tmp_path / "s.yaml", [{"activation": ["irelu"], "denorm": [True], "rescale": [True]}],
                        models=(name,), fixed={"n_train": 20, "n_val": 10, "n_test": 10, "epochs": 1})
    with pytest.raises(ValueError) as err:
        run_ablation(AblateOptions(study=study, storage=str(tmp_path / "res")))
    assert message in str(err.value)
    assert repr(name) in str(err.value)  # the message names the plug-in
    assert not (tmp_path / "res").exists()


def test_presets_and_sizes_of_a_plugin(plugin_dir):
    """Sizes the presets declare pass through TrainConfig; others, and unknown presets, are refused (when
    the config is resolved: `resolve_config`, which the CLI, the trainables, the study and the Trainer call)."""
    from dcnn.config import TrainConfig
    from dcnn.registry import resolve_config
    from dcnn.models import build_model, default_activation

    name = write_plugin(plugin_dir, PRESETS='{"small": {"hidden": 16, "cutoff": 5.0}, "wide": {"hidden": 64, "cutoff": 5.0}}')
    cfg = TrainConfig(model=name, sizes={"hidden": 8})
    assert build_model(name, cfg.preset, **cfg.model_sizes()).filter[0].out_features == 8
    assert build_model(name, "wide").filter[0].out_features == 64
    assert default_activation(name) == "silu"
    with pytest.raises(ValueError, match=r"size field\(s\) \['filters'\] do not apply"):
        resolve_config(TrainConfig(model=name, sizes={"filters": 8}))
    with pytest.raises(ValueError, match="preset='paper' is not allowed; choose one of: small, wide"):
        resolve_config(TrainConfig(model=name, preset="paper"))
    from orchestrator.validate import check_set  # --set preset=wide: left to the study's models to judge
    check_set({"preset": "wide"})


# a plug-in whose head width is a keyword of its class and in none of its presets: a size all the same
OWN_SIZE = """
class WideHead(PairNet):
    def __init__(self, hidden=16, cutoff=5.0, head_width=16):
        super().__init__(hidden, cutoff)
        self.head = nn.Sequential(nn.Linear(hidden, head_width), nn.SiLU(), nn.Linear(head_width, 1))

wide = ModelSpec(build=WideHead, presets={"small": {"hidden": 16, "cutoff": 5.0}}, original_activation="silu",
                 paper_placement=("filter",))
"""


def test_a_plugins_own_size_is_set_by_name(plugin_dir, capsys):
    """issue 23: a size a plug-in's build takes (not one of ours, not in its presets) set as `size.head_width`
    (a study's flat key, Tune's, MLflow's), as a `sizes` mapping, or `--size head_width=24` reaches the built
    model, converted to the type of build's default; a size it lacks is refused naming the model and its sizes."""
    from dcnn.cli import build_parser, config_from_args
    from dcnn.config import TrainConfig
    from dcnn.registry import get_spec, resolve_config
    from dcnn.train import Trainer
    from trainables.dcnn_trainables import train_config_from_tune

    name = write_plugin(plugin_dir, EXTRA=OWN_SIZE).replace(":spec", ":wide")
    assert get_spec(name).size_names() == ("hidden", "cutoff", "head_width")
    fast = {"model": name, "n_train": 20, "n_val": 10, "n_test": 10, "epochs": 1, "compile": "off"}
    cfg = train_config_from_tune({**fast, "size.head_width": 24.0, "arm": "x"})  # as a trial gets it
    assert cfg.sizes == {"head_width": 24} and type(cfg.sizes["head_width"]) is int and cfg.resolved
    assert cfg.to_dict()["size.head_width"] == 24 and "sizes" not in cfg.to_dict()
    trainer = Trainer(cfg)
    assert trainer.config is cfg  # resolved once, by the trainable
    assert trainer.model.head[0].out_features == 24 and trainer.task.info["n_parameters"] > 0
    assert resolve_config(TrainConfig.from_dict({**fast, "sizes": {"head_width": 8}})).model_sizes() == {"head_width": 8}
    args = build_parser().parse_args(["train", "--model", name, "--size", "head_width=12", "--hidden", "8"])
    assert config_from_args(args).sizes == {"head_width": 12, "hidden": 8}
    with pytest.raises(ValueError, match=rf"size field\(s\) \['filters'\] do not apply to model '{name}'; its sizes "
                                         rf"are: hidden, cutoff, head_width"):
        resolve_config({**fast, "size.filters": 8})
    with pytest.raises(ValueError, match="size head_width='wide' is not a valid int"):
        resolve_config({**fast, "size.head_width": "wide"})


def test_entry_point_discovery(tmp_path, monkeypatch):
    """A distribution's `dcnn_ablate.models` entry points name models, found by importlib.metadata on
    sys.path (a real dist-info folder, as pip writes it), also when the target is a function."""
    from dcnn.config import TrainConfig
    from dcnn.models import build_model, get_spec, model_names
    from dcnn.plugin_check import check_plugin
    from search_spaces.study import load_study

    pkg = write_plugin(tmp_path).split(".")[0]
    (tmp_path / pkg / "factory.py").write_text(f"def make():\n    from {pkg}.potentials import spec\n    return spec\n")
    dist = tmp_path / "my_potentials-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-potentials\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [dcnn_ablate.models]
        pairnet = {pkg}.potentials:spec
        pairnet-fn = {pkg}.factory:make
        broken = nosuchpkg_ep.mod:spec
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"pairnet", "pairnet-fn", "broken"} <= set(model_names())
    for name in ("pairnet", "pairnet-fn"):
        assert get_spec(name).name == name and get_spec(name).paper_placement == ("filter",)
        assert TrainConfig(model=name).model == name
        assert check_plugin(name)["paper_activations"] == 1
    assert build_model("pairnet").paper_activation_scope == ("filter",)
    from dcnn.models.plugins import placement_paths  # wildcards keep the outermost match only
    assert placement_paths(build_model("pairnet"), ("*", "filter")) == ("",)
    assert placement_paths(build_model("pairnet"), ("filter*", "head.*")) == ("filter", "head.0", "head.1", "head.2")
    with pytest.raises(ValueError, match="'broken' .entry point .*cannot import it: ModuleNotFoundError"):
        get_spec("broken")
    study_file = tmp_path / "ep.yaml"
    study_file.write_text("designs: [{activation: [irelu], denorm: [true], rescale: [true]}]\nmodels: [pairnet]\n")
    assert load_study(str(study_file)).models == ["pairnet"]


def test_names_with_dots_and_colons_are_safe_folder_names():
    from dcnn.models.plugins import safe_name
    from search_spaces.study import CellPart, trial_name

    assert safe_name("schnet") == "schnet"
    a, b = safe_name("my.pkg:build"), safe_name("my.pkg_build")
    assert a != b and ":" not in a and a.startswith("my.pkg_build-")
    assert CellPart(0)({"cell": "my.pkg:build/irelu+DN+LR"}) == "my.pkg:build"
    assert trial_name({"model": "my.pkg:build", "activation": "irelu", "denorm": True, "rescale": True,
                       "seed": 0}) == "my.pkg:build · irelu · DN+LR · seed 0"


def test_builtins_go_through_the_same_spec():
    from dcnn.models import BUILTIN_SPECS, MODELS, build_model, get_spec

    for name, (cls, presets, act, family) in MODELS.items():
        spec = get_spec(name)
        assert spec is BUILTIN_SPECS[name] and spec.original_activation == act and spec.presets is presets
        assert spec.family == family
        assert build_model(name).paper_activation_scope == tuple(cls.paper_activation_scope)


PYG_PLUGIN = '''"""PyG's SchNet as it is: its own ShiftedSoftplus class, its own graph; our contract around it."""
import torch
from torch import nn
from torch_geometric.nn.models.schnet import SchNet, ShiftedSoftplus

from dcnn.models import ModelSpec
from dcnn.models.pyg_reference import AllPairsWithinCutoff


class PyGSchNet(nn.Module):
    def __init__(self, hidden=16, filters=16, interactions=INTERACTIONS, gaussians=10, cutoff=5.0):
        super().__init__()
        self.model = SchNet(hidden_channels=hidden, num_filters=filters, num_interactions=interactions,
                            num_gaussians=gaussians, cutoff=cutoff, interaction_graph=AllPairsWithinCutoff(cutoff))

    def forward(self, positions, numbers):
        b, n, _ = positions.shape
        batch = torch.arange(b, device=positions.device).repeat_interleave(n)
        return self.model(numbers.repeat(b), positions.reshape(-1, 3), batch).view(-1)


spec = ModelSpec(build=PyGSchNet, presets={"small": {}}, original_activation="ssp",
                 paper_placement=PLACEMENT, ACTIVATION_TYPES)
'''


def _pyg_plugin(folder, placement, activation_types, interactions=2) -> str:
    name = f"pygplug{next(_ids)}"
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text("")
    source = (PYG_PLUGIN.replace("INTERACTIONS", str(interactions)).replace("PLACEMENT", placement)
              .replace("ACTIVATION_TYPES", activation_types))
    (folder / name / "potentials.py").write_text(source)
    return f"{name}.potentials:spec"


@pytest.mark.parametrize("placement,types", [
    ('("model",)', "activation_types=(ShiftedSoftplus,)"),  # the class listed, a wildcard-free scope
    ('("model.interactions.*.mlp.1", "model.interactions.*.act", "model.act")', "activation_types=()"),  # by path
], ids=["activation-types", "paths-name-the-modules"])
def test_third_party_model_with_its_own_activation_class_is_ablated(plugin_dir, placement, types):
    """PyG's SchNet keeps its own ShiftedSoftplus (2 per interaction + 1 in the readout): named by class in
    `activation_types`, or by the placement paths themselves, every one of them is swapped — and only
    those; `original` leaves the model as it is."""
    from torch_geometric.nn.models.schnet import ShiftedSoftplus

    from dcnn.activations import count_activations, replace_activations
    from dcnn.models import build_model
    from dcnn.plugin_check import check_plugin

    name = _pyg_plugin(plugin_dir, placement, types, interactions=3)
    found = check_plugin(name)
    expected = 2 * 3 + 1
    assert found["paper_activations"] == expected
    model = build_model(name)
    assert sum(isinstance(m, ShiftedSoftplus) for m in model.modules()) == expected
    replace_activations(model, "irelu", "paper")
    assert model.replaced_activations == expected and count_activations(model, "irelu") == expected
    assert not any(isinstance(m, ShiftedSoftplus) for m in model.modules())


def test_torch_activations_beyond_the_common_ones_are_recognised():
    """nn.CELU, nn.Mish, nn.Hardtanh, nn.PReLU... are swappable; softmax and attention are not activations."""
    from torch import nn as tnn

    from dcnn.activations import is_activation, replace_activations

    model = tnn.Sequential(tnn.Linear(3, 4), tnn.CELU(), tnn.Linear(4, 4), tnn.Mish(), tnn.Hardtanh(),
                           tnn.PReLU(), tnn.Softmax(dim=-1))
    model.paper_activation_scope = ("",)
    assert [is_activation(m) for m in model] == [False, True, False, True, True, True, False]
    replace_activations(model, "isilu", "all")
    assert model.replaced_activations == 4 and isinstance(model[6], tnn.Softmax)


@pytest.mark.slow
def test_third_party_model_joins_a_real_study(plugin_dir, ray_session, tracking_uri, tmp_path, capsys):
    """PyG's SchNet through the plug-in contract in a Ray study: the IReLU arm swaps its 2n + 1
    ShiftedSoftplus modules in the worker, `original` swaps none, both appear in the report."""
    from orchestrator.cli import main

    plugin = _pyg_plugin(plugin_dir, '("model",)', "activation_types=(ShiftedSoftplus,)", interactions=2)
    study = write_study(tmp_path / "pyg.yaml", [{"activation": ["irelu", "original"], "denorm": [True],
                                                 "rescale": [True]}], {"activation": "irelu", "denorm": True, "rescale": True},
                        fixed={"n_train": 20, "n_val": 10, "n_test": 10, "epochs": 1})
    rc = main(["ablate", "--study", study, "--models", plugin, "--storage", str(tmp_path / "res"),
               "--tracking-uri", tracking_uri, "--experiment", "pyg-study"])
    out = capsys.readouterr().out
    assert rc == 0, out
    built = {}
    for params in (tmp_path / "res/pyg-study").glob("*/params.json"):
        last = [line for line in (params.parent / "result.json").read_text().splitlines() if line.strip()][-1]
        built[json.loads(params.read_text())["activation"]] = json.loads(last)["activations_replaced"]
    assert built == {"irelu": 5, "original": 0}
    summary = pd.read_csv(tmp_path / "res/pyg-study/report/summary.csv")
    assert set(summary.arm) == {"irelu+DN+LR", "original+DN+LR"} and (summary.seeds == 1).all()  # 1 epoch: no claim on errors


DENSE_PLUGIN = '''"""A plug-in written before the graph layout: forward(positions [B, N, 3], numbers [N])."""
import torch
from torch import nn
from dcnn.models import ModelSpec

class DensePairNet(nn.Module):
    def __init__(self, hidden=16, cutoff=5.0):
        super().__init__()
        self.filter = nn.Sequential(nn.Linear(8, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.embed = nn.Embedding(10, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.register_buffer("mu", torch.linspace(0.5, cutoff, 8))

    def forward(self, positions, numbers):
        d = (positions[:, :, None] - positions[:, None]).pow(2).sum(-1).add(1e-9).sqrt()
        w = self.filter(torch.exp(-(d[..., None] - self.mu) ** 2))
        h = self.embed(numbers % 10)
        mask = (~torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device))[..., None]
        h = h + (w * mask * h[None, None]).sum(2)
        return self.head(h).sum((1, 2))

spec = ModelSpec(build=DensePairNet, presets={"small": {"hidden": 16, "cutoff": 5.0}}, original_activation="silu",
                 paper_placement=("filter",))
'''


def test_a_dense_layout_plugin_still_trains_on_one_molecule_and_is_refused_on_slabs(plugin_dir):
    """Plug-ins written for the dense layout (forward(positions [B, N, 3], numbers [N])) keep working on the
    frames of one molecule — their placement in their own paths, forces through the graph — and a data set
    of slabs says why it cannot take them instead of failing inside the model."""
    from dcnn.activations import count_activations
    from dcnn.config import TrainConfig
    from dcnn.models import build_model
    from dcnn.plugin_check import check_plugin
    from dcnn.train import train

    name = f"denseplug{next(_ids)}"
    (plugin_dir / name).mkdir()
    (plugin_dir / name / "__init__.py").write_text("")
    (plugin_dir / name / "potentials.py").write_text(DENSE_PLUGIN)
    model_name = f"{name}.potentials:spec"
    found = check_plugin(model_name, dataset="ethanol")
    assert found["activations"] == 2 and found["paper_activations"] == 1
    model = build_model(model_name)
    assert model.paper_activation_scope == ("model.filter",) and count_activations(model.model.filter) == 1
    out = train(TrainConfig(model=model_name, activation="irelu", n_train=40, n_val=20, n_test=20, epochs=1,
                            compile="off"))
    assert out["activations_replaced"] == 1 and np.isfinite(out["test_force_loss"])
    with pytest.raises(ValueError, match="takes the dense layout of one molecule"):
        train(TrainConfig(model=model_name, dataset="catalysis", n_train=20, n_val=10, n_test=10, epochs=1))
