"""The Contributions' "every level" part: where a factor has more than two levels (five activations, three
force weights), a type-2 ANOVA of log(test error) over the largest full grid of levels the arms hold, every
other factor at the reference arm's level. The 2^k design (orchestrator/contributions.py) covers two
levels per component; this covers the rest, with each level against the reference left to the Findings.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from orchestrator.contributions import MAX_METRICS, anova_lines, pretty, seed_entry
from search_spaces import factors as factor_decl


@dataclass
class Grid:
    """A full factorial over `factors`' levels among one (data set, model)'s arms (every other factor at the
    reference arm's level): `cells` maps each combination of levels to its arm."""

    data: str
    model: str
    factors: tuple  # Factor
    levels: tuple  # per factor: its levels (str)
    cells: dict  # tuple of levels -> arm
    specs: tuple = ()
    anova: dict = field(default_factory=dict)  # slug -> DataFrame(effect, df, F, p) or None
    note: dict = field(default_factory=dict)  # slug -> residual df, cells' seed counts, or why no test

    @property
    def words(self) -> str:
        def said(f, level):
            return {"True": "on", "False": "off"}.get(level, level) if f.said == "flag" else pretty(level)

        return " × ".join(f"{f.name} ({', '.join(said(f, x) for x in lv)})" for f, lv in zip(self.factors, self.levels))


def find_grid(arms: pd.DataFrame, reference: str, factors: tuple) -> tuple | None:
    """(factors, levels, cells) of the largest full grid of levels of two or more factors among `arms`
    (others at the reference's level) holding a factor with more than two levels; None when there is none
    (one factor alone is the Findings' pairwise comparisons; all binary, the 2^k design's ANOVA). Factors a model ignores
    by construction (DN without BatchNorm: the arms carry an `identical_to` twin) are left out."""
    arms = arms.drop_duplicates("arm")
    ref_rows = arms[arms.arm == reference]
    if ref_rows.empty:
        return None
    twins = arms.get("identical_to", pd.Series([""] * len(arms), index=arms.index)).fillna("").astype(bool)
    run = arms[~twins]
    table = {f.key: run[f.key].astype(str) for f in factors if f.key in run}
    ref = {k: str(ref_rows.iloc[0][k]) for k in table}
    candidates = [f for f in factors if f.key in table and table[f.key].nunique() > 1
                  and not (f.same_without_batchnorm and twins.any())]
    for size in range(len(candidates), 1, -1):
        for combo in itertools.combinations(candidates, size):
            held = [k for k in table if k not in {f.key for f in combo}]
            inside = run[np.logical_and.reduce([table[k] == ref[k] for k in held])] if held else run
            levels = tuple(tuple(dict.fromkeys(inside[f.key].astype(str))) for f in combo)
            if any(len(lv) < 2 for lv in levels) or all(len(lv) == 2 for lv in levels):
                continue
            have = {tuple(str(r[f.key]) for f in combo): r.arm for _, r in inside.iterrows()}
            cells = {c: have.get(c) for c in itertools.product(*levels)}
            if all(cells.values()):
                return combo, levels, cells
    return None


def analyse(trials: pd.DataFrame, reference_arm: str, specs: tuple, group=("data", "model")) -> list[Grid]:
    """A Grid with its ANOVA for every (data set, model) whose arms hold one (find_grid)."""
    specs = tuple(specs)[:MAX_METRICS]
    factors = factor_decl.study_factors(trials)
    columns = ["arm", *[f.key for f in factors if f.key in trials], "identical_to"]
    out = []
    for (data, model), g in trials.groupby(list(group), sort=False):
        found = find_grid(g.reindex(columns=columns), reference_arm, factors)
        if found is None:
            continue
        grid = Grid(str(data), str(model), *found, specs=specs)
        for spec in specs:
            grid.anova[spec.slug], grid.note[spec.slug] = _grid_anova(g, grid, spec)
        out.append(grid)
    return out


def _grid_anova(g: pd.DataFrame, grid: Grid, spec) -> tuple[pd.DataFrame | None, str]:
    """Type-2 ANOVA of log errors over the grid's cells: main effects and two-way interactions, every
    finished seed of every cell (seed_entry's rules for diverged and stalled seeds)."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rows, counts = [], []
    names = [f"f{i}" for i in range(len(grid.factors))]
    for combo, arm in grid.cells.items():
        n = 0
        for _, row in g[g.arm == arm].iterrows():
            y, _ = seed_entry(row, spec)
            if math.isfinite(y):
                rows.append({"y": y, **dict(zip(names, combo))})
                n += 1
        counts.append(n)
    if min(counts) == 0:
        return None, "some cell has no finished seed: no test"
    terms = [f"C({n})" for n in names]
    formula = "y ~ " + (f"({' + '.join(terms)})**2" if len(terms) > 1 else terms[0])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fit = smf.ols(formula, pd.DataFrame(rows)).fit()
        if fit.df_resid <= 0:
            return None, f"no residual degrees of freedom with {min(counts)}–{max(counts)} seed(s) per cell: no test"
        table = anova_lm(fit, typ=2)
    labels = {f"C({n})": f.name for n, f in zip(names, grid.factors)}
    out = pd.DataFrame({"effect": [" × ".join(labels.get(t, t) for t in name.split(":")) for name in table.index],
                        "df": table["df"].to_numpy(float), "F": table["F"].to_numpy(float),
                        "p": table["PR(>F)"].to_numpy(float)})
    seeds = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"
    return out[out.effect != "Residual"].reset_index(drop=True), f"residual df {int(fit.df_resid)}; {seeds} seed(s) per cell"


def to_markdown(grids: list[Grid]) -> str:
    """The Contributions' "every level" part: per (data set, model) its grid and ANOVA tables."""
    if not grids:
        return ""
    lines = ["### Every level", "",
             "Where a factor has more than two levels: a type-2 ANOVA (statsmodels OLS, main effects and two-way "
             "interactions, p unadjusted) of log(test error) over the largest full grid of levels the arms hold, "
             "every other factor at the reference arm's level; each level against the reference is in the "
             "Findings.", ""]
    for grid in grids:
        lines += [f"**{grid.data} · {grid.model}**: {len(grid.cells)} cells over {grid.words}.", ""]
        for spec in grid.specs:
            lines += anova_lines(spec, grid.anova[spec.slug], grid.note[spec.slug])
    return "\n".join(lines)


def to_frame(grids: list[Grid]) -> pd.DataFrame:
    """contributions.csv rows of the grids' ANOVA: row = grid_anova."""
    rows = []
    for grid in grids:
        for spec in grid.specs:
            table = grid.anova[spec.slug]
            for r in ([] if table is None else table.itertuples()):
                rows.append({"data": grid.data, "model": grid.model, "row": "grid_anova", "metric": spec.slug,
                             "components": " × ".join(f.name for f in grid.factors), "component": r.effect,
                             "df": r.df, "F": r.F, "p": r.p, "note": grid.note[spec.slug]})
    return pd.DataFrame(rows)
