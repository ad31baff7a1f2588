"""The report's statistics and wording, on trial folders written here (no Ray): what it claims must
follow from the numbers."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.report import build_report, fmt, holm, paired_ratio


def test_fmt_three_significant_figures_positional():
    assert [fmt(x) for x in (356.0, 170.4, 2.5449, 0.012345, 7139.6, 12345.0, 0.0)] == \
        ["356", "170", "2.54", "0.0123", "7,140", "12,300", "0"]
    assert fmt(float("nan")) == "–" and fmt(None) == "–"


def test_holm_matches_the_textbook_procedure():
    # p sorted: 0.01, 0.02, 0.04 with m = 3 → 0.03, 0.04, 0.04 (monotone), NaN left out of the family
    assert holm([0.04, 0.01, float("nan"), 0.02]) == pytest.approx([0.04, 0.03, float("nan"), 0.04], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_paired_ratio_is_the_ratio_of_geometric_means_with_a_t_interval():
    from scipy import stats

    ref = pd.DataFrame({"seed": [0, 1, 2, 3], "ok": True, "m": [1.0, 2.0, 4.0, 1.0]})
    arm = pd.DataFrame({"seed": [0, 1, 2, 3], "ok": [True, True, True, False], "m": [2.2, 3.6, 8.8, 50.0]})
    out = paired_ratio(arm, ref, "m")
    d = np.log([2.2, 3.6, 8.8]) - np.log([1.0, 2.0, 4.0])  # seed 3 did not finish: unpaired
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert out["n_pairs"] == 3 and out["ratio"] == pytest.approx(math.exp(d.mean()))
    assert (out["ratio_lo"], out["ratio_hi"]) == pytest.approx((math.exp(d.mean() - half), math.exp(d.mean() + half)))
    assert out["p"] == pytest.approx(stats.ttest_rel(np.log([2.2, 3.6, 8.8]), np.log([1.0, 2.0, 4.0])).pvalue)


def _write_trial(root, name, config, results):
    d = root / name
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config))
    (d / "result.json").write_text("\n".join(json.dumps(r) for r in results) + "\n")


def _study(tmp_path, errors):
    """A study folder: reference, an arm 2× worse in E (clearly), an arm with noise, a blow-up, an
    identical-by-construction twin, over 5 seeds; E baseline 2.5, F baseline 17."""
    root = tmp_path / "study"
    arms = {"irelu+DN+LR": dict(activation="irelu", denorm=True, rescale=True),
            "isilu+DN+LR": dict(activation="isilu", denorm=True, rescale=True),
            "irelu+DN": dict(activation="irelu", denorm=True, rescale=False),
            "ielu+DN+LR": dict(activation="ielu", denorm=True, rescale=True)}
    rng = np.random.default_rng(0)
    for arm, factors in arms.items():
        for seed in range(5):
            e, f = errors(arm, seed, rng)
            cfg = {"model": "schnet", "arm": arm, "seed": seed, "shift": False, "dataset": "/d/ethanol.npz", **factors}
            last = {"epoch": 3, "done": True, "diverged": int(not math.isfinite(e)), "trial_id": f"{arm}-{seed}",
                    "test_energy_loss": e, "test_force_loss": f, "test_energy_baseline": 2.5,
                    "test_force_baseline": 17.0, "test_energy_scale": 7000.0, "energy_loss": e, "force_loss": f}
            _write_trial(root, f"t_{arm}_{seed}", cfg, [{**last, "epoch": 1, "done": False}, last])
    (root / "report").mkdir()
    (root / "report" / "study.json").write_text(json.dumps({
        "study": "synthetic", "reference": "irelu+DN+LR",
        "arms": ["irelu+DN+LR", "isilu+DN+LR", "irelu+DN", "ielu+DN+LR", "irelu+LR", "irelu"],
        "identical": {"schnet": {"irelu+LR": "irelu+DN+LR", "irelu": "irelu+DN"}},
        "dataset_info": {"/d/ethanol.npz": {"label": "ethanol", "units": ["kcal/mol", "kcal/mol/Å"]}}}))
    return root


def test_report_baselines_ratios_findings_and_identical_rows(tmp_path):
    base_e = [1.0, 1.2, 0.9, 1.1, 1.0]

    def errors(arm, seed, rng):
        e, f = base_e[seed], 3.0 + 0.1 * seed
        if arm == "isilu+DN+LR":  # 2× worse energy on every seed (±2 %); same forces
            return 2.0 * e * (1 + 0.02 * rng.standard_normal()), f
        if arm == "irelu+DN":  # noise only
            return e * math.exp(0.3 * rng.standard_normal()), f * math.exp(0.3 * rng.standard_normal())
        if arm == "ielu+DN+LR" and seed == 4:  # blew up: finite, but 10× worse than predicting zero
            return 1e6, 1e5
        return e, f

    report = build_report(_study(tmp_path, errors))
    s = report["summary"].set_index("arm")
    assert list(s.index) == ["irelu+DN+LR", "isilu+DN+LR", "irelu+DN", "ielu+DN+LR", "irelu+LR", "irelu"]
    assert s.loc["irelu+DN+LR", "E_baseline"] == 2.5 and s.loc["irelu+DN+LR", "E_vs_baseline"] == pytest.approx(1.04 / 2.5)
    assert s.loc["isilu+DN+LR", "E_ratio"] == pytest.approx(2.0, rel=0.03) and s.loc["isilu+DN+LR", "E_significant"]
    assert not s.loc["irelu+DN", "E_significant"]
    assert s.loc["ielu+DN+LR", "diverged"] == 1 and s.loc["ielu+DN+LR", "n"] == 4  # listed, not averaged
    assert s.loc["ielu+DN+LR", "E_mean"] == pytest.approx(np.mean(base_e[:4]))
    # Holm within the family: p_adj ≥ raw p, and the identical twin of the reference is no test at all
    assert (s.E_p_holm.dropna() >= s.E_p.dropna() - 1e-15).all() and math.isnan(s.loc["irelu+LR", "E_p"])
    assert s.loc["irelu+LR", "identical_to"] == "irelu+DN+LR" and s.loc["irelu+LR", "E_mean"] == s.loc["irelu+DN+LR", "E_mean"]
    # each distinct comparison counts once in the Holm family; the twin shows its original's result
    distinct = ["isilu+DN+LR", "irelu+DN", "ielu+DN+LR"]
    assert list(s.loc[distinct, "E_p_holm"]) == pytest.approx(holm(list(s.loc[distinct, "E_p"])))
    assert s.loc["irelu", "E_p_holm"] == s.loc["irelu+DN", "E_p_holm"]
    md = report["markdown"]
    assert "| *baseline: mean E, zero F* | | | 2.50 | 1 |" in md and "irelu+LR ≡ irelu+DN+LR" in md
    assert "e+0" not in md and "e-0" not in md  # no exponent notation in the tables
    found = report["findings"]
    line = next(x for x in found.splitlines() if x.startswith("- irelu → isilu (isilu+DN+LR)"))
    assert "energy error higher, ×2.0" in line and "(p_adj = <0.001)" in line, line
    assert "force: the same on every one of 5 seeds" in line
    assert "LR removed (irelu+DN): energy: not resolved with n = 5" in found
    assert "DN removed (irelu+LR): identical by construction" in found
    assert "1 of 5 seeds diverged (reference: 0 of 5)" in found
    assert "energy 1.04 kcal/mol (×0.42 the predict-mean baseline 2.50)" in found
    trials = pd.read_csv(report["paths"]["trials"])
    assert len(trials) == 6 * 5 and set(trials.data) == {"ethanol"}
    assert (tmp_path / "study/report/bars.png").stat().st_size > 10_000


def test_report_says_when_the_reference_does_not_beat_the_baseline(tmp_path):
    report = build_report(_study(tmp_path, lambda arm, seed, rng: (3.0 + seed, 5.0)))
    assert "its energy error is not below the predict-mean baseline" in report["findings"]
