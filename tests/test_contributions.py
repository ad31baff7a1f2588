"""The Contributions section: exact Shapley shares over a full 2^k design, their bootstrap interval, the
design detector, the divergence cap, the ANOVA, and the section end to end on a synthetic study folder."""
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.contributions import (BLOWUP_FACTOR, bootstrap_shares, factorial_anova, find_design,
                                        seed_entry, shapley)
from orchestrator.report import build_report
from dcnn.atomistic.family import ATOMISTIC

ACTIVATIONS = ["irelu", "ielu", "igelu", "isilu", "original"]


def _cells(effects, base=0.0, interaction=None):
    """v(mask) = base + Σ effect_i · bit_i (+ interaction term on a pair of bits)."""
    k = len(effects)
    v = np.array([base + sum(e for i, e in enumerate(effects) if m >> i & 1) for m in range(2 ** k)])
    if interaction:
        (i, j), size = interaction
        v += np.array([size if (m >> i & 1) and (m >> j & 1) else 0.0 for m in range(2 ** k)])
    return v


def _brute_force_shapley(v, k):
    """The definition: each component's marginal contribution averaged over all k! switch-on orders."""
    phi = np.zeros(k)
    orders = list(itertools.permutations(range(k)))
    for order in orders:
        mask = 0
        for i in order:
            phi[i] += v[mask | 1 << i] - v[mask]
            mask |= 1 << i
    return phi / len(orders)


def test_additive_effects_are_each_components_share_exactly():
    effects = [math.log(0.5), math.log(0.8), math.log(0.25)]
    v = _cells(effects, base=math.log(12.0))
    phi = shapley(v)
    assert phi == pytest.approx(effects, abs=1e-12)
    assert phi.sum() == pytest.approx(v[-1] - v[0], abs=1e-12)


def test_a_pure_two_way_interaction_is_split_equally():
    phi = shapley(_cells([0.0, 0.0], interaction=((0, 1), 0.6)))
    assert phi == pytest.approx([0.3, 0.3], abs=1e-12)
    # in three components: the bystander gets nothing, the pair half each
    phi3 = shapley(_cells([0.0, 0.0, 0.0], interaction=((0, 2), -1.0)))
    assert phi3 == pytest.approx([-0.5, 0.0, -0.5], abs=1e-12)


def test_mixed_effects_match_the_permutation_average():
    rng = np.random.default_rng(3)
    for k in (3, 4):
        v = rng.normal(size=2 ** k)  # arbitrary: main effects and every order of interaction
        phi = shapley(v)
        assert phi == pytest.approx(_brute_force_shapley(v, k), abs=1e-12)
        assert phi.sum() == pytest.approx(v[-1] - v[0], abs=1e-12)
    # main effects plus an interaction: mains exact, the interaction halved between its pair
    v = _cells([0.2, -0.7, 0.1], interaction=((1, 2), 0.4))
    assert shapley(v) == pytest.approx([0.2, -0.7 + 0.2, 0.1 + 0.2], abs=1e-12)
    assert shapley(v) == pytest.approx(_brute_force_shapley(v, 3), abs=1e-12)


def test_bootstrap_interval_covers_the_truth_and_collapses_when_seeds_agree():
    effects = [math.log(0.5), math.log(0.9), math.log(0.3)]
    truth = _cells(effects, base=1.0)
    rng = np.random.default_rng(7)
    n = 12
    seed_effect = rng.normal(0, 0.2, size=n)  # shared by every cell of a seed: pairing matters
    logs = truth[:, None] + seed_effect[None, :] + rng.normal(0, 0.1, size=(8, n))
    lo, hi = bootstrap_shares(logs)
    phi = shapley(logs.mean(axis=1))
    assert np.all(lo < effects) and np.all(np.array(effects) < hi), (lo, effects, hi)
    assert np.all(lo <= phi) and np.all(phi <= hi)
    assert np.all(hi - lo < 0.3) and np.all(hi - lo > 0.01)
    assert bootstrap_shares(logs)[0] == pytest.approx(lo, abs=0)  # fixed RNG seed: reproducible
    # the shared seed effect cancels in the shares: the interval is as narrow as the cell noise allows
    unpaired = truth[:, None] + rng.normal(0, 0.2, size=(8, n)) + rng.normal(0, 0.1, size=(8, n))
    assert np.all(np.subtract(*bootstrap_shares(unpaired)[::-1]) > hi - lo)
    same = np.repeat(truth[:, None], 5, axis=1)  # every seed the same: nothing to vary
    lo_s, hi_s = bootstrap_shares(same)
    assert np.array_equal(lo_s, hi_s) and lo_s == pytest.approx(effects, abs=1e-12)
    assert np.isnan(bootstrap_shares(truth[:, None])[0]).all()  # one seed: no interval


def _arms(keys, init=None):
    """One row per arm key like 'irelu+DN+LR+LSUV'."""
    rows = []
    for key in keys:
        parts = key.split("+")
        rows.append({"arm": key, "activation": parts[0], "denorm": "DN" in parts, "rescale": "LR" in parts,
                     "shift": "ES" in parts, **({"init": "lsuv" if "LSUV" in parts else "default"} if init else {})})
    return pd.DataFrame(rows)


def _factorial_keys():
    return ["+".join([a] + ["DN"] * dn + ["LR"] * lr) for a in ACTIVATIONS for dn in (1, 0) for lr in (1, 0)]


SEED_PLAN = ["irelu+DN+LR", "ielu+DN+LR", "igelu+DN+LR", "isilu+DN+LR", "original+DN+LR", "irelu+DN",
             "irelu+LR", "irelu"]


def test_design_detector_factorial_seed_plan_missing_cell_and_lsuv():
    d = find_design(_arms(_factorial_keys()), "irelu+DN+LR")
    assert [c.label for c in d.components] == ["activation", "DN", "LR"] and d.k == 3
    assert d.levels[0] == ("irelu", "original")
    assert d.cells == ("original", "irelu", "original+DN", "irelu+DN", "original+LR", "irelu+LR",
                       "original+DN+LR", "irelu+DN+LR")
    assert d.reference_mask == 7 and d.held == {}

    d = find_design(_arms(SEED_PLAN), "irelu+DN+LR")
    assert [c.label for c in d.components] == ["DN", "LR"] and d.cells == ("irelu", "irelu+DN", "irelu+LR", "irelu+DN+LR")
    assert d.held == {"activation": "irelu"}

    assert find_design(_arms([k for k in SEED_PLAN if k != "irelu"]), "irelu+DN+LR") is None  # a cell missing
    # the factorial without its all-off cell: no 2^3; the first 2^2 left (COMPONENTS order) is activation × DN
    # with LR held on
    d = find_design(_arms([k for k in _factorial_keys() if k != "original"]), "irelu+DN+LR")
    assert [c.label for c in d.components] == ["activation", "DN"] and d.held == {"LR": True}
    assert d.cells == ("original+LR", "irelu+LR", "original+DN+LR", "irelu+DN+LR")
    # LSUV (the init column) is a component like the others; absent, every trial reads init="default"
    d = find_design(_arms(["irelu+DN+LR", "irelu+DN+LR+LSUV", "irelu+DN", "irelu+DN+LSUV"], init=True), "irelu+DN+LR")
    assert [c.label for c in d.components] == ["LR", "LSUV"] and d.cells[-1] == "irelu+DN+LR+LSUV"
    assert find_design(_arms(["irelu+DN+LR", "irelu+DN"]), "irelu+DN+LR") is None  # k = 1: the pairwise table


def test_twins_make_a_component_identical_by_construction():
    arms = _arms(SEED_PLAN).assign(identical_to="")
    arms.loc[arms.arm == "irelu+LR", "identical_to"] = "irelu+DN+LR"
    arms.loc[arms.arm == "irelu", "identical_to"] = "irelu+DN"
    d = find_design(arms, "irelu+DN+LR")
    assert d.noop == (0,)  # DN: every DN-off cell is its DN-on twin (SchNet has no BatchNorm)


def test_a_diverged_seed_enters_at_the_blow_up_cap():
    energy, force = ATOMISTIC.metrics[:2]
    row = {"finished": True, "diverged": 1, "test_energy_loss": math.nan, "test_force_loss": math.nan,
           "test_energy_scale": 7000.0, "test_force_baseline": 17.0, "test_energy_baseline": 2.5}
    assert seed_entry(row, energy) == (math.log(BLOWUP_FACTOR * 7000.0), True)
    assert seed_entry(row, force) == (math.log(BLOWUP_FACTOR * 17.0), True)
    blown = {**row, "test_energy_loss": 1e6, "test_force_loss": 3.0}  # E blew up, F is a measured number
    assert seed_entry(blown, energy) == (math.log(70000.0), True)
    assert seed_entry(blown, force) == (math.log(3.0), False)
    ok = {**row, "diverged": 0, "test_energy_loss": 1.5}
    assert seed_entry(ok, energy) == (math.log(1.5), False)
    assert math.isnan(seed_entry({**ok, "finished": False}, energy)[0])  # unfinished: left out
    assert math.isnan(seed_entry({**ok, "stalled": 1}, energy)[0])  # never trained: not a factor's effect


def test_anova_f_is_the_balanced_design_computation():
    d = find_design(_arms(_factorial_keys()), "irelu+DN+LR")
    rng = np.random.default_rng(1)
    logs = _cells([0.8, 0.0, -0.5], interaction=((0, 2), 0.3))[:, None] + rng.normal(0, 0.1, size=(8, 4))
    table, note = factorial_anova(logs, d)
    assert list(table.effect) == ["activation", "DN", "LR", "activation × DN", "activation × LR", "DN × LR"]
    # by hand, ±1 contrasts of a balanced 2^3: SS_term = N·b², b = mean(y · contrast); residual = the rest
    y = logs.reshape(-1)
    sign = {i: np.repeat([1.0 if m >> i & 1 else -1.0 for m in range(8)], 4) for i in range(3)}
    terms = [sign[0], sign[1], sign[2], sign[0] * sign[1], sign[0] * sign[2], sign[1] * sign[2]]
    ss = [len(y) * np.mean(y * t) ** 2 for t in terms]
    resid = np.sum((y - y.mean()) ** 2) - sum(ss)
    mse = resid / (len(y) - 7)
    assert table.F.to_numpy() == pytest.approx(np.array(ss) / mse, rel=1e-8)
    assert note.startswith("residual df 25")
    p = dict(zip(table.effect, table.p))
    assert p["activation"] < 1e-6 and p["LR"] < 1e-6 and p["activation × LR"] < 1e-3 and p["DN"] > 0.01


# -- end to end -----------------------------------------------------------------------------------------
TRUE_E = {"activation": 0.5, "denorm": 0.8, "rescale": 0.25}  # factor on the energy error when switched on
TRUE_F = {"activation": 0.7, "denorm": 1.0, "rescale": 0.9}
SEEDS = range(4)


def _errors(factors: dict, seed: int, rng) -> tuple[float, float]:
    e, f = 8.0 * math.exp(0.05 * seed), 6.0 * math.exp(0.03 * seed)
    for key, on in factors.items():
        if key == "activation" and on != "irelu":
            continue  # other activations only feed the pairwise table
        if on and on != "original":
            e, f = e * TRUE_E[key], f * TRUE_F[key]
    if factors["activation"] not in ("irelu", "original"):
        e *= 1.3
    return e * math.exp(0.02 * rng.standard_normal()), f * math.exp(0.02 * rng.standard_normal())


def _write(root, name, config, results, error=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config))
    (d / "result.json").write_text("\n".join(json.dumps(r) for r in results) + ("\n" if results else ""))
    if error:
        (d / "error.txt").write_text(f"Traceback ...\n{error}\n")


def _factorial_study(root, diverged=("original", 2), failed_cell=None):
    """A factorial-study folder on CGCNN (BatchNorm: no twins): 5 activations × DN × LR, 4 seeds; one
    diverged seed (NaN), optionally one cell whose every trial failed."""
    rng = np.random.default_rng(0)
    truth = {}
    for arm in _factorial_keys():
        parts = arm.split("+")
        factors = {"activation": parts[0], "denorm": "DN" in parts, "rescale": "LR" in parts}
        for seed in SEEDS:
            e, f = _errors(factors, seed, rng)
            if (arm, seed) == diverged:
                e = f = math.nan
            truth[arm, seed] = (e, f)
            cfg = {"model": "cgcnn", "arm": arm, "seed": seed, "shift": False, "dataset": "/d/ethanol.npz", **factors}
            last = {"epoch": 3, "done": True, "diverged": int(not math.isfinite(e)), "trial_id": f"{arm}-{seed}",
                    "test_energy_loss": e, "test_force_loss": f, "test_energy_baseline": 2.5,
                    "test_force_baseline": 17.0, "test_energy_scale": 7000.0, "energy_loss": e, "force_loss": f}
            first = {"epoch": 1, "done": False, "diverged": 0, "trial_id": f"{arm}-{seed}", "energy_loss": e,
                     "force_loss": f}
            if arm == failed_cell:
                _write(root, f"t_{arm}_{seed}", cfg, [first], error="RuntimeError: boom")
            else:
                _write(root, f"t_{arm}_{seed}", cfg, [first, last])
    (root / "report").mkdir()
    (root / "report" / "study.json").write_text(json.dumps({
        "study": "factorial", "reference": "irelu+DN+LR", "arms": _factorial_keys(), "identical": {},
        "dataset_info": {"/d/ethanol.npz": {"label": "ethanol", "units": ["kcal/mol", "kcal/mol/Å"]}}}))
    return root, truth


def _expected_shares(truth, column, cap):
    """The rule computed by hand: per cell the mean log over seeds (NaN → log cap), then the
    permutation-average Shapley values over (activation irelu-vs-original, DN, LR)."""
    v = []
    for m in range(8):
        arm = "+".join(["irelu" if m & 1 else "original"] + ["DN"] * bool(m & 2) + ["LR"] * bool(m & 4))
        logs = [math.log(truth[arm, s][column]) if math.isfinite(truth[arm, s][column]) else math.log(cap)
                for s in SEEDS]
        v.append(np.mean(logs))
    return np.array(v), _brute_force_shapley(np.array(v), 3)


def test_report_has_a_contributions_section_csv_and_plot(tmp_path):
    root, truth = _factorial_study(tmp_path / "study")
    report = build_report(root)
    md = report["markdown"]
    section = md[md.index("## Contributions"):md.index("![test errors per arm]")]
    assert "### ethanol · cgcnn" in section
    assert "2^3 = 8 cells over activation (original → irelu), DN, LR" in section
    assert "4 seed(s) in every cell (0, 1, 2, 3); 1 of 32 cell-seeds entered at the cap " \
           "(energy: original seed 2; force: original seed 2)" in section
    c = report["contributions"]
    csv = pd.read_csv(report["paths"]["contributions"])
    assert list(csv.row) == list(c.row) and csv.log_share.dropna().to_numpy() == pytest.approx(c.log_share.dropna())
    for metric, column, cap in (("energy", 0, 70000.0), ("force", 1, 170.0)):
        v, phi = _expected_shares(truth, column, cap)
        rows = c[(c.metric == metric) & (c.row == "share")].set_index("component")
        assert rows.log_share.to_numpy() == pytest.approx(phi, abs=1e-9)
        assert rows.log_share.sum() == pytest.approx(v[-1] - v[0], abs=1e-9)
        assert (rows.lo <= rows.factor).all() and (rows.factor <= rows.hi).all()
        off = c[(c.metric == metric) & (c.row == "all_off")].iloc[0]
        assert off.arm == "original" and off.value == pytest.approx(math.exp(v[0]))
        assert c[(c.metric == metric) & (c.row == "all_on")].iloc[0].arm == "irelu+DN+LR"
        line = next(x for x in section.splitlines() if x.startswith("| LR added |"))
        assert f"×{_fmt(math.exp(phi[2]))}" in line
    assert "| effect | df | F | p |" in section and "| activation × LR |" in section
    anova = c[(c.metric == "energy") & (c.row == "anova")].set_index("component")
    assert anova.loc["LR", "p"] < 0.05  # resolved even with the capped seed's spread in the all-off cell
    assert "![contributions per component](contributions.png)" in section
    assert report["paths"]["contributions_plot"].stat().st_size > 20_000


def _fmt(x):
    from orchestrator.report import fmt

    return fmt(x)


def test_contributions_without_divergence_recover_the_true_factors(tmp_path):
    root, _ = _factorial_study(tmp_path / "study", diverged=None)
    c = build_report(root)["contributions"]
    e = c[(c.metric == "energy") & (c.row == "share")].set_index("component")
    assert e.factor.to_numpy() == pytest.approx([TRUE_E["activation"], TRUE_E["denorm"], TRUE_E["rescale"]], rel=0.03)
    f = c[(c.metric == "force") & (c.row == "share")].set_index("component")
    assert f.factor.to_numpy() == pytest.approx([TRUE_F["activation"], TRUE_F["denorm"], TRUE_F["rescale"]], rel=0.03)
    p = c[(c.metric == "energy") & (c.row == "anova")].set_index("component").p
    assert p["activation"] < 1e-6 and p["DN"] < 1e-6 and p["LR"] < 1e-6
    assert c[(c.row == "all_off") | (c.row == "all_on")].n_capped.eq(0).all()


def test_a_cell_without_any_finished_seed_is_not_computable(tmp_path):
    root, _ = _factorial_study(tmp_path / "study", diverged=None, failed_cell="original+DN")
    report = build_report(root)
    assert "Contributions not computable: cell original+DN has no finished seed (4 failed)." in report["markdown"]
    assert "contributions_plot" not in report["paths"]
    assert list(report["contributions"].row) == ["not_computable"]


def test_no_section_without_a_full_design(tmp_path):
    root, _ = _factorial_study(tmp_path / "study", diverged=None)
    for arm in ("original", "irelu", "original+DN", "original+LR", "irelu+LR", "irelu+DN"):  # only DN+LR arms left
        for seed in SEEDS:
            for f in (root / f"t_{arm}_{seed}").iterdir():
                f.unlink()
            (root / f"t_{arm}_{seed}").rmdir()
    report = build_report(root)
    assert "## Contributions" not in report["markdown"] and "contributions" not in report["paths"]
    assert report["contributions"].empty
