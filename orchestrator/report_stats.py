"""The report's statistics: per data set × model × arm, means over seeds, the paired comparison with the
reference arm (ratio of geometric means, t interval, paired t-test) and Holm's adjustment."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from orchestrator.report_load import GROUP, metric_specs
from search_spaces.factors import study_factors


# Divergence is the family's one rule (dcnn/families.py: non-finite, or a test error above BLOWUP_FACTOR ×
# that of a model that outputs zero), so the report, the trainer and MLflow's `diverged` agree.
ALPHA = 0.05  # family-wise level of the Holm-adjusted tests


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (statsmodels); NaNs stay NaN and do not count towards the family
    size."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = multipletests(p[finite], method="holm")[1]
    return out.tolist()


def _ci95(values: np.ndarray) -> float:
    from scipy import stats

    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def paired_ratio(arm: pd.DataFrame, ref: pd.DataFrame, metric: str) -> dict:
    """Ratio of geometric means arm/ref over the seeds both finished without diverging, its 95 % CI (t on
    the paired log differences) and the two-sided paired t-test p-value."""
    from scipy import stats

    both = arm[arm.ok].merge(ref[ref.ok], on="seed", suffixes=("", "_ref"))
    a, b = both[metric].to_numpy(float), both[metric + "_ref"].to_numpy(float)
    keep = (a > 0) & (b > 0)
    d = np.log(a[keep]) - np.log(b[keep])
    n = len(d)
    out = {"n_pairs": n, "ratio": math.nan, "ratio_lo": math.nan, "ratio_hi": math.nan, "p": math.nan}
    if n == 0:
        return out
    out["ratio"] = float(np.exp(d.mean()))
    if n < 2:
        return out
    sd = d.std(ddof=1)
    if sd == 0:
        out.update(ratio_lo=out["ratio"], ratio_hi=out["ratio"], p=1.0 if d.mean() == 0 else 0.0)
        return out
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    out.update(ratio_lo=float(np.exp(d.mean() - half)), ratio_hi=float(np.exp(d.mean() + half)),
               p=float(stats.ttest_1samp(d, 0.0).pvalue))
    return out


def summarize(trials: pd.DataFrame, reference_arm: str) -> pd.DataFrame:
    """One row per (data set, model, arm): n, divergence, mean ± std, CI, ratio to the baselines, and the
    paired comparison with the reference arm, Holm-adjusted within each (data set, model, metric)."""
    rows = []
    specs = metric_specs(trials)
    for (data, model, arm), g in trials.groupby(GROUP + ["arm"], sort=False):
        ok = g[g.ok]
        row = {"data": data, "model": model, "arm": arm,
               **{f.key: g[f.key].iloc[0] for f in study_factors(trials)},
               "factors": g["factors"].iloc[0] if "factors" in g else "", "seeds": len(g), "n": len(ok),
               "diverged": int(g.diverged.sum()), "blew_up": int(g.blew_up.sum()), "stalled": int(g.stalled.sum()),
               "errored": int((~g.finished).sum()), "reference": arm == reference_arm,
               "identical_to": g.identical_to.iloc[0]}
        ref = trials[(trials.data == data) & (trials.model == model) & (trials.arm == reference_arm)]
        for spec in specs:
            metric, short = spec.test_key, spec.short
            v = ok[metric].to_numpy(float)
            base = g[spec.baseline].to_numpy(float) if spec.baseline else np.array([math.nan])
            row.update({f"{short}_mean": float(v.mean()) if len(v) else math.nan,
                        f"{short}_std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                        f"{short}_ci95": _ci95(v),
                        f"{short}_baseline": float(np.nanmean(base)) if np.isfinite(base).any() else math.nan})
            row[f"{short}_vs_baseline"] = row[f"{short}_mean"] / row[f"{short}_baseline"]
            if arm == reference_arm or ref.empty:
                cmp = {"n_pairs": math.nan, "ratio": math.nan, "ratio_lo": math.nan, "ratio_hi": math.nan,
                       "p": math.nan}
            else:
                cmp = paired_ratio(g, ref, metric)
                if g.identical_to.iloc[0]:
                    cmp["p"] = math.nan  # a twin's trials are another arm's: no test of its own
            row.update({f"{short}_{k}": v for k, v in cmp.items()})
        rows.append(row)
    summary = pd.DataFrame(rows)
    for short in (spec.short for spec in specs):
        # each distinct comparison counts once in its family; a twin then shows its original's result
        summary[f"{short}_p_holm"] = math.nan
        for _, idx in summary.groupby(GROUP, sort=False).groups.items():
            summary.loc[idx, f"{short}_p_holm"] = holm(summary.loc[idx, f"{short}_p"].tolist())
        for i, r in summary[summary.identical_to.astype(bool)].iterrows():
            original = summary[(summary.data == r.data) & (summary.model == r.model) & (summary.arm == r.identical_to)]
            if not original.empty and original.iloc[0].arm != reference_arm:
                summary.loc[i, [f"{short}_p", f"{short}_p_holm"]] = original.iloc[0][[f"{short}_p", f"{short}_p_holm"]].to_numpy()
        summary[f"{short}_significant"] = summary[f"{short}_p_holm"] < ALPHA
    return summary


def baselines_table(summary: pd.DataFrame, specs: tuple) -> pd.DataFrame:
    """Each metric's baseline per data set (test split): molecules' predict-mean energy MAE and
    predict-zero force MAE; PINNs' zero-prediction relative L2 and nRMSE (both 1)."""
    return summary.groupby("data", sort=False).agg(
        **{f"{m.slug}_baseline": (f"{m.short}_baseline", "mean") for m in specs if m.baseline}).reset_index()
