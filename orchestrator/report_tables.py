"""The report's markdown tables and sections: the main table per data set × model, the other metrics, the
failed, damaged and unfinished trials, and how to resume a stopped study."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from dcnn.families import BLOWUP_FACTOR, STALL_EPOCHS
from orchestrator.report_design import decision_words, design_intro
from orchestrator.report_findings import _STALL_BOUND
from orchestrator.report_format import _p, _ratio, _sentence, fmt
from orchestrator.report_load import GROUP, GROUP_PREFIX
from orchestrator.report_stats import ALPHA
from orchestrator.storage import default_tracking_uri
from search_spaces import STUDY_DIR, load_study
from search_spaces.factors import BUILTIN
from search_spaces.seed_design import SeedDesign


def failed_section(trials: pd.DataFrame) -> str:
    """Markdown list of the trials that failed (errored, not diverged), with their error."""
    if trials.empty or "error" not in trials:
        return ""
    failed = trials[trials.error.fillna("").astype(bool) & ~trials.identical_to.fillna("").astype(bool)]
    if failed.empty:
        return ""
    lines = ["## Failed trials", "", f"{len(failed)} trial(s) raised and are not in the tables above:", ""]
    for _, r in failed.iterrows():
        lines.append(f"- {r.data} · {r.model} · {r.arm} · seed {r.seed} (after epoch {r.epochs}): `{r.error}`")
    return "\n".join(lines) + "\n\n"


UNFINISHED_COLUMNS = ["data", "model", "arm", "seed", "epochs", "trial_id", "trial_dir", "state"]


def unfinished_trials(trials: pd.DataFrame, unreported_trials: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """The study's trials that neither finished (no `done`, no test metrics) nor failed: the driver stopped
    (killed, the machine went down) and the study was not resumed. Stopped ones ran some epochs; others
    started without reporting one; with the study's record (report/study.json) also those that never
    started, from its arms × models × data sets × seeds less the identical-by-construction twins."""
    stopped = trials[~trials.finished.astype(bool) & ~trials.error.fillna("").astype(bool)
                     & ~trials.identical_to.fillna("").astype(bool)]
    # a folder whose config is lost (params.json emptied, no checkpoint) is named under its damage, not here
    unreported_trials = unreported_trials[unreported_trials.model.fillna("").astype(str) != ""]
    parts = [stopped.assign(state=[f"stopped after epoch {int(e)}" for e in stopped.epochs]),
             unreported_trials.assign(state="started, no epoch reported")]
    labels = [d.get("label") for d in meta.get("dataset_info", {}).values()]
    if labels and meta.get("arms") and meta.get("models") and meta.get("seeds"):
        seen = {(r.data, r.model, r.arm, r.seed) for r in pd.concat(
            [trials[~trials.identical_to.fillna("").astype(bool)], unreported_trials]).itertuples()}
        twins = meta.get("identical", {})
        never = [{"data": d, "model": m, "arm": a, "seed": s, "epochs": 0, "trial_id": "", "trial_dir": "",
                  "state": "never started"}
                 for d in labels for m in meta["models"] for a in meta["arms"] for s in meta["seeds"]
                 if a not in twins.get(m, {}) and (d, m, a, s) not in seen]
        parts.append(pd.DataFrame(never))
    parts = [x.reindex(columns=UNFINISHED_COLUMNS) for x in parts if not x.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=UNFINISHED_COLUMNS)


# how a resumed study gets a setting the study file does not give it: its own flag, else --set KEY=VALUE
_SETTING_FLAGS = {"epochs": "--epochs", "preset": "--preset", "compile": "--compile"}


def _flag_value(value) -> str:
    """A value as `--set` reads it back (YAML): true/false, and floats with a mantissa dot (1.0e-06; PyYAML
    reads 1e-06 as a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e") if "e" in text and "." not in text else text
    return str(value)


def _study_flags(meta: dict) -> list[str]:
    """The flags that make `ablate --resume` the same study as the record (check_resume compares them):
    the study, and where the record differs from the study file, models, seeds, data sets, splits, ES,
    settings and tuning."""

    name, source = meta.get("study"), meta.get("study_source") or meta.get("study")
    builtin = bool(source) and Path(source).resolve().parent == STUDY_DIR.resolve()
    flags = [] if builtin and name == "seed-plan" else ["--study", name if builtin else str(source)]
    try:
        base = load_study(str(source))
    except (ValueError, OSError):
        return flags  # the study file moved: check_resume will name what differs
    for key, flag, default in (("models", "--models", base.models), ("seeds", "--seeds", base.seeds),
                               ("datasets", "--datasets", base.datasets)):
        if key in meta and list(meta[key]) != list(default):
            flags += [flag, ",".join(map(str, meta[key]))]
    if meta.get("split_seeds", base.split_seeds) != base.split_seeds:
        flags += ["--split-seeds", meta["split_seeds"]]
    for f in BUILTIN.values():  # a factor's shortcut flag (--shift) when the record's arms are the study's with it
        if f.shortcut:
            switched = list(dict.fromkeys(a.with_levels({f.key: f.component[0]}).key for a in base.arms))
            if meta.get("arms") == switched and switched != [a.key for a in base.arms]:
                flags.append(f.shortcut)
    defaults = json.loads(json.dumps(base.resolved_settings(), default=str))
    for key, value in sorted((meta.get("fixed") or {}).items()):
        if value != defaults.get(key) and value is not None:
            flags += ([_SETTING_FLAGS[key], _flag_value(value)] if key in _SETTING_FLAGS
                      else ["--set", f"{key}={_flag_value(value)}"])
    if meta.get("tune_hparams"):
        flags += ["--tune-hparams", str(meta["tune_hparams"])]
        if meta.get("tuning_space") not in (None, "default"):
            flags += ["--tuning-space", meta["tuning_space"]]
    if meta.get("scheduler") not in (None, "fifo"):
        flags += ["--scheduler", meta["scheduler"]]
    return flags


def resume_command(meta: dict, location) -> str:
    """How to continue the study at `location` (its folder, or the object-store URI it lives at), in words
    with the command(s), from what its record (report/study.json, written when it started) knows."""

    text = str(location).rstrip("/")
    if "://" in text:  # an object store: the study is STORAGE/EXPERIMENT there
        storage, folder_name = text.rsplit("/", 1)
    else:
        folder = Path(text).resolve()
        storage, folder_name = folder.parent, folder.name
    experiment = meta.get("experiment") or folder_name
    where = ["--storage", str(storage), "--experiment", experiment]
    if not meta:
        return (f"Resume with the flags the study was started with plus `--resume {shlex.join(where)}` "
                f"(its record report/study.json is missing, so they are not known here).")
    flags = _study_flags(meta)
    uri = meta.get("tracking_uri")
    if uri and ("://" in str(storage) or uri != default_tracking_uri(storage)):
        flags += ["--tracking-uri", uri]
    text = f"Resume with `{shlex.join(['dcnn-ablate', 'ablate', '--resume', *flags, *where])}`"
    repo = Path(__file__).resolve().parent.parent
    if not flags and experiment == "seed-plan" and str(storage) == str(repo / "results"):  # the Makefile's default study
        text += f', or from {repo}: `make ablate ARGS="--resume"`'
    return text + ": finished trials are not re-run, stopped ones continue from their last epoch checkpoint."


def damaged_or_unfinished_section(trials: pd.DataFrame, unreported_trials: pd.DataFrame,
                                  unfinished: pd.DataFrame, meta: dict, location) -> str:
    """Markdown: the result files cut off mid-write (and what was kept), the trials that did not finish
    (data · model · arm · seed, last epoch) and how to resume; '' when there are none."""
    notes = pd.concat([x.reindex(columns=["trial_dir", "damaged"]) for x in (trials, unreported_trials)])
    damaged = dict(r for r in zip(notes.trial_dir, notes.damaged.fillna("")) if r[1])  # twins share their dir
    if not damaged and unfinished.empty:
        return ""
    lines = ["## Damaged or unfinished trials", ""]
    if damaged:
        lines += [f"- `{folder}`: {note}." for folder, note in damaged.items()] + [""]
    if not unfinished.empty:
        lines += [f"{len(unfinished)} trial(s) neither finished nor failed: the study was stopped and not resumed. "
                  "They are in no mean; their MLflow runs stay RUNNING until the study is resumed, or "
                  f"`{shlex.join(['dcnn-ablate', 'report', str(location), '--close-unfinished'])}` marks them "
                  "KILLED.", ""]
        lines += [f"- {r.data} · {r.model} · {r.arm} · seed {r.seed}: {r.state}" for r in unfinished.itertuples()]
        lines += ["", resume_command(meta, location)]
    return "\n".join(lines) + "\n\n"


def _intro(specs: tuple) -> str:
    """What the numbers are and which baselines they are set against, from the family's metrics."""
    names = {m.short: m for m in specs}
    if set(names) == {"E", "F"}:  # molecules
        return ("Test MAE in the data set's units, mean ± std over the seeds that finished without diverging "
                "(n). **×base**: the mean over the baseline — predicting the training-set mean energy (E) or "
                "zero force (F); below 1 the model beats it.")
    what = "; ".join(f"**{m.short}**: {m.name}" + (f" {m.stat}" if m.stat else "") for m in specs)
    based = ", ".join(m.short for m in specs if m.baseline)
    return (f"Test metrics ({what}), mean ± std over the seeds that finished without diverging (n). "
            f"**×base**: the mean over the baseline of {based}, the {specs[0].baseline_label} model; below 1 "
            f"the model beats it.")


def _peer_rows(peers: list, data: str, g: pd.DataFrame, specs: tuple) -> list[str]:
    """A row per published result on `data` (a study's `peers`, one row per name and source): each value in its
    metric's column and, under "vs ref", the reference arm's mean over it (×2.0: ours is twice theirs)."""
    rows = []
    ref = g[g.reference]
    by_name: dict = {}
    for peer in (p for p in peers if p.get("data") == data):
        by_name.setdefault((peer["name"], peer["source"]), {})[peer["metric"]] = peer["value"]
    for (name, source), values in by_name.items():
        cells = []
        for m in specs:
            if m.key not in values:
                cells.append(" | | | |")
                continue
            ours = float(ref[f"{m.short}_mean"].iloc[0]) if len(ref) else float("nan")
            cells.append(f" {fmt(values[m.key])} | | ref ×{fmt(ours / values[m.key], 2)} | |")
        if any(c != " | | | |" for c in cells):
            rows.append(f"| *published: {name}* ({source}) | | |" + "".join(cells))
    return rows


def _peer_header(peer: dict, spec, units) -> str:
    return f"{spec.short} ÷ {peer['name']} ({fmt(peer['value'])} {spec.unit_for(units)})"


def peers_section(summary: pd.DataFrame, peers: list, units: dict, specs: tuple) -> str:
    """Published results beside every arm: each arm's mean over the peer's value, per data set × model."""
    if not peers:
        return ""
    by_key = {m.key: m for m in specs}
    lines = ["## Beside published results", "",
             "Each arm's mean test error over the published value of the same metric on the same split (×1: "
             "as good; below 1: better). The published values are the study's `peers` (their source given).", ""]
    for (data, model), g in summary.groupby(GROUP, sort=False):
        mine = [p for p in peers if p.get("data") == data and p.get("metric") in by_key]
        if not mine:
            continue
        lines += [f"### {data} · {model}", "",
                  "| arm | " + " | ".join(_peer_header(p, by_key[p["metric"]], units.get(data)) for p in mine) + " |",
                  "|---|" + "---|" * len(mine)]
        for _, r in g.iterrows():
            name = f"**{r.arm}** (ref)" if r.reference else r.arm
            ratios = [r[by_key[p["metric"]].short + "_mean"] / p["value"] for p in mine]
            lines.append(f"| {name} | " + " | ".join(f"×{fmt(x, 2)}" for x in ratios) + " |")
        lines.append("")
    sources = sorted({p["source"] for p in peers})
    return "\n".join(lines + [f"Sources: {'; '.join(sources)}.", ""]) + "\n"


def groups_section(trials: pd.DataFrame, reference_arm: str, units: dict, specs: tuple) -> str:
    """The reference arm's test errors per group of frames (mlearn's AIMD, Elastic, Surface, Vacancy): mean ±
    std over its seeds that finished without diverging, per data set × model, with each group's frame count."""
    cols = [c for c in trials.columns if str(c).startswith(GROUP_PREFIX)]
    if not cols:
        return ""
    shown = [m for m in specs if m.main and any(c.endswith("." + m.key) for c in cols)]
    lines = ["## Per group of test frames (reference arm)", "",
             f"The reference arm **{reference_arm}**'s test errors on each group of the test frames (the data set's "
             "own labels: `config_type` / mlearn's `group`), mean ± std over its seeds that finished without "
             "diverging; where a model fails, it shows here first.", ""]
    for (data, model), g in trials.groupby(GROUP, sort=False):
        ref = g[(g.arm == reference_arm) & g.finished.astype(bool) & (g.diverged == 0)]
        groups = list(dict.fromkeys(c[len(GROUP_PREFIX):].rsplit(".", 1)[0] for c in cols
                                    if ref[c].notna().any()))
        if ref.empty or not groups:
            continue
        unit_words = [f"{m.name} in {m.unit_for(units.get(data))}" for m in shown]
        lines += [f"### {data} · {model}", "", _sentence("; ".join(unit_words)) + f"; n = {len(ref)} seeds.", "",
                  "| group | frames | " + " | ".join(f"{m.short} mean ± std" for m in shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for name in groups:
            frames = ref.get(f"{GROUP_PREFIX}{name}.frames")
            n = int(frames.dropna().iloc[0]) if frames is not None and frames.notna().any() else ""
            values = [ref.get(f"{GROUP_PREFIX}{name}.{m.key}") for m in shown]
            lines.append(f"| {name} | {n} | " + " | ".join(
                f"{fmt(v.mean())} ± {fmt(v.std(ddof=1), 2) if len(v.dropna()) > 1 else '–'}" if v is not None else ""
                for v in values) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def test_split_words(info: dict, settings: dict) -> str:
    """Where a data set's test frames came from, in a sentence (the study's split settings and the data set's
    own test set, as the study recorded them)."""
    split = str(settings.get("split") or "random")
    if split.startswith("ood:"):
        return f"Test frames: every frame holding {split[4:]} (out of distribution); training and validation from the rest."
    if settings.get("test_dataset"):
        return f"Test frames: the test file {Path(str(settings['test_dataset'])).name}, all of them; validation drawn from the training file."
    if info.get("official_test_frames"):
        return (f"Test frames: the data set's official test split, all {info['official_test_frames']} of them; "
                f"validation drawn from its training frames.")
    if not info.get("frames"):
        return ""
    return "Test frames: drawn at random from the data set (the split seed), apart from training and validation."


def to_markdown(summary: pd.DataFrame, reference_arm: str, title: str, units: dict, specs: tuple,
                peers: list = (), notes: dict | None = None, design: SeedDesign | None = None) -> str:
    tests = (design_intro(design) + " " if design else
             f"**p**: paired t-test on log errors, Holm-adjusted within each data set × model × metric "
             f"(**bold\\*** = p < {ALPHA}). ")
    lines = [f"# {title}", "",
             _intro(specs) + " **vs ref**: ratio of geometric means to the "
             f"reference arm **{reference_arm}** over paired seeds, [95 % CI]; " + tests +
             f"Diverged = non-finite, or an error above {BLOWUP_FACTOR:,.0f}× that of a model that outputs "
             "zero" + (" (mean |E|, mean |F|)" if {m.short for m in specs} == {"E", "F"} else "")
             + f": counted, never averaged. Stalled: the training loss stopped moving within the first "
             f"{STALL_EPOCHS} epochs of an optimizer's phase (relative change < {_STALL_BOUND} from one epoch to "
             "the next): the optimizer stopped, so the seed was not trained by it; counted (after the divergences), "
             "never averaged, and not read as the arm's effect. "
             "≡: identical by construction (run once).", ""]
    for (data, model), g in summary.groupby(GROUP, sort=False):
        unit_words = [f"{m.name} in {m.unit_for(units.get(data))}" for m in specs if m.unit_for(units.get(data))]
        lines += [f"## {data} · {model}", ""] + ([f"{_sentence('; '.join(unit_words))}.", ""] if unit_words else [])
        if (notes or {}).get(data):
            lines += [notes[data], ""]
        test = "decision" if design else "p"
        lines += ["| arm | n | diverged | " + " | ".join(f"{m.short} mean ± std | ×base | {m.short} vs ref | {test}({m.short})"
                                                     for m in specs) + " |",
                  "|---|---|---|" + "---|---|---|---|" * len(specs)]
        base = g.iloc[0]
        label = ", ".join(dict.fromkeys(m.baseline_row for m in specs if m.baseline))
        lines.append(f"| *baseline: {label}* | | |" + "".join(
            f" {fmt(base[f'{m.short}_baseline'])} | 1 | | |" if m.baseline else " | | | |" for m in specs))
        lines += _peer_rows(list(peers), data, g, specs)
        for _, r in g.iterrows():
            name = f"**{r.arm}** (ref)" if r.reference else r.arm
            if r.identical_to:
                name += f" ≡ {r.identical_to}"
            failed = f"{r.diverged}" + (f" · {r.stalled} stalled" if r.stalled else "")
            lines.append(f"| {name} | {r.n}/{r.seeds} | {failed} |" + "".join(
                f" {fmt(r[f'{m.short}_mean'])} ± {fmt(r[f'{m.short}_std'], 2)} | "
                f"{fmt(r[f'{m.short}_vs_baseline'], 2) if m.baseline else ''} | "
                f"{'' if r.reference else _ratio(r, m.short)} | "
                f"{'' if r.reference else (decision_words(r, m.short, design) if design else _p(r, m.short))} |"
                for m in specs))
        lines.append("")
    return "\n".join(lines)


def secondary_table(summary: pd.DataFrame, units: dict, specs: tuple) -> str:
    """The family's other metrics (`MetricSpec.main` False: a PINN's final-time RMSE and PDE residual) in a
    second, smaller table per data set × model: mean ± std and the ratio to the reference; every column of
    every metric is in summary.csv."""
    others = [m for m in specs if not m.main]
    if not others:
        return ""
    lines = ["## Other metrics", "",
             "Mean ± std over the seeds that finished without diverging; vs ref as in the tables above "
             "(all statistics of every metric are in summary.csv).", ""]
    if not any(summary[f"{m.short}_mean"].notna().any() for m in others if f"{m.short}_mean" in summary):
        return ""
    for (data, model), g0 in summary.groupby(GROUP, sort=False):
        # a metric this data set does not define (EFwT on kcal/mol data) is left out, not shown as "–"
        shown = [m for m in others if f"{m.short}_mean" in g0 and g0[f"{m.short}_mean"].notna().any()]
        if not shown:
            continue
        g = g0
        unit_words = [f"{m.name} in {m.unit_for(units.get(data))}" for m in shown if m.unit_for(units.get(data))]
        lines += [f"### {data} · {model}", ""] + ([f"{_sentence('; '.join(unit_words))}.", ""] if unit_words else [])
        # a metric with a baseline (energy per atom: the mean energy per atom × atoms) gets its row and ×base
        based = lambda m: bool(m.baseline) and np.isfinite(g[f"{m.short}_baseline"].astype(float)).any()  # noqa: E731
        lines += ["| arm | " + " | ".join(f"{m.short} mean ± std | " + ("×base | " if based(m) else "")
                                          + f"{m.short} vs ref" for m in shown) + " |",
                  "|---|" + "".join("---|---|---|" if based(m) else "---|---|" for m in shown)]
        if any(based(m) for m in shown):
            label = ", ".join(dict.fromkeys(m.baseline_row for m in shown if based(m)))
            lines.append(f"| *baseline: {label}* |" + "".join(
                (f" {fmt(float(g[f'{m.short}_baseline'].mean()))} | 1 | |" if based(m) else " | |") for m in shown))
        for _, r in g.iterrows():
            name = f"**{r.arm}** (ref)" if r.reference else r.arm
            lines.append(f"| {name} |" + "".join(
                f" {fmt(r[f'{m.short}_mean'])} ± {fmt(r[f'{m.short}_std'], 2)} | "
                + (f"{fmt(r[f'{m.short}_vs_baseline'], 2)} | " if based(m) else "")
                + f"{'' if r.reference else _ratio(r, m.short)} |" for m in shown))
        lines.append("")
    return "\n".join(lines) + "\n"
