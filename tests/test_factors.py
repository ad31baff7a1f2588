"""Any knob as a factor (issue 23): the declaration in search_spaces/factors.py, studies that vary a TrainConfig
key, a model size and a plug-in's own size, and the report's Findings and ANOVA over their levels."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

import search_spaces
from conftest import TINY, write_study
from orchestrator.report import build_report
from orchestrator.runner import AblateOptions, run_ablation
from search_spaces.factors import BUILTIN, factor

REF = {"activation": "irelu", "denorm": True, "rescale": True}


def _study(tmp_path, designs, reference=REF, **extra):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"designs": designs, "reference": reference, "models": ["schnet"], **extra},
                                   sort_keys=False))
    return search_spaces.load_study(str(path))


def test_a_factor_is_a_builtin_a_trainconfig_key_or_a_size():
    assert factor("denorm") is BUILTIN["denorm"] and factor("force_weight").key == "force_weight"
    assert factor("size.width").key == "size.width" and factor("size.width").name == "width"
    assert factor("cutoff", sizes=("cutoff",)).name == "cutoff"
    with pytest.raises(ValueError, match="unknown factor 'dropout'"):
        factor("dropout")
    with pytest.raises(ValueError, match="seed is an axis of every study"):
        factor("seed")
    # how arms name levels: the built-ins' tags, `name=level` for the rest, one level for 10 and 10.0
    assert [BUILTIN["denorm"].tag(v) for v in (True, False)] == ["DN", ""] and BUILTIN["init"].tag("lsuv") == "LSUV"
    assert factor("force_weight").tag(10.0) == "force_weight=10" and factor("lr").tag(1e-4) == "lr=0.0001"
    assert factor("force_weight").normalize(10, "x") == 10.0 and isinstance(factor("force_weight").normalize(10, "x"), float)
    assert BUILTIN["denorm"].change(True, False) == "DN removed" and factor("force_weight").change(30.0, 10.0) == \
        "force_weight 30 → 10"


def test_a_study_varies_a_trainconfig_key_and_a_size(tmp_path):
    s = _study(tmp_path, [{"activation": ["irelu"], "denorm": [True], "rescale": [True, False],
                           "force_weight": [10, 30, 100], "cutoff": [4.0, 5.0]}],
               reference={**REF, "force_weight": 30, "cutoff": 5.0})
    assert len(s.arms) == 12 and s.reference.key == "irelu+DN+LR+force_weight=30+cutoff=5"
    assert [f.name for f in s.own_factors] == ["force_weight", "cutoff"]
    keys = {a.key for a in s.arms}
    assert {"irelu+DN+force_weight=10+cutoff=4", "irelu+DN+LR+force_weight=100+cutoff=5"} <= keys
    configs = s.trial_configs()
    cfg = next(c for c in configs if c["arm"] == "irelu+DN+force_weight=10+cutoff=4")
    size = s.own_factors[1].key
    assert cfg["force_weight"] == 10.0 and cfg[size] == 4.0 and cfg["rescale"] is False
    assert cfg["factors"] == f"force_weight,{size}"
    assert search_spaces.trial_name(cfg) == "schnet · irelu · DN+force_weight=10+cutoff=4 · seed 0"
    # a design that does not name a factor leaves it at the study's setting, unnamed in its arms' keys
    s2 = _study(tmp_path, [{"activation": ["irelu"], "denorm": [True], "rescale": [True]},
                           {"activation": ["irelu"], "denorm": [True], "rescale": [True], "force_weight": [10]}],
                fixed={"force_weight": 50})
    assert [a.key for a in s2.arms] == ["irelu+DN+LR", "irelu+DN+LR+force_weight=10"]
    assert {c["arm"]: c["force_weight"] for c in s2.trial_configs()} == {"irelu+DN+LR": 50, "irelu+DN+LR+force_weight=10": 10}
    with pytest.raises(ValueError, match=r"unknown factor\(s\) \['widht'\]"):
        _study(tmp_path, [{"activation": ["irelu"], "denorm": [True], "rescale": [True], "widht": [1, 2]}])
    with pytest.raises(ValueError, match=r"designs\[0\]: force_weight=-1.0 must be non-negative"):
        _study(tmp_path, [{"activation": ["irelu"], "denorm": [True], "rescale": [True], "force_weight": [-1, 30]}],
               reference={**REF, "force_weight": 30})
    with pytest.raises(ValueError, match="reference arm irelu\\+DN\\+LR is not among"):
        _study(tmp_path, [{"activation": ["irelu"], "denorm": [True], "rescale": [True], "force_weight": [10, 30]}])


# -- the report over a study's own factors, from a study folder written here (known effects) -----------
FW = {10.0: 1.0, 30.0: 0.7, 100.0: 0.5}  # force error factor of each force weight
CUT = {4.0: 1.4, 5.0: 1.0}


def _own_factor_study(root):
    rng = np.random.default_rng(1)
    arms = []
    for rescale in (True, False):
        for fw in FW:
            for cut in CUT:
                arm = search_spaces.Arm("irelu", True, rescale, force_weight=fw, **{"size.cutoff": cut})
                arms.append(arm.key)
                for seed in range(4):
                    noise = math.exp(0.02 * rng.standard_normal())
                    f = 6.0 * FW[fw] * CUT[cut] * (1.0 if rescale else 2.0) * noise
                    e = 3.0 * CUT[cut] * (1.0 if rescale else 3.0) * math.exp(0.02 * rng.standard_normal())
                    cfg = {"model": "cgcnn", "arm": arm.key, "seed": seed, "dataset": "/d/ethanol.npz",
                           **arm.as_config(), "factors": "force_weight,size.cutoff"}
                    last = {"epoch": 3, "done": True, "diverged": 0, "trial_id": f"{arm.key}-{seed}",
                            "test_energy_loss": e, "test_force_loss": f, "test_energy_baseline": 25.0,
                            "test_force_baseline": 17.0, "test_energy_scale": 7000.0, "energy_loss": e,
                            "force_loss": f}
                    d = root / f"t{len(arms)}_{seed}"
                    d.mkdir(parents=True)
                    (d / "params.json").write_text(json.dumps(cfg))
                    (d / "result.json").write_text(json.dumps(last) + "\n")
    (root / "report").mkdir()
    ref = search_spaces.Arm("irelu", True, True, force_weight=30.0, **{"size.cutoff": 5.0}).key
    (root / "report" / "study.json").write_text(json.dumps({
        "study": "knobs", "reference": ref, "arms": arms, "identical": {},
        "dataset_info": {"/d/ethanol.npz": {"label": "ethanol", "units": ["kcal/mol", "kcal/mol/Å"]}}}))
    return root


def test_report_findings_and_anova_over_a_studys_own_factors(tmp_path):
    report = build_report(_own_factor_study(tmp_path / "study"))
    md, trials = report["markdown"], report["trials"]
    assert {"force_weight", "size.cutoff", "rescale"} <= set(trials.columns)
    lines = {x.split(" (")[0][2:] + " " + x.split(" (")[1].split(")")[0]: x
             for x in report["findings"].splitlines() if x.startswith("- ") and " → " in x or "removed" in x}
    # each level against the reference, in its factor's words, with what the seeds resolve
    fw10 = lines["force_weight 30 → 10 irelu+DN+LR+force_weight=10+cutoff=5"]
    assert "energy: not resolved" in fw10 and "force error higher, ×1.4" in fw10
    fw100 = lines["force_weight 30 → 100 irelu+DN+LR+force_weight=100+cutoff=5"]
    assert "energy: not resolved" in fw100 and "force error lower, ×0.7" in fw100
    cut4 = lines["cutoff 5 → 4 irelu+DN+LR+force_weight=30+cutoff=4"]
    assert "energy error higher, ×1.4" in cut4 and "force error higher, ×1.4" in cut4
    assert "energy error higher, ×3.0" in lines["LR removed irelu+DN+force_weight=30+cutoff=5"]
    # the grid over every level: LR (2) × force_weight (3) × cutoff (2), its ANOVA resolving what is there
    section = md[md.index("### Every level"):]
    assert "**ethanol · cgcnn**: 12 cells over LR (on, off) × force_weight (10, 30, 100) × cutoff (4, 5)." in section
    grid = report["contributions"]
    anova = grid[(grid.row == "grid_anova") & (grid.metric == "force")].set_index("component")
    assert anova.loc["force_weight", "df"] == 2 and anova.loc["force_weight", "p"] < 1e-6
    assert anova.loc["cutoff", "p"] < 1e-6 and anova.loc["LR", "p"] < 1e-6
    assert anova.loc["force_weight × cutoff", "p"] > 1e-3  # no interaction was put in
    energy = grid[(grid.row == "grid_anova") & (grid.metric == "energy")].set_index("component")
    assert energy.loc["force_weight", "p"] > 1e-3  # the force weight does not move this energy
    # the two-level factors also make a 2^k design with exact Shapley shares
    assert "2^2 = 4 cells over LR, cutoff; held at the reference's level: force_weight 30." in md
    assert "| *all on: irelu+DN+LR+force_weight=30+cutoff=5 (reference)* |" in md
    shares = grid[(grid.row == "share") & (grid.metric == "force")].set_index("component")
    assert set(shares.index) == {"LR", "cutoff"}
    assert shares.loc["cutoff", "factor"] == pytest.approx(1 / CUT[4.0], rel=0.03)


# -- end to end on Ray: a TrainConfig key, a model size and a built-in; a plug-in's own size ----------------
def test_a_study_of_force_weight_cutoff_and_lr_runs_end_to_end(ray_session, tracking_uri, tmp_path):
    study = tmp_path / "knobs.yaml"  # the factors in the order written (not sorted): the arms' keys follow it
    study.write_text(yaml.safe_dump({
        "designs": [{"activation": ["irelu"], "denorm": [True], "rescale": [True, False],
                     "force_weight": [10, 30, 100], "cutoff": [4.0, 5.0]}],
        "reference": {**REF, "force_weight": 30, "cutoff": 5.0}, "models": ["schnet"], "seeds": [0, 1],
        # a factor the study also fixes (as a study extending mlearn-seed-plan, whose fixed lr an lr factor
        # varies): Tune resolves the space's functions in its key order, and the fixed key came before the arm
        "fixed": {**TINY, "epochs": 1, "force_weight": 20}}, sort_keys=False))
    study = str(study)
    report = run_ablation(AblateOptions(study=study, storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                        experiment="knobs", quiet=True))
    summary, md = report["summary"], report["markdown"]
    assert len(summary) == 12 and (summary.n == 2).all()
    assert "force_weight 30 → 100 (irelu+DN+LR+force_weight=100+cutoff=5)" in report["findings"]
    assert "cutoff 5 → 4" in report["findings"] and "LR removed (irelu+DN+force_weight=30+cutoff=5)" in report["findings"]
    assert "12 cells over LR (on, off) × force_weight (10, 30, 100) × cutoff (4, 5)" in md
    grid = report["contributions"]
    assert set(grid[grid.row == "grid_anova"].component) >= {"LR", "force_weight", "cutoff", "force_weight × cutoff"}
    # the trials ran what their arms say: MLflow's params and tags carry the levels
    c = MlflowClient(tracking_uri)
    trials = pd.read_csv(report["paths"]["trials"])
    size_key = factor("cutoff", sizes=("cutoff",)).key
    for _, row in trials.iterrows():
        run = c.get_run(row.mlflow_run_id)
        assert float(run.data.params["force_weight"]) == row.force_weight
        assert float(run.data.tags[size_key]) == float(row[size_key]) and run.data.tags["arm"] == row.arm


PLUGIN = '''
import torch
from torch import nn
from dcnn.models import ModelSpec
from dcnn.models.common import scatter_sum, sum_per_structure


class BasisNet(nn.Module):
    """A distance-basis energy model whose own size, `basis`, no built-in model has."""

    def __init__(self, hidden=8, basis=4, cutoff=5.0):
        super().__init__()
        self.cutoff = cutoff
        self.filter = nn.Sequential(nn.Linear(basis, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.embed = nn.Embedding(10, hidden)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.register_buffer("mu", torch.linspace(0.5, cutoff, basis))

    def forward(self, graph):
        source, target = graph.edge_index
        d = (graph.positions[source] - graph.positions[target]).pow(2).sum(-1).add(1e-9).sqrt()
        w = self.filter(torch.exp(-(d[:, None] - self.mu) ** 2))
        h = self.embed(graph.numbers % 10)
        h = h + scatter_sum(w * h[source], target, h.shape[0])
        return sum_per_structure(self.head(h).squeeze(-1), graph)


spec = ModelSpec(build=BasisNet, presets={"small": {"hidden": 8, "basis": 4, "cutoff": 5.0}},
                 original_activation="silu", paper_placement=("filter",))
'''


def test_a_plugins_own_size_is_a_factor_of_a_study(ray_session, tracking_uri, tmp_path, monkeypatch):
    pkg = tmp_path / "plugins" / "basisplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "potentials.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    model = "basisplug.potentials:spec"
    arm = {"activation": "irelu", "denorm": True, "rescale": False, "shift": True}  # ES, no LR: one epoch trains it
    study = write_study(tmp_path / "plug.yaml", [{**{k: [v] for k, v in arm.items()}, "basis": [4, 16]}],
                        {**arm, "basis": 4}, models=(model,), fixed={"epochs": 1})
    assert [a.key for a in search_spaces.load_study(study).arms] == ["irelu+DN+ES+basis=4", "irelu+DN+ES+basis=16"]
    report = run_ablation(AblateOptions(study=study, storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                        experiment="plug-size", quiet=True))
    trials = pd.read_csv(report["paths"]["trials"]).set_index("arm")
    c = MlflowClient(tracking_uri)
    n = {arm: int(c.get_run(r).data.metrics["n_parameters"]) for arm, r in trials.mlflow_run_id.items()}
    # the filter's first Linear is basis × hidden + hidden: 12 more inputs × 8 = 96 more parameters
    assert n["irelu+DN+ES+basis=16"] - n["irelu+DN+ES+basis=4"] == 12 * 8
    assert "basis 4 → 16 (irelu+DN+ES+basis=16)" in report["findings"]


def test_tuning_a_factor_of_the_study_is_refused_before_ray(tmp_path):
    """--tune-hparams would overwrite the levels the arms compare (force_weight is in the default space)."""
    with pytest.raises(ValueError, match=r"tunes \['force_weight'\], a factor of study knobs"):
        AblateOptions(study="knobs", tune_hparams=2, storage=str(tmp_path)).validate()
    assert AblateOptions(study="knobs", tune_hparams=2, tuning_space="lr", storage=str(tmp_path)).validate().name == "knobs"
