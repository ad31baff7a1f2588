"""The report's figures: test errors per arm (bars.png) and validation curves (curves.png)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from pathlib import Path

from orchestrator.report_format import fmt


def plot_bars(summary: pd.DataFrame, path: Path, units: dict, specs: tuple) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(summary.arm))
    models = list(dict.fromkeys(summary.model))
    datas = list(dict.fromkeys(summary.data))
    # rotated arm names take height: a study's own factors make them long (irelu+DN+LR+force_weight=10+cutoff=4)
    label_height = 0.075 * max(len(a) for a in arms)
    fig, axes = plt.subplots(len(datas), len(specs), figsize=(max(8, min(1.3 * len(arms), 12) * len(specs)),
                                                              (3.5 + label_height) * len(datas)),
                             squeeze=False)
    width = 0.8 / max(1, len(models))
    for row, data in enumerate(datas):
        sd = summary[summary.data == data]
        for ax, spec in zip(axes[row], specs):
            short, label, unit = spec.short, spec.name, spec.unit_for(units.get(data))
            for k, model in enumerate(models):
                g = sd[sd.model == model].set_index("arm").reindex(arms)
                x = np.arange(len(arms)) + (k - (len(models) - 1) / 2) * width
                mean = g[f"{short}_mean"].to_numpy(float)
                err = np.nan_to_num(g[f"{short}_std"].to_numpy(float))
                # lower error bar clipped above zero: a log axis cannot draw mean − std ≤ 0
                twin = g["identical_to"].fillna("").astype(bool).to_numpy()
                bars = ax.bar(x, mean, width, yerr=[np.minimum(err, 0.999 * np.nan_to_num(mean)), err],
                              capsize=3, label=model)
                for bar, same in zip(bars, twin):  # identical by construction: the twin's numbers, hatched
                    if same:
                        bar.set_hatch("//")
                        bar.set_alpha(0.5)
                for xi, d in zip(x, g["diverged"].fillna(0).to_numpy()):
                    if d:
                        ax.annotate(f"{int(d)}✕", (xi, 0), xycoords=("data", "axes fraction"),
                                    ha="center", va="bottom", color="red", fontsize=8)
            base = float(sd[f"{short}_baseline"].mean())
            if np.isfinite(base):
                ax.axhline(base, color="k", ls="--", lw=1, label=f"baseline ({spec.baseline_row}) {fmt(base)}")
            values = sd[f"{short}_mean"].to_numpy(float)
            if np.any(np.isfinite(values) & (values > 0)):  # all diverged: nothing to log-scale
                ax.set_yscale("log")
            ax.set_xticks(np.arange(len(arms)), arms, rotation=35, ha="right")
            ax.set_ylabel(f"test {label}{' ' + spec.stat if spec.stat else ''}" + (f" [{unit}]" if unit else ""))
            ax.set_title(f"{data}: {label} (mean ± std over seeds; ✕ = diverged; hatched ≡ identical twin)")
            ax.grid(axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: pd.DataFrame, path: Path, units: dict, specs: tuple) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(curves.data, curves.model)))
    fig, axes = plt.subplots(len(specs), len(panels), figsize=(6 * len(panels), 4 * len(specs)), squeeze=False)
    for j, (data, model) in enumerate(panels):
        sub = curves[(curves.data == data) & (curves.model == model)]
        for i, spec in enumerate(specs):
            metric, label, unit = spec.key, spec.name, spec.unit_for(units.get(data))
            ax = axes[i, j]
            for arm, g in sub.groupby("arm", sort=False):
                stats = g.groupby("epoch")[metric].agg(["mean", "min", "max"])
                line, = ax.plot(stats.index, stats["mean"], label=arm)
                ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.15, color=line.get_color())
            values = sub[metric].to_numpy(float)
            if np.any(np.isfinite(values) & (values > 0)):
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"validation {label}{' ' + spec.stat if spec.stat else ''}" + (f" [{unit}]" if unit else ""))
            ax.set_title(f"{data} · {model}: {label} (mean over seeds, band = min–max)")
            ax.grid(which="both", alpha=0.3)
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
