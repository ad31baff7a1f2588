"""The ablation report: per data set × model × arm, the test errors over seeds next to the baselines a
model must beat, paired comparisons with the reference arm (ratio of geometric means with a CI, Holm-
adjusted p), divergence counts, and Findings written from those numbers; where the arms hold a full
factorial design, each component's contribution (orchestrator/contributions.py); the trials whose
result.json was cut mid-write or that never finished, with how to resume; CSV + markdown + PNG.

Built from the Tune experiment folder alone (params.json and result.json of each trial, and the
study.json written when the study started), so `dcnn-ablate report PATH` can rebuild it anywhere; each
trial row carries its MLflow run id.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from orchestrator import contributions, grid_anova
from orchestrator.report_design import apply_design, design_section
from orchestrator.report_findings import findings
from orchestrator.report_format import fmt, fmt_p
from orchestrator.report_load import (GROUP, REPORT_DIR, _checkpoint_column, add_identical_arms, collect,
                                      mark_divergence, metric_specs, scan)
from orchestrator.report_plots import plot_bars, plot_curves
from orchestrator.report_stats import ALPHA, baselines_table, holm, paired_ratio, summarize
from orchestrator.report_tables import (damaged_or_unfinished_section, failed_section, groups_section,
                                        peers_section, resume_command, secondary_table, test_split_words,
                                        to_markdown, unfinished_trials)
from search_spaces.seed_design import SeedDesign

__all__ = ["build_report", "REPORT_DIR", "GROUP", "ALPHA", "fmt", "fmt_p", "holm", "paired_ratio", "summarize",
           "findings", "collect", "scan", "mark_divergence", "resume_command"]


def build_report(experiment_dir: Path, reference_arm: str = "irelu+DN+LR", title: str | None = None,
                 location: str | None = None, checkpoints: list[str] | None = None) -> dict:
    """Write trials.csv, curves.csv, summary.csv, baselines.csv, report.md, bars.png, curves.png, and where
    the arms hold a full factorial design contributions.csv and contributions.png. `location`: where the
    study lives when `experiment_dir` is a local copy of it (an object-store URI), for the commands the
    report suggests; `checkpoints`: the study's trainer checkpoints relative to it (TRIAL/checkpoint_*/
    trainer.pt; found in `experiment_dir` when not given), each trial's newest named in trials.csv."""
    experiment_dir = Path(experiment_dir)
    location = location or str(experiment_dir)
    out = experiment_dir / REPORT_DIR
    meta_file = out / "study.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    datasets = meta.get("dataset_info", {})
    labels = {path: d["label"] for path, d in datasets.items()}
    trials, curves, silent = scan(experiment_dir, labels)
    if trials.empty:
        lost = silent[silent.model.fillna("").astype(str) == ""]  # folders whose config is lost
        silent = silent[silent.model.fillna("").astype(str) != ""]
        started = (f"; {len(silent)} trial(s) started but reported no epoch ({', '.join(silent.trial_dir)}): "
                   f"{resume_command(meta, location)}" if not silent.empty else "")
        started += "".join(f"; {r.trial_dir}: {r.damaged}" for r in lost.itertuples())
        raise ValueError(f"{experiment_dir}: no finished trials to report (expected Tune trial folders "
                         f"with params.json and result.json){started}")
    out.mkdir(exist_ok=True)
    trials["checkpoint"] = _checkpoint_column(trials, experiment_dir, location, checkpoints)
    reference_arm = meta.get("reference", reference_arm)
    units = {d["label"]: tuple(d["units"]) for d in datasets.values()}
    for data in trials.data.unique():
        units.setdefault(data, tuple(meta.get("units", ("kcal/mol", "kcal/mol/Å"))))
    specs = metric_specs(trials)
    trials = mark_divergence(add_identical_arms(trials, meta.get("identical", {})))
    order = {a: k for k, a in enumerate(meta.get("arms", []))}  # the study's own arm order
    trials = trials.assign(_o=trials.arm.map(lambda a: order.get(a, len(order)))) \
        .sort_values(GROUP + ["_o", "arm", "seed"], kind="stable").drop(columns="_o").reset_index(drop=True)
    title = title or f"Ablation report: {meta.get('study', experiment_dir.name)}"
    summary = summarize(trials, reference_arm)
    base = baselines_table(summary, specs)
    main = tuple(m for m in specs if m.main)  # the main table, Findings and plots; the rest: a second table
    design = SeedDesign(**meta["seed_design"]) if meta.get("seed_design") else None
    if design:  # decisions of the sequential seed design replace the fixed-n tests
        summary = apply_design(summary, trials, reference_arm, main, design)
    found = findings(summary, reference_arm, units, main, design)
    unfinished = unfinished_trials(trials, silent, meta)
    analyses = contributions.analyse(trials, reference_arm, main)
    grids = grid_anova.analyse(trials, reference_arm, main)
    paths = {"trials": out / "trials.csv", "curves": out / "curves.csv", "summary": out / "summary.csv",
             "baselines": out / "baselines.csv", "findings": out / "findings.md",
             "markdown": out / "report.md", "bars": out / "bars.png", "learning_curves": out / "curves.png"}
    trials.to_csv(paths["trials"], index=False)
    curves.to_csv(paths["curves"], index=False)
    summary.to_csv(paths["summary"], index=False)
    base.to_csv(paths["baselines"], index=False)
    paths["findings"].write_text(found + "\n")
    contrib = pd.concat([contributions.to_frame(analyses), grid_anova.to_frame(grids)], ignore_index=True)
    if analyses or grids:
        paths["contributions"] = out / "contributions.csv"
        contrib.to_csv(paths["contributions"], index=False)
        if contributions.plot_waterfall(analyses, out / "contributions.png", units):
            paths["contributions_plot"] = out / "contributions.png"
    peers = meta.get("peers", [])
    notes = {d["label"]: test_split_words(d, meta.get("settings", {})) for d in datasets.values()}
    md = (to_markdown(summary, reference_arm, title, units, main, peers, notes, design) + "\n"
          + groups_section(trials, reference_arm, units, specs) + peers_section(summary, peers, units, main)
          + secondary_table(summary, units, specs)
          + failed_section(trials)
          + damaged_or_unfinished_section(trials, silent, unfinished, meta, location)
          + (design_section(summary, trials, design, main) if design else "") + found)
    section = contributions.to_markdown(analyses, units, grid_anova.to_markdown(grids))
    md += ("\n" + section if section else "")
    md += ("\n![test errors per arm](bars.png)\n\n![learning curves](curves.png)\n\n"
           "Every number comes from `trials.csv`, whose `mlflow_run_id` column names the MLflow run of each trial; "
           "its `checkpoint` column names each trial's trained model, which "
           "`dcnn.calculator.DCNNCalculator(checkpoint)` loads as an ASE calculator.\n")
    paths["markdown"].write_text(md)
    plot_bars(summary, paths["bars"], units, main)
    plot_curves(curves[curves.trial_id.isin(trials.trial_id)] if not curves.empty else curves,
                paths["learning_curves"], units, main)
    return {"paths": paths, "summary": summary, "trials": trials, "markdown": md, "baselines": base,
            "findings": found, "metric_specs": specs, "contributions": contrib, "unfinished": unfinished,
            "study": meta}
