"""The ablation report: per arm, seeds, mean ± std and 95 % CI of the test errors, change vs the
reference arm with a paired comparison over seeds, divergence counts; CSV + markdown + PNG.

Built from the Tune experiment folder alone (params.json and result.json of each trial), so
`dcnn-ablate report PATH` can rebuild it anywhere; each trial row carries its MLflow run id.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

FACTOR_COLUMNS = ["model", "arm", "activation", "denorm", "rescale"]
REPORT_DIR = "report"


def _read_results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut off by a kill
    return rows


def _trial_error(trial_dir: Path) -> str:
    """The last line of the trial's error (Tune's error.txt), '' if it did not fail."""
    path = trial_dir / "error.txt"
    if not path.exists():
        return ""
    lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else "failed (empty error.txt)"


def failed_section(trials: pd.DataFrame) -> str:
    """Markdown list of the trials that failed (errored, not diverged), with their error."""
    if trials.empty or "error" not in trials:
        return ""
    failed = trials[trials.error.fillna("").astype(bool)]
    if failed.empty:
        return ""
    lines = ["## Failed trials", "", f"{len(failed)} trial(s) raised and are not in the tables above:", ""]
    for _, r in failed.iterrows():
        lines.append(f"- {r.model} · {r.arm} · seed {r.seed} (after epoch {r.epochs}): `{r.error}`")
    return "\n".join(lines) + "\n\n"


def collect(experiment_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves): one row per trial with its last result; one row per trial-epoch."""
    experiment_dir = Path(experiment_dir)
    run_ids = {}
    ids_file = experiment_dir / REPORT_DIR / "mlflow_runs.json"
    if ids_file.exists():
        run_ids = json.loads(ids_file.read_text())
    trials, curves = [], []
    for params_file in sorted(experiment_dir.glob("*/params.json")):
        config = json.loads(params_file.read_text())
        if config.get("phase") == "tune":
            continue
        results = _read_results(params_file.parent)
        error = _trial_error(params_file.parent)
        if not results and not error:
            continue
        last = results[-1] if results else {"epoch": 0}
        trial_id = last.get("trial_id", "")
        finished = bool(last.get("done")) or "test_force_loss" in last
        row = {**{k: config.get(k) for k in FACTOR_COLUMNS + ["seed"]}, "trial_id": trial_id,
               "mlflow_run_id": run_ids.get(trial_id, ""), "finished": finished,
               "epochs": last.get("epoch"), "diverged": int(last.get("diverged", 0)),
               "test_energy_loss": last.get("test_energy_loss", math.nan),
               "test_force_loss": last.get("test_force_loss", math.nan),
               "energy_loss": last.get("energy_loss", math.nan),
               "force_loss": last.get("force_loss", math.nan),
               "node_id": last.get("node_id", ""), "hostname": last.get("hostname", ""),
               "device": last.get("device", ""), "gpu_ids": last.get("gpu_ids", ""),
               "started_at": last.get("started_at", math.nan), "finished_at": last.get("reported_at", math.nan),
               "error": "" if finished else error}
        trials.append(row)
        for r in results:
            curves.append({"trial_id": trial_id, **{k: config.get(k) for k in FACTOR_COLUMNS + ["seed"]},
                           "epoch": r.get("epoch"), "energy_loss": r.get("energy_loss"),
                           "force_loss": r.get("force_loss")})
    trials_df = pd.DataFrame(trials)
    if not trials_df.empty:  # a retried trial can leave two dirs: keep its latest
        trials_df = trials_df.sort_values("epochs").drop_duplicates(["model", "arm", "seed"], keep="last")
        trials_df = trials_df.sort_values(["model", "arm", "seed"]).reset_index(drop=True)
    return trials_df, pd.DataFrame(curves)


def _ci95(values: np.ndarray) -> float:
    from scipy import stats

    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def _paired(arm: pd.DataFrame, ref: pd.DataFrame, metric: str) -> tuple[float, int]:
    """Two-sided paired t-test on log errors over the seeds both arms finished (p, n pairs)."""
    from scipy import stats

    both = arm.merge(ref, on="seed", suffixes=("", "_ref"))
    both = both[(both.diverged == 0) & (both.diverged_ref == 0)]
    a, b = both[metric].to_numpy(float), both[metric + "_ref"].to_numpy(float)
    ok = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    a, b = a[ok], b[ok]
    if len(a) < 2 or np.allclose(np.log(a), np.log(b)):
        return (1.0 if len(a) >= 2 else math.nan), len(a)
    return float(stats.ttest_rel(np.log(a), np.log(b)).pvalue), len(a)


def summarize(trials: pd.DataFrame, reference_arm: str) -> pd.DataFrame:
    rows = []
    for (model, arm), g in trials.groupby(["model", "arm"], sort=False):
        ok = g[(g.diverged == 0) & g.finished]
        row = {"model": model, "arm": arm, "activation": g.activation.iloc[0],
               "denorm": bool(g.denorm.iloc[0]), "rescale": bool(g.rescale.iloc[0]),
               "seeds": int(g.finished.sum()), "diverged": int(g.diverged.sum()),
               "reference": arm == reference_arm}
        ref = trials[(trials.model == model) & (trials.arm == reference_arm)]
        for metric, short in (("test_energy_loss", "E"), ("test_force_loss", "F")):
            v = ok[metric].to_numpy(float)
            v = v[np.isfinite(v)]
            mean = float(v.mean()) if len(v) else math.nan
            row.update({f"{short}_mean": mean, f"{short}_std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                        f"{short}_ci95": _ci95(v)})
            ref_ok = ref[(ref.diverged == 0) & ref.finished][metric].to_numpy(float)
            ref_mean = float(np.nanmean(ref_ok)) if len(ref_ok) else math.nan
            if arm == reference_arm:
                row[f"{short}_delta_pct"] = row[f"{short}_p_paired"] = math.nan
                continue
            row[f"{short}_delta_pct"] = 100.0 * (mean - ref_mean) / ref_mean if ref_mean else math.nan
            row[f"{short}_p_paired"], row["pairs"] = _paired(g, ref, metric)
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def to_markdown(summary: pd.DataFrame, reference_arm: str, title: str, units: tuple[str, str]) -> str:
    eu, fu = units
    lines = [f"# {title}", "",
             f"Test MAE in physical units (energy {eu}, force {fu}), mean ± std over seeds, 95 % CI "
             f"half-width (t). Δ: change of the mean vs the reference arm **{reference_arm}** on the same "
             "model (negative = better). p: paired t-test on log errors over shared seeds. Diverged "
             "trials are counted, not averaged.", ""]
    for model, g in summary.groupby("model", sort=False):
        lines += [f"## {model}", "",
                  "| arm | seeds | diverged | E mean ± std | E CI95 | ΔE % | p(E) | F mean ± std | F CI95 | ΔF % | p(F) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in g.iterrows():
            name = f"**{r.arm}** (ref)" if r.reference else r.arm
            lines.append(
                f"| {name} | {r.seeds} | {r.diverged} | {_fmt(r.E_mean)} ± {_fmt(r.E_std, 2)} | "
                f"{_fmt(r.E_ci95, 2)} | {'' if r.reference else _fmt(r.E_delta_pct, 3)} | "
                f"{'' if r.reference else _fmt(r.E_p_paired, 2)} | {_fmt(r.F_mean)} ± {_fmt(r.F_std, 2)} | "
                f"{_fmt(r.F_ci95, 2)} | {'' if r.reference else _fmt(r.F_delta_pct, 3)} | "
                f"{'' if r.reference else _fmt(r.F_p_paired, 2)} |")
        lines.append("")
    return "\n".join(lines)


def plot_bars(summary: pd.DataFrame, path: Path, units: tuple[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(summary.arm))
    models = list(dict.fromkeys(summary.model))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.3 * len(arms) * 2), 4.5))
    width = 0.8 / max(1, len(models))
    for ax, (short, label, unit) in zip(axes, (("E", "energy", units[0]), ("F", "force", units[1]))):
        for k, model in enumerate(models):
            g = summary[summary.model == model].set_index("arm").reindex(arms)
            x = np.arange(len(arms)) + (k - (len(models) - 1) / 2) * width
            mean = g[f"{short}_mean"].to_numpy(float)
            err = np.nan_to_num(g[f"{short}_std"].to_numpy(float))
            # lower error bar clipped above zero: a log axis cannot draw mean − std ≤ 0
            ax.bar(x, mean, width, yerr=[np.minimum(err, 0.999 * np.nan_to_num(mean)), err],
                   capsize=3, label=model)
            for xi, d in zip(x, g["diverged"].to_numpy()):
                if d:
                    ax.annotate(f"{int(d)}✕", (xi, 0), xycoords=("data", "axes fraction"),
                                ha="center", va="bottom", color="red", fontsize=8)
        values = summary[f"{short}_mean"].to_numpy(float)
        if np.any(np.isfinite(values) & (values > 0)):  # all diverged: nothing to log-scale
            ax.set_yscale("log")
        ax.set_xticks(np.arange(len(arms)), arms, rotation=35, ha="right")
        ax.set_ylabel(f"test {label} MAE [{unit}]")
        ax.set_title(f"{label} (mean ± std over seeds; ✕ = diverged)")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(curves: pd.DataFrame, path: Path, units: tuple[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(curves.model))
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 8), squeeze=False)
    for j, model in enumerate(models):
        for i, (metric, label, unit) in enumerate((("energy_loss", "energy", units[0]),
                                                   ("force_loss", "force", units[1]))):
            ax = axes[i, j]
            for arm, g in curves[curves.model == model].groupby("arm", sort=False):
                stats = g.groupby("epoch")[metric].agg(["mean", "min", "max"])
                line, = ax.plot(stats.index, stats["mean"], label=arm)
                ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.15, color=line.get_color())
            values = curves.loc[curves.model == model, metric].to_numpy(float)
            if np.any(np.isfinite(values) & (values > 0)):
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"validation {label} MAE [{unit}]")
            ax.set_title(f"{model}: {label} (mean over seeds, band = min–max)")
            ax.grid(which="both", alpha=0.3)
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(experiment_dir: Path, reference_arm: str = "irelu+DN+LR", title: str | None = None,
                 units: tuple[str, str] = ("kcal/mol", "kcal/mol/Å")) -> dict:
    """Write trials.csv, curves.csv, summary.csv, report.md, bars.png, curves.png; return their paths."""
    experiment_dir = Path(experiment_dir)
    trials, curves = collect(experiment_dir)
    if trials.empty:
        raise ValueError(f"{experiment_dir}: no finished trials to report (expected Tune trial folders "
                         f"with params.json and result.json)")
    out = experiment_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    meta_file = out / "study.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    reference_arm = meta.get("reference", reference_arm)
    units = tuple(meta.get("units", units))
    order = {a: k for k, a in enumerate(meta.get("arms", []))}  # the study's own arm order
    trials = trials.assign(_o=trials.arm.map(lambda a: order.get(a, len(order)))) \
        .sort_values(["model", "_o", "arm", "seed"], kind="stable").drop(columns="_o").reset_index(drop=True)
    title = title or f"Ablation report: {meta.get('study', experiment_dir.name)}"
    summary = summarize(trials, reference_arm)
    paths = {"trials": out / "trials.csv", "curves": out / "curves.csv", "summary": out / "summary.csv",
             "markdown": out / "report.md", "bars": out / "bars.png", "learning_curves": out / "curves.png"}
    trials.to_csv(paths["trials"], index=False)
    curves.to_csv(paths["curves"], index=False)
    summary.to_csv(paths["summary"], index=False)
    md = to_markdown(summary, reference_arm, title, units)
    md += "\n" + failed_section(trials)
    md += ("\n![test errors per arm](bars.png)\n\n![learning curves](curves.png)\n\n"
           "Every number comes from `trials.csv`, whose `mlflow_run_id` column names the MLflow run of each trial.\n")
    paths["markdown"].write_text(md)
    plot_bars(summary, paths["bars"], units)
    plot_curves(curves, paths["learning_curves"], units)
    return {"paths": paths, "summary": summary, "trials": trials, "markdown": md}
