"""The report's Findings: one plain sentence per (data set, model, arm) against the reference, from the
statistics alone (orchestrator/report_stats.py), each change said in its factor's words."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dcnn.families import STALL_TOLERANCE
from orchestrator.report_design import rci_words
from orchestrator.report_format import _ratio, fmt, fmt_p
from orchestrator.report_load import GROUP
from orchestrator.report_stats import ALPHA
from search_spaces.factors import level_of, study_factors
from search_spaces.seed_design import SeedDesign


def _change(arm: dict, ref: dict, factors: tuple) -> str:
    """What the arm changes relative to the reference, in words: 'IReLU → iSiLU; DN removed; force_weight
    30 → 10' (each factor's own words, search_spaces/factors.py)."""
    words = []
    for f in factors:
        level, ref_level = level_of(arm, f), level_of(ref, f)
        if f.said == "flag":
            level, ref_level = bool(level), bool(ref_level)
        if level != ref_level:
            words.append(f.change(ref_level, level))
    if {"DN removed", "LR removed"} <= set(words):
        words = [w for w in words if w not in ("DN removed", "LR removed")] + ["DN and LR both removed"]
    return "; ".join(words) or "same factors"


def findings(summary: pd.DataFrame, reference_arm: str, units: dict, specs: tuple,
             design: SeedDesign | None = None) -> str:
    """One plain sentence per (data set, model, question), only what the numbers support."""
    how = (f"decided by the sequential seed design (`seeds: auto`: lower, higher or equivalent within "
           f"±{design.margin:.0%}, family-wise error {design.alpha} over every look and comparison), with the "
           f"ratio and its repeated confidence interval at the deciding look" if design else
           f"Holm-adjusted p over the arms of that data set, model and metric (significant: p < {ALPHA})")
    lines = ["## Findings", "",
             f"Each arm against the reference **{reference_arm}** on the same data set and model: ratio of "
             f"geometric means of the test error over paired seeds with its 95 % CI, {how}.", ""]
    factors = study_factors(summary)
    for (data, model), g in summary.groupby(GROUP, sort=False):
        ref_rows = g[g.reference]
        lines.append(f"**{data} · {model}**")
        lines.append("")
        if not ref_rows.empty and ref_rows.iloc[0].n == 0:
            ref = ref_rows.iloc[0]
            lines.append(f"- Reference {reference_arm}: no seed finished without diverging or stalling "
                         f"({ref.diverged} diverged, {ref.stalled} {_STALL_WORDS}, {ref.errored} failed of "
                         f"{ref.seeds}): nothing to compare with.")
            lines.append("")
            continue
        if not ref_rows.empty:
            ref = ref_rows.iloc[0]
            said, unbeaten = [], []
            for m in specs:
                unit = m.unit_for(units.get(data))
                text = f"{m.name} {fmt(ref[f'{m.short}_mean'])}{' ' + unit if unit else ''}"
                if m.baseline:
                    ratio = ref[f"{m.short}_vs_baseline"]
                    text += f" (×{fmt(ratio, 2)} the {m.baseline_label} baseline {fmt(ref[f'{m.short}_baseline'])})"
                    if not ratio < 1:
                        unbeaten.append(m)
                said.append(text)
            lines.append(f"- Reference {reference_arm}: {', '.join(said)}, n = {ref.n}"
                         + (f", {ref.diverged} diverged" if ref.diverged else "")
                         + (f", {ref.stalled} {_STALL_WORDS}" if ref.stalled else "")
                         + ("." if not unbeaten else "".join(
                             f"; its {m.error_phrase} is not below the {m.baseline_label} baseline, so {m.name} "
                             f"comparisons on this model say little" for m in unbeaten) + "."))
        else:
            lines.append(f"- The reference arm did not run on {model}: nothing to compare.")
            lines.append("")
            continue
        for r in g[~g.reference].to_dict("records"):  # records: a size's column (size.cutoff) keeps its name
            change = _change(r, ref, factors)
            if r["identical_to"]:
                lines.append(f"- {change} ({r['arm']}): identical by construction — {model} has no BatchNorm, so "
                             f"it is the same computation as {r['identical_to']} (run once, reported twice).")
                continue
            parts = []
            for spec in specs:
                short, name = spec.short, spec.name
                n = r[f"{short}_n_pairs"]
                if design is not None:
                    parts.append(_decided(r, spec, design))
                elif not (isinstance(n, (int, float)) and np.isfinite(n)) or n < 2:
                    parts.append(f"{name}: not resolved (n = {0 if not np.isfinite(n) else int(n)} paired seeds)")
                elif r[f"{short}_ratio_lo"] == r[f"{short}_ratio_hi"] == 1.0:
                    parts.append(f"{name}: the same on every one of {int(n)} seeds")
                elif r[f"{short}_significant"]:
                    direction = "higher" if r[f"{short}_ratio"] > 1 else "lower"
                    parts.append(f"{spec.error_phrase} {direction}, {_ratio(r, short)} "
                                 f"(p_adj = {fmt_p(r[f'{short}_p_holm'])})")
                else:
                    parts.append(f"{name}: not resolved with n = {int(n)} ({_ratio(r, short)}, "
                                 f"p_adj = {fmt_p(r[f'{short}_p_holm'])})")
            div = (f"; {r['diverged']} of {r['seeds']} seeds diverged (reference: {ref.diverged} of {ref.seeds})"
                   if r["diverged"] or ref.diverged else "")
            if r["stalled"]:  # the setup's failure (optimizer, initialisation, budget), not the arm's effect
                div += (f"; {r['stalled']} of {r['seeds']} seeds {_STALL_WORDS}: a failure of the setup "
                        f"(optimizer, initialisation, budget), not read as an effect of this change, and left out "
                        f"of the comparison")
            lines.append(f"- {change} ({r['arm']}): {'; '.join(parts)}{div}.")
        lines.append("")
    return "\n".join(lines)


def _decided(r: dict, spec, design: SeedDesign) -> str:
    """A comparison's words under `seeds: auto`: how and at which n it was decided, or open at the maximum."""
    short, kind, n = spec.short, r[f"{spec.short}_decision"], r[f"{spec.short}_decided_n"]
    n = int(n) if isinstance(n, (int, float)) and np.isfinite(n) else 0
    interval = rci_words(r, short)
    if kind in ("lower", "higher"):
        return f"{spec.error_phrase} {kind}, {interval} (decided at n = {n} paired seeds)"
    if kind == "equivalent":
        return f"{spec.name}: equivalent within ±{design.margin:.0%}, {interval} (decided at n = {n})"
    return f"{spec.name}: still open at n = {n} ({interval}; the design's maximum is {design.max} seeds)"


_STALL_WORDS = "stalled (the optimizer stopped moving: at the start, or where Adam handed over to L-BFGS)"
_STALL_BOUND = f"{STALL_TOLERANCE:.0e}".replace("e-0", "e-")  # 1e-6 (the tables use no exponent padding)
