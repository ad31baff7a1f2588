"""The report of a `seeds: auto` study: each comparison's decision (lower / higher / equivalent, at which n, or
open at the maximum) from orchestrator/sequential.py, in place of the fixed design's Holm-adjusted p, and
the trials the design spent against fixed designs.

Why in place of p: after looks at every added seed a fixed-n p-value is no longer a valid test (optional
stopping inflates it); the design's repeated confidence intervals and decisions are.  The report recomputes
the decisions from the trials alone (the same replay the searcher ran), so every decision is traceable to
the MLflow runs of its seeds.
"""
from __future__ import annotations

import math

import pandas as pd

from orchestrator.report_format import fmt
from orchestrator.report_load import GROUP
from orchestrator.sequential import design_decisions
from search_spaces.seed_design import SeedDesign

__all__ = ["apply_design", "design_section", "decision_words", "design_intro", "rci_words"]


def apply_design(summary: pd.DataFrame, trials: pd.DataFrame, reference_arm: str, specs: tuple,
                 design: SeedDesign) -> pd.DataFrame:
    """`summary` with each comparison's `{short}_decision`, `_decided_n`, `_rci_lo`, `_rci_hi`, `_level`;
    `{short}_significant` then means decided lower or higher (a twin shows its original's decision)."""
    decisions = design_decisions(trials, reference_arm, [(m.short, m.test_key) for m in specs], design)
    out = summary.copy()
    for m in specs:
        s = m.short
        for col in ("decision", "decided_n", "rci_ratio", "rci_lo", "rci_hi", "level"):
            out[f"{s}_{col}"] = "" if col == "decision" else math.nan
        for i, r in out.iterrows():
            if r.reference:
                continue
            arm = r.identical_to if r.identical_to else r.arm
            d = decisions.get((r.data, r.model, arm, s))
            if d is None:
                continue
            out.loc[i, [f"{s}_decision"]] = d.kind
            out.loc[i, [f"{s}_decided_n", f"{s}_rci_ratio", f"{s}_rci_lo", f"{s}_rci_hi", f"{s}_level"]] = \
                [d.n, d.ratio, d.lo, d.hi, d.level]
        out[f"{s}_significant"] = out[f"{s}_decision"].isin(["lower", "higher"])
    return out


def decision_words(r, short: str, design: SeedDesign) -> str:
    """'lower at n = 4', 'equivalent (within ±10 %) at n = 6', 'open at n = 10' (the table's cell)."""
    kind, n = r[f"{short}_decision"], r[f"{short}_decided_n"]
    if not kind:
        return "–"
    n_said = f"n = {int(n)}" if isinstance(n, (int, float)) and math.isfinite(n) else "n = 0"
    if kind == "open":
        return f"open at {n_said}"
    if kind == "equivalent":
        return f"equivalent (±{design.margin:.0%}) at {n_said}"
    return f"**{kind}** at {n_said}\\*"


def rci_words(r, short: str) -> str:
    """'×0.45 [0.30, 0.68]': the ratio and repeated confidence interval at the deciding (or last) look."""
    ratio, lo, hi = r[f"{short}_rci_ratio"], r[f"{short}_rci_lo"], r[f"{short}_rci_hi"]
    if not (isinstance(ratio, float) and math.isfinite(ratio)):
        return "–"
    return f"×{fmt(ratio, 3)}" + (f" [{fmt(lo)}, {fmt(hi)}]" if math.isfinite(lo) else "")


def design_intro(design: SeedDesign) -> str:
    """The table caption's sentence on the decisions (it replaces the fixed design's p-value sentence)."""
    return (f"**decision**: seeds were added to an arm one at a time, from {design.min} up to {design.max}, only "
            f"while one of its comparisons with the reference was open (`seeds: auto`); each is decided "
            f"**lower** or **higher** (ratio of geometric means ≠ 1) or **equivalent** (within ±{design.margin:.0%}) "
            f"at the n shown, by repeated confidence intervals with family-wise error {design.alpha} over every "
            f"look and every comparison of a data set × model (α spent as α·t³ over the looks, Holm's recycling; "
            f"orchestrator/sequential.py), or left **open** at {design.max} seeds. A fixed-n p-value is not shown: "
            f"after looking at every seed it would not be valid.")


def design_section(summary: pd.DataFrame, trials: pd.DataFrame, design: SeedDesign, specs: tuple) -> str:
    """## Seeds spent: per data set × model, each comparison's decision and interval; trials spent against
    fixed designs of `min` and `max` seeds."""
    lines = ["## Seeds spent where questions were open", "",
             f"`seeds: auto` (min {design.min}, max {design.max}, margin ±{design.margin:.0%}, α = {design.alpha}). "
             f"Interval: the repeated confidence interval of the ratio at the deciding look (at the last look when "
             f"open), valid across every look; α share: the comparison's part of α at that look (α divided among the "
             f"comparisons still open; a decided one hands its share on). An arm runs one seed past its deciding n "
             f"when the decision came from α another comparison freed while that seed was already training.", ""]
    run = trials[trials.identical_to.astype(str).isin(["", "nan", "None"])] if "identical_to" in trials else trials
    total = decided = 0
    for (data, model), g in summary.groupby(GROUP, sort=False):
        lines += [f"### {data} · {model}", "",
                  "| arm | seeds run | " + " | ".join(f"{m.short}: decision | {m.short}: ratio [interval] | "
                                                       f"{m.short}: α share" for m in specs) + " |",
                  "|---|---|" + "---|---|---|" * len(specs)]
        for _, r in g.iterrows():
            if r.reference:
                continue
            mine = run[(run.data == data) & (run.model == model) & (run.arm == (r.identical_to or r.arm))]
            cells = []
            for m in specs:
                s = m.short
                if not r.identical_to:
                    total += 1
                    decided += r[f"{s}_decision"] not in ("", "open")
                interval = rci_words(r, s)
                level = r[f"{s}_level"]
                cells += [decision_words(r, s, design), interval,
                          f"{level:.2g}" if isinstance(level, float) and math.isfinite(level) else "–"]
            twin = f" ≡ {r.identical_to}" if r.identical_to else ""
            lines.append(f"| {r.arm}{twin} | {'≡' if twin else len(mine)} | " + " | ".join(cells) + " |")
        lines.append("")
    cells = run.groupby(GROUP + ["arm"]).ngroups
    spent = len(run)
    lines += [f"**Decided {decided} of {total} comparisons with {spent} trials**, against {cells * design.max} "
              f"for a fixed design of {design.max} seeds per arm and {cells * design.min} for {design.min} seeds "
              f"({cells} (data set, model, arm) cells that run; identical-by-construction arms get no seeds of their "
              f"own).", "", ""]
    return "\n".join(lines)
