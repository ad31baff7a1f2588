"""What each part of the method contributes: exact Shapley shares over a full 2^k factorial design.

The pairwise table of the report compares each arm with the reference one at a time, which answers
"what does removing X cost *given everything else is on*". When a study's arms hold every on/off
combination of k binary components (every other factor at the reference arm's level), the change of
mean log error from the all-off cell to the all-on cell can be split exactly into one share per
component: the Shapley value, the average of a component's effect over every order in which the
components can be switched on. Shares add up to the total, an interaction is split equally between the
components that make it, and on the log scale a share is a factor on the geometric-mean error.

A factorial ANOVA (statsmodels, main effects and two-way interactions) on the same log errors says which
effects the seeds resolve (where a factor has more than two levels, orchestrator/grid_anova.py adds an
ANOVA over every level). The components come
from the factor declarations (search_spaces/factors.py: the built-ins' `component`, and a study's own
factor with two levels): nothing below knows a factor by name.
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dcnn.families import BLOWUP_FACTOR
from orchestrator.report_format import fmt, fmt_p
from search_spaces import factors as factor_decl
from search_spaces.factors import BUILTIN, REFERENCE, Factor, level_text


@dataclass(frozen=True)
class Component:
    """A binary part of the method: `key` is the trials' column (a study factor), `on` the level with the
    component (REFERENCE: whatever the reference arm has, e.g. its activation), `off` the level without;
    `arrow`: a row says 'activation original → irelu' rather than 'DN added'."""

    key: str
    label: str  # in tables and on the plot: "DN"
    on: object
    off: object
    added: str = "added"  # how a row says the component is switched on: "DN added"
    arrow: bool = False
    factor: Factor | None = None

    def levels(self, reference_row) -> tuple:
        """(on, off) for this study: REFERENCE resolves to the reference arm's own level."""
        on = level_of(reference_row, self) if self.on is REFERENCE else self.on
        return on, self.off

    def change(self, on, off) -> str:
        """What switching the component on means, in words: 'activation original → irelu', 'DN added'."""
        return f"{self.label} {pretty(off)} → {pretty(on)}" if self.arrow else f"{self.label} {self.added}"


def _builtin_component(f: Factor) -> Component:
    on, off = f.component
    return Component(f.key, f.component_label or f.name, on, off, f.added, arrow=on is REFERENCE, factor=f)


# The method's binary components, in the order tables and the waterfall list them (the built-in factors'
# declarations): activation: the reference arm's (integrated) activation vs the architecture's own; DN:
# BatchNorm deleted; LR: labels divided by C; ES: per-species energy shift; LSUV: LSUV vs the default init.
COMPONENTS = tuple(_builtin_component(f) for f in BUILTIN.values() if f.component)


def components_for(arms: pd.DataFrame, reference: str, factors: tuple) -> tuple:
    """The built-in components, then each of the study's own factors that has exactly two levels among
    `arms` (on: the reference arm's level, off: the other)."""
    out = list(COMPONENTS)
    ref_rows = arms[arms.arm == reference]
    for f in factors:
        if f.builtin or f.key not in arms or ref_rows.empty:
            continue
        levels = list(dict.fromkeys(arms[f.key].astype(str)))
        on = str(ref_rows.iloc[0][f.key])
        if len(levels) == 2 and on in levels:
            off = next(x for x in levels if x != on)
            out.append(Component(f.key, f.name, on, off, arrow=True, factor=f))
    return tuple(out)


MIN_K = 2  # k = 1 is one pairwise comparison: the report's table says it already
MAX_METRICS = 2  # the section covers the family's first metrics (molecules: E and F; PINNs: relL2, nRMSE)
N_BOOT = 2000
BOOT_SEED = 0  # fixed: the same study folder always gives the same intervals
LEVEL = 0.95
ROUGH_BELOW = 5  # fewer seeds than this: few distinct bootstrap resamples, the interval is rough


def level_of(row, component: Component):
    """A trial's (or arm's) level of a component, normalised: a bool for on/off flags, else a string; a
    column the study does not carry reads as the factor's default (search_spaces/factors.level_of)."""
    f = component.factor or factor_decl.factor(component.key)
    value = factor_decl.level_of(row, f)
    return bool(value) if isinstance(component.off, bool) else str(value)


# -- Shapley values ------------------------------------------------------------------------------------
def shapley_weights(k: int) -> np.ndarray:
    """W (k × 2^k) with φ = W @ v for cell values v indexed by bit mask (bit i set: component i on):
    φ_i = Σ_{S ⊆ N∖i} |S|!(k−|S|−1)!/k! [v(S ∪ i) − v(S)]."""
    w = np.zeros((k, 2 ** k))
    for i in range(k):
        for mask in range(2 ** k):
            if mask >> i & 1:
                continue
            s = bin(mask).count("1")
            weight = math.factorial(s) * math.factorial(k - s - 1) / math.factorial(k)
            w[i, mask | 1 << i] += weight
            w[i, mask] -= weight
    return w


def shapley(values) -> np.ndarray:
    """Exact Shapley shares of the components for cell values of shape (2^k,) or (2^k, B)."""
    values = np.asarray(values, dtype=float)
    k = int(round(math.log2(values.shape[0])))
    if 2 ** k != values.shape[0]:
        raise ValueError(f"expected 2^k cell values, got {values.shape[0]}")
    return shapley_weights(k) @ values


def bootstrap_shares(logs: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                     level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each share over resampled seeds: `logs` is (2^k cells × n seeds), column j
    the same seed in every cell, and a resample draws seed ids with replacement for all cells at once,
    so the pairing by seed is kept. NaN with fewer than 2 seeds (nothing to resample); lo = hi exactly
    when the seeds agree (resampled deviations from the mean are then exactly zero)."""
    logs = np.asarray(logs, dtype=float)
    cells, n = logs.shape
    k = int(round(math.log2(cells)))
    if n < 2:
        return np.full(k, math.nan), np.full(k, math.nan)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.stack([np.bincount(d, minlength=n) for d in draws]).T / n  # n × B weights per seed
    mean = logs.mean(axis=1, keepdims=True)
    resampled = mean + (logs - mean) @ counts  # cells × B
    shares = shapley_weights(k) @ resampled
    tail = (1 - level) / 2
    lo, hi = np.quantile(shares, [tail, 1 - tail], axis=1)
    return lo, hi


# -- the design ---------------------------------------------------------------------------------------
@dataclass
class Design:
    """A full 2^k factorial over `components`: `cells[mask]` is the arm whose component i is on when bit
    i of mask is set, every other factor at the reference arm's level (`held`: those the arms vary)."""

    components: tuple
    levels: tuple  # (on, off) per component
    cells: tuple  # arm key per mask
    reference: str
    reference_mask: int
    held: dict = field(default_factory=dict)  # label -> the reference's level
    noop: tuple = ()  # indices of components whose on/off cells are the same trials (≡ by construction)

    @property
    def k(self) -> int:
        return len(self.components)

    @property
    def all_off(self) -> str:
        return self.cells[0]

    @property
    def all_on(self) -> str:
        return self.cells[-1]


def _at_reference(arms: pd.DataFrame, reference: str, others: list) -> tuple[pd.DataFrame, dict]:
    """The arms whose factors that are no component (a force weight of three levels) sit at the reference
    arm's level, and {name: that level} for those that vary (the design holds them there)."""
    ref_rows = arms[arms.arm == reference]
    if ref_rows.empty or not others:
        return arms, {}
    keep = np.ones(len(arms), dtype=bool)
    held = {}
    for f in others:
        column = arms[f.key].astype(str)
        ref = str(ref_rows.iloc[0][f.key])
        keep &= (column == ref).to_numpy()
        if column.nunique() > 1:
            held[f.name] = pretty(ref)
    return arms[keep], held


def pretty(level) -> str:
    """A level read back from a table (a string) as an arm's key writes it: '30.0' → '30', 'True' → 'true'."""
    text = str(level)
    try:
        return level_text(float(text)) if text.lower() not in ("nan", "inf", "-inf") else text
    except ValueError:
        return text


def find_design(arms: pd.DataFrame, reference: str, components: tuple = COMPONENTS,
                min_k: int = MIN_K) -> Design | None:
    """The largest set of components (ties: COMPONENTS order) whose 2^k on/off cells all exist among
    `arms` (one row per arm: `arm`, the factor columns, optionally `identical_to`) with every other
    factor at the reference arm's level; None when no such set has k ≥ min_k."""
    arms = arms.drop_duplicates("arm")
    ref_rows = arms[arms.arm == reference]
    if ref_rows.empty:
        return None
    ref = ref_rows.iloc[0]
    levels = {c.key: c.levels(ref) for c in components}
    candidates = [c for c in components if levels[c.key][0] != levels[c.key][1]
                  and level_of(ref, c) in levels[c.key]]
    table = {row.arm: {c.key: level_of(row, c) for c in components} for _, row in arms.iterrows()}
    for size in range(len(candidates), min_k - 1, -1):
        for combo in itertools.combinations(candidates, size):
            cells = _cells(table, ref, combo, components, levels)
            if cells is None:
                continue
            held = {c.label: level_of(ref, c) for c in components if c not in combo
                    and len({v[c.key] for v in table.values()}) > 1}
            ref_mask = sum(1 << i for i, c in enumerate(combo) if level_of(ref, c) == levels[c.key][0])
            design = Design(tuple(combo), tuple(levels[c.key] for c in combo), cells, reference, ref_mask, held)
            design.noop = _noop(design, arms)
            return design
    return None


def _cells(table: dict, ref, combo: tuple, components: tuple, levels: dict) -> tuple | None:
    """The arm of every on/off combination of `combo` (others at the reference's level), or None."""
    held = {c.key: level_of(ref, c) for c in components if c not in combo}
    by_levels = {tuple(sorted(v.items())): arm for arm, v in table.items()}
    cells = []
    for mask in range(2 ** len(combo)):
        want = {**held, **{c.key: levels[c.key][0 if mask >> i & 1 else 1] for i, c in enumerate(combo)}}
        arm = by_levels.get(tuple(sorted(want.items())))
        if arm is None:
            return None
        cells.append(arm)
    return tuple(cells)


def _noop(design: Design, arms: pd.DataFrame) -> tuple:
    """Components whose every on/off pair of cells is one computation run once (DN on a model without
    BatchNorm: the report's ≡ twins): their share is 0 by construction, and the ANOVA leaves them out
    (the twin's rows would count the same seeds twice)."""
    twin = dict(zip(arms.arm, arms.get("identical_to", pd.Series([""] * len(arms))).fillna("")))
    out = []
    for i in range(design.k):
        pairs = [(design.cells[m], design.cells[m | 1 << i]) for m in range(2 ** design.k) if not m >> i & 1]
        if all(twin.get(a) == b or twin.get(b) == a for a, b in pairs):
            out.append(i)
    return tuple(out)


# -- the values entering the cells ----------------------------------------------------------------------
def seed_entry(row, spec) -> tuple[float, bool]:
    """(log error, capped) of one trial for one metric. A diverged trial enters at the blow-up cap,
    log(BLOWUP_FACTOR × its zero-output scale), where its error is not finite or above the cap (as
    measured otherwise); a failed, unfinished or stalled trial (it never trained: the setup's failure, not a
    factor's effect), or one without a cap, gives NaN (left out)."""
    if not bool(row.get("finished", True)) or _number(row.get("stalled", 0)) == 1:
        return math.nan, False
    value = _number(row.get(spec.test_key))
    if int(_number(row.get("diverged")) or 0):
        scale = _number(row.get(spec.blowup_scale or spec.baseline or ""))
        cap = BLOWUP_FACTOR * scale
        if not (math.isfinite(value) and value <= cap):
            return (math.log(cap), True) if math.isfinite(cap) and cap > 0 else (math.nan, False)
    return (math.log(value), False) if math.isfinite(value) and value > 0 else (math.nan, False)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class Analysis:
    """The Contributions of one (data set, model): per metric (its slug) the cells' log errors over the
    seeds in every cell, the shares with their interval and the ANOVA; `reason` when not computable."""

    data: str
    model: str
    design: Design
    specs: tuple
    seeds: list = field(default_factory=list)
    reason: str = ""
    logs: dict = field(default_factory=dict)  # slug -> (2^k × n)
    capped: dict = field(default_factory=dict)  # slug -> [(arm, seed)]
    shares: dict = field(default_factory=dict)  # slug -> {"phi", "lo", "hi", "v"}
    anova: dict = field(default_factory=dict)  # slug -> DataFrame(effect, df, F, p)
    anova_note: dict = field(default_factory=dict)  # slug -> why there is none / residual df
    dropped: list = field(default_factory=list)  # seeds some cell lacks
    baselines: dict = field(default_factory=dict)  # slug -> the metric's test baseline (mean over the cells)

    @property
    def computable(self) -> bool:
        return not self.reason


def analyse(trials: pd.DataFrame, reference_arm: str, specs: tuple, group=("data", "model")) -> list[Analysis]:
    """An Analysis for every (data set, model) of `trials` (the report's trials, after mark_divergence)
    whose arms hold a full design with k ≥ MIN_K."""
    specs = tuple(specs)[:MAX_METRICS]
    out = []
    factors = factor_decl.study_factors(trials)
    columns = ["arm", *[f.key for f in factors if f.key in trials], "identical_to"]
    for (data, model), g in trials.groupby(list(group), sort=False):
        arms = g.reindex(columns=columns).drop_duplicates("arm")
        components = components_for(arms, reference_arm, factors)
        arms, held = _at_reference(arms, reference_arm, [f for f in factors if f.key in arms
                                                           and f.key not in {c.key for c in components}])
        design = find_design(arms, reference_arm, components)
        if design is not None:
            design.held = {**design.held, **held}
            out.append(_analyse(g, design, specs, str(data), str(model)))
    return out


def _analyse(g: pd.DataFrame, design: Design, specs: tuple, data: str, model: str) -> Analysis:
    a = Analysis(data, model, design, specs)
    entries = {}  # (mask, seed) -> {slug: (log, capped)}
    usable = []  # per cell: the seeds with a value on every metric
    for mask, arm in enumerate(design.cells):
        seeds = set()
        for _, row in g[g.arm == arm].iterrows():
            entries[mask, row.seed] = e = {spec.slug: seed_entry(row, spec) for spec in specs}
            if all(math.isfinite(v) for v, _ in e.values()):
                seeds.add(row.seed)
        usable.append(seeds)
    empty = [arm for arm, seeds in zip(design.cells, usable) if not seeds]
    if empty:
        a.reason = "not computable: " + "; ".join(_why_empty(arm, g[g.arm == arm]) for arm in empty)
        return a
    common = sorted(set.intersection(*usable))
    if not common:
        a.reason = "not computable: no seed has a value in every cell (" + "; ".join(
            f"{arm}: seeds {', '.join(map(str, sorted(s)))}" for arm, s in zip(design.cells, usable)) + ")"
        return a
    a.seeds, a.dropped = common, sorted(set.union(*usable) - set(common))
    a.baselines = _baselines(g[g.arm.isin(design.cells)], specs)
    for spec in specs:
        logs = np.array([[entries[m, s][spec.slug][0] for s in common] for m in range(2 ** design.k)])
        a.logs[spec.slug] = logs
        a.capped[spec.slug] = [(design.cells[m], s) for m in range(2 ** design.k) for s in common
                               if entries[m, s][spec.slug][1]]
        v = logs.mean(axis=1)
        lo, hi = bootstrap_shares(logs)
        a.shares[spec.slug] = {"phi": shapley(v), "lo": lo, "hi": hi, "v": v}
        a.anova[spec.slug], a.anova_note[spec.slug] = factorial_anova(logs, design)
    return a


def _baselines(g: pd.DataFrame, specs: tuple) -> dict:
    """Each metric's test baseline over the design's trials (the dashed line of the waterfall)."""
    out = {}
    for spec in specs:
        values = g[spec.baseline].to_numpy(float) if spec.baseline and spec.baseline in g else np.array([])
        out[spec.slug] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return out


def _why_empty(arm: str, rows: pd.DataFrame) -> str:
    """'cell X has no finished seed (2 failed, 1 unfinished)': why a cell has nothing to average."""
    if rows.empty:
        return f"cell {arm} has no trial"
    finished = rows.finished.astype(bool)
    errors = rows.get("error", pd.Series("", index=rows.index)).fillna("").astype(bool)
    failed = int((~finished & errors).sum())
    counts = {"failed": failed, "unfinished": int((~finished).sum()) - failed,
              "without a usable error": int(finished.sum())}
    return f"cell {arm} has no finished seed (" + ", ".join(f"{n} {what}" for what, n in counts.items() if n) + ")"


# -- ANOVA --------------------------------------------------------------------------------------------
def factorial_anova(logs: np.ndarray, design: Design) -> tuple[pd.DataFrame | None, str]:
    """Type-2 ANOVA (statsmodels OLS, `y ~ (C(a) + C(b) + …)**2`: main effects and two-way interactions)
    of the log errors; components identical by construction are left out (their cells are the same
    trials: only those at the reference's level enter). (table of effect, df, F, p; a note)."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    keep = [i for i in range(design.k) if i not in design.noop]
    if not keep:
        return None, "every component is identical by construction: nothing to test"
    rows = []
    for mask in range(2 ** design.k):
        if any((mask >> i & 1) != (design.reference_mask >> i & 1) for i in design.noop):
            continue
        for y in logs[mask]:
            rows.append({"y": y, **{f"c{i}": "on" if mask >> i & 1 else "off" for i in keep}})
    terms = [f"C(c{i})" for i in keep]  # column names patsy can read (a factor key may be size.cutoff)
    formula = "y ~ " + (f"({' + '.join(terms)})**2" if len(terms) > 1 else terms[0])
    frame = pd.DataFrame(rows)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fit = smf.ols(formula, frame).fit()
        if fit.df_resid <= 0:
            return None, f"no residual degrees of freedom with {logs.shape[1]} seed(s): no test"
        table = anova_lm(fit, typ=2)
    labels = {f"C(c{i})": c.label for i, c in enumerate(design.components)}
    out = pd.DataFrame({"effect": [" × ".join(labels.get(t, t) for t in name.split(":")) for name in table.index],
                        "df": table["df"].to_numpy(float), "F": table["F"].to_numpy(float),
                        "p": table["PR(>F)"].to_numpy(float)})
    residual = out[out.effect == "Residual"]
    resid_df = int(residual.df.iloc[0]) if not residual.empty else int(fit.df_resid)
    note = f"residual df {resid_df}"
    if design.noop:
        note += "; " + ", ".join(design.components[i].label for i in design.noop) + \
                " left out (identical by construction)"
    return out[out.effect != "Residual"].reset_index(drop=True), note


# -- output -------------------------------------------------------------------------------------------
def _fmt(x, sig: int = 3) -> str:
    return fmt(x, sig)


def _factor(phi: float, lo: float, hi: float) -> str:
    ci = f" [{_fmt(math.exp(lo))}, {_fmt(math.exp(hi))}]" if math.isfinite(lo) else ""
    return f"×{_fmt(math.exp(phi))}{ci}"


def _arm_name(a: Analysis, arm: str) -> str:
    return f"{arm} (reference)" if arm == a.design.reference else arm


def intro() -> str:
    """What the section's numbers are, and the rules for diverged and missing seeds."""
    return (
        "## Contributions\n\n"
        "Where a data set × model holds a full 2^k factorial design over the method's components (every other "
        "factor at the reference arm's level): how much of the change from the all-off cell to the all-on cell "
        "each component accounts for. A cell's value is the mean over seeds of log(test error); a component's "
        "share is its exact Shapley value (its effect averaged over every order of switching the components "
        "on; the shares add up to the total exactly, an interaction is split equally between its components), "
        "shown as a factor on the geometric-mean error (×0.5 halves it), with a "
        f"{LEVEL * 100:.0f} % bootstrap interval ({N_BOOT:,} resamples of the seed ids, the same ids in every cell so "
        f"seeds stay paired; RNG seed {BOOT_SEED}). **Diverged seeds** enter at the blow-up cap, "
        f"log({BLOWUP_FACTOR:,.0f} × the error of a model that outputs zero), where their error is not finite "
        "or above it (as measured otherwise); failed or unfinished trials are left out, and only seeds with a "
        "value in every cell count. **ANOVA**: OLS on the same log errors with main effects and two-way "
        "interactions, type-2 sums of squares (statsmodels), p unadjusted.\n")


def to_markdown(analyses: list[Analysis], units: dict, every_level: str = "") -> str:
    """The report's Contributions section (empty when no data set × model holds a design, and there is no
    `every_level` part: orchestrator/grid_anova.py's markdown)."""
    if not analyses and not every_level:
        return ""
    parts = [intro()]
    for a in analyses:
        parts.append(_markdown_one(a, units.get(a.data)))
    if any(a.computable for a in analyses):
        parts.append("![contributions per component](contributions.png)\n")
    if every_level:
        parts.append(every_level)
    return "\n".join(parts)


def _design_words(a: Analysis) -> str:
    d = a.design
    comps = ", ".join(f"{c.label} ({off} → {on})" if c.on is REFERENCE else c.label
                      for c, (on, off) in zip(d.components, d.levels))
    held = ", ".join(f"{label} {_level_word(v)}" for label, v in d.held.items())
    return f"2^{d.k} = {2 ** d.k} cells over {comps}" + (f"; held at the reference's level: {held}" if held else "")


def _level_word(value) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _markdown_one(a: Analysis, units) -> str:
    d = a.design
    lines = [f"### {a.data} · {a.model}", "", _design_words(a) + "."]
    if not a.computable:
        lines += ["", f"Contributions {a.reason}.", ""]
        return "\n".join(lines)
    n = len(a.seeds)
    said = [f"{n} seed(s) in every cell ({', '.join(map(str, a.seeds))})"]
    if a.dropped:
        said.append(f"seed(s) {', '.join(map(str, a.dropped))} left out (missing in some cell)")
    capped = {(arm, s) for spec in a.specs for arm, s in a.capped[spec.slug]}
    if capped:
        detail = "; ".join(f"{spec.name}: " + ", ".join(f"{arm} seed {s}" for arm, s in a.capped[spec.slug])
                           for spec in a.specs if a.capped[spec.slug])
        said.append(f"{len(capped)} of {n * 2 ** d.k} cell-seeds entered at the cap ({detail})")
    else:
        said.append("none entered at the cap")
    if n < 2:
        said.append("one seed: no interval")
    elif n < ROUGH_BELOW:
        said.append(f"with {n} seeds the bootstrap has few distinct resamples: read the intervals as rough")
    lines += ["", "; ".join(said) + ".", ""]
    header = [f"{s.name}{' ' + s.stat if s.stat else ''}" + (f" [{s.unit_for(units)}]" if s.unit_for(units) else "")
              for s in a.specs]
    lines += ["| | " + " | ".join(header) + " |", "|---|" + "---|" * len(a.specs)]
    lines.append(f"| *all off: {_arm_name(a, d.all_off)}* | " + " | ".join(
        _fmt(math.exp(a.shares[s.slug]["v"][0])) for s in a.specs) + " |")
    for i, (c, (on, off)) in enumerate(zip(d.components, d.levels)):
        name = c.change(on, off) + (" (≡: identical by construction, run once)" if i in d.noop else "")
        lines.append(f"| {name} | " + " | ".join(
            _factor(a.shares[s.slug]["phi"][i], a.shares[s.slug]["lo"][i], a.shares[s.slug]["hi"][i])
            for s in a.specs) + " |")
    lines.append(f"| *all on: {_arm_name(a, d.all_on)}* | " + " | ".join(
        _fmt(math.exp(a.shares[s.slug]["v"][-1])) for s in a.specs) + " |")
    lines.append("| total (all on / all off) | " + " | ".join(
        f"×{_fmt(math.exp(a.shares[s.slug]['v'][-1] - a.shares[s.slug]['v'][0]))}" for s in a.specs) + " |")
    lines.append("")
    for s in a.specs:
        lines += anova_lines(s, a.anova[s.slug], a.anova_note[s.slug])
    return "\n".join(lines)


def anova_lines(spec, table: pd.DataFrame | None, note: str) -> list[str]:
    """One metric's ANOVA in markdown: its heading with the note, then the table (none when not computable)."""
    lines = [f"ANOVA of log {spec.name}{' ' + spec.stat if spec.stat else ''} ({note}):", ""]
    if table is None:
        return lines
    lines += ["| effect | df | F | p |", "|---|---|---|---|"]
    lines += [f"| {r.effect} | {int(r.df)} | {_fmt(r.F)} | {fmt_p(r.p)} |" for r in table.itertuples()]
    return lines + [""]


def to_frame(analyses: list[Analysis]) -> pd.DataFrame:
    """The section's numbers, one row each: all_off / share / all_on / total / anova / not_computable."""
    rows = []
    for a in analyses:
        d = a.design
        base = {"data": a.data, "model": a.model, "k": d.k, "components": "+".join(c.label for c in d.components),
                "n_seeds": len(a.seeds), "seeds": " ".join(map(str, a.seeds))}
        if not a.computable:
            rows.append({**base, "row": "not_computable", "note": a.reason})
            continue
        for s in a.specs:
            sh = a.shares[s.slug]
            m = {**base, "metric": s.slug, "n_capped": len(a.capped[s.slug])}
            rows.append({**m, "row": "all_off", "arm": d.all_off, "value": math.exp(sh["v"][0])})
            for i, c in enumerate(d.components):
                on, off = d.levels[i]
                rows.append({**m, "row": "share", "component": c.label, "change": c.change(on, off),
                             "log_share": sh["phi"][i], "factor": math.exp(sh["phi"][i]),
                             "lo": math.exp(sh["lo"][i]), "hi": math.exp(sh["hi"][i]),
                             "identical_by_construction": i in d.noop})
            rows.append({**m, "row": "all_on", "arm": d.all_on, "value": math.exp(sh["v"][-1])})
            rows.append({**m, "row": "total", "log_share": sh["v"][-1] - sh["v"][0],
                         "factor": math.exp(sh["v"][-1] - sh["v"][0])})
            table = a.anova[s.slug]
            for r in ([] if table is None else table.itertuples()):
                rows.append({**m, "row": "anova", "component": r.effect, "df": r.df, "F": r.F, "p": r.p})
    return pd.DataFrame(rows)


def plot_waterfall(analyses: list[Analysis], path: Path, units: dict) -> bool:
    """contributions.png: per (data set, model) × metric a waterfall on a log axis from the all-off cell's
    geometric-mean error through each component's Shapley factor (whiskers: its interval) to the all-on
    cell, the baseline dashed as on bars.png. False (nothing written) when no analysis is computable."""
    shown = [a for a in analyses if a.computable]
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_metrics = max(len(a.specs) for a in shown)
    width = max(8.0, 1.6 * (max(a.design.k for a in shown) + 2) * n_metrics)
    fig, axes = plt.subplots(len(shown), n_metrics, figsize=(width, 4.5 * len(shown)), squeeze=False)
    for row, a in enumerate(shown):
        for ax, spec in zip(axes[row], a.specs):
            _waterfall(ax, a, spec, units.get(a.data))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _waterfall(ax, a: Analysis, spec, units) -> None:
    d, sh = a.design, a.shares[spec.slug]
    start, end = math.exp(sh["v"][0]), math.exp(sh["v"][-1])
    labels = [f"all off\n{d.all_off}"]
    ax.bar(0, start, 0.6, color="0.55")
    level, seen = start, [start, end]
    for i, c in enumerate(d.components):
        on, off = d.levels[i]
        after = level * math.exp(sh["phi"][i])
        color = "tab:green" if after < level else ("tab:red" if after > level else "0.7")
        ax.bar(i + 1, after - level, 0.6, bottom=level, color=color, hatch="//" if i in d.noop else None)
        if math.isfinite(sh["lo"][i]):
            lo, hi = level * math.exp(sh["lo"][i]), level * math.exp(sh["hi"][i])
            ax.errorbar(i + 1, after, yerr=[[max(after - lo, 0)], [max(hi - after, 0)]], color="k", capsize=4)
            seen += [lo, hi]
        ax.plot([i + 0.7, i + 1.3], [level, level], color="k", lw=0.8)
        ax.annotate(f"×{_fmt(math.exp(sh['phi'][i]), 2)}", (i + 1, max(level, after)), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
        labels.append(c.change(on, off).replace(" → ", "\n→ "))
        level = after
        seen.append(level)
    ax.bar(d.k + 1, end, 0.6, color="tab:blue")
    labels.append(f"all on\n{d.all_on}")
    baseline = a.baselines.get(spec.slug, math.nan)
    if math.isfinite(baseline):
        ax.axhline(baseline, color="k", ls="--", lw=1, label=f"baseline ({spec.baseline_row}) {_fmt(baseline)}")
        ax.legend(fontsize=8)
        seen.append(baseline)
    ax.set_yscale("log")  # bars start at the axis: its limits come from what is drawn, with room for the labels
    ax.set_ylim(min(seen) / 2, max(seen) * 3)
    ax.set_xticks(np.arange(d.k + 2), labels, fontsize=8)
    unit = spec.unit_for(units)
    ax.set_ylabel(f"test {spec.name}{' ' + spec.stat if spec.stat else ''} (geometric mean)"
                  + (f" [{unit}]" if unit else ""))
    ax.set_title(f"{a.data} · {a.model}: {spec.name}, Shapley factor per component "
                 f"({LEVEL * 100:.0f} % bootstrap CI, n = {len(a.seeds)})", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
