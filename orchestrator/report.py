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
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from dcnn.families import BLOWUP_FACTOR, STALL_EPOCHS, STALL_TOLERANCE, family_of, family_of_config
from orchestrator import contributions
from orchestrator.contributions import FACTOR_DEFAULTS
from orchestrator.trial_files import read_trials

FACTOR_COLUMNS = ["model", "arm", "activation", "denorm", "rescale", "shift", "init"]
GROUP = ["data", "model"]
REPORT_DIR = "report"
# Divergence is the family's one rule (dcnn/families.py: non-finite, or a test error above BLOWUP_FACTOR ×
# that of a model that outputs zero), so the report, the trainer and MLflow's `diverged` agree.
ALPHA = 0.05  # family-wise level of the Holm-adjusted tests
# The columns come from the task family of the study's models (dcnn/families.py: molecules report energy
# and force MAE, PINNs relative L2, nRMSE, final-time RMSE and PDE residual), never from a list here.


def task_family(trials: pd.DataFrame):
    """The study's task family (one family per study: Study.validate checks it)."""
    models = list(trials.model.dropna().unique()) if "model" in trials else []
    return family_of(str(models[0]) if models else "")


def metric_specs(trials: pd.DataFrame) -> tuple:
    """The metrics of the study's task family."""
    return task_family(trials).metrics


def _label(config: dict, labels: dict) -> str:
    if config.get("data"):
        return str(config["data"])
    dataset = str(config.get("dataset", ""))
    return labels.get(dataset, Path(dataset).stem if dataset else "data")


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
    from dataclasses import replace

    from search_spaces import STUDY_DIR, load_study

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
    shifted = list(dict.fromkeys(replace(a, shift=True).key for a in base.arms))
    if meta.get("arms") == shifted and shifted != [a.key for a in base.arms]:
        flags.append("--shift")
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
    from orchestrator.tracking import default_tracking_uri

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


UNREPORTED_COLUMNS = ["data", "model", "arm", "seed", "epochs", "trial_id", "trial_dir", "damaged"]


def _checkpoint_column(trials: pd.DataFrame, experiment_dir: Path, location: str, checkpoints) -> list[str]:
    """Each trial's newest trainer checkpoint (what `dcnn.calculator.DCNNCalculator` loads), at the study's
    own location (a folder or an object-store URI); '' where it has none."""
    if checkpoints is None:
        checkpoints = [str(p.relative_to(experiment_dir)) for p in experiment_dir.glob("*/checkpoint_*/trainer.pt")]
    newest: dict[str, str] = {}
    for rel in sorted(checkpoints):  # checkpoint_000009 sorts before checkpoint_000010
        newest[rel.split("/", 1)[0]] = rel
    root = str(location).rstrip("/")
    return [f"{root}/{newest[d]}" if d in newest else "" for d in trials.trial_dir]


def collect(experiment_dir: Path, dataset_labels: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves): one row per trial with its last result; one row per trial-epoch."""
    return scan(experiment_dir, dataset_labels)[:2]


def _unreported_row(config: dict, trial_dir: Path, labels: dict, damaged: str) -> dict:
    """A trial that started (params.json) but never reported an epoch nor failed: killed before its first
    result. Its trial id (for its MLflow run) comes from Tune's folder name."""
    found = _TRIAL_ID.search(trial_dir.name)
    return {"data": _label(config, labels), "model": config.get("model"), "arm": config.get("arm"),
            "seed": config.get("seed"), "epochs": 0, "trial_id": found.group(1) if found else "",
            "trial_dir": trial_dir.name, "damaged": damaged}


def scan(experiment_dir: Path, dataset_labels: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(trials, curves, unreported): `collect`'s two tables, and the trials that started without reporting
    an epoch (no number of theirs exists: not in the trials table; the report lists them as unfinished)."""
    experiment_dir = Path(experiment_dir)
    labels = dataset_labels or {}
    run_ids = {}
    ids_file = experiment_dir / REPORT_DIR / "mlflow_runs.json"
    if ids_file.exists():
        run_ids = json.loads(ids_file.read_text())
    trials, curves, silent = [], [], []
    for files in read_trials(experiment_dir):  # each trial's files, made whole from its checkpoint's record
        config, results, damaged, folder = files.config, files.results, files.damaged, experiment_dir / files.folder
        if config is None:  # nothing tells which trial it was: named in the report, in no table
            silent.append({**dict.fromkeys(UNREPORTED_COLUMNS, ""), "trial_dir": files.folder, "damaged": damaged})
            continue
        if config.get("phase") == "tune":
            continue
        error = _trial_error(folder)
        if not results and not error:
            silent.append(_unreported_row(config, folder, labels, damaged))
            continue
        last = results[-1] if results else {}
        trial_id = last.get("trial_id", "")
        specs = family_of_config(config).metrics
        finished = bool(last.get("done")) or any(m.test_key in last for m in specs)
        row = {"data": _label(config, labels), **{k: _factor(config, k) for k in FACTOR_COLUMNS + ["seed"]},
               "trial_id": trial_id, "mlflow_run_id": run_ids.get(trial_id, ""), "finished": finished,
               "epochs": last.get("epoch", 0), "diverged": int(last.get("diverged", 0)),
               "stalled": int(last.get("stalled", 0) or 0),
               "error": "" if finished else error,
               "identical_to": "", "trial_dir": files.folder, "damaged": damaged}
        for m in specs:  # test value, baseline, blow-up scale, last validation value
            for key in (m.test_key, m.baseline, m.blowup_scale, m.key):
                if key:
                    row[key] = last.get(key, math.nan)
        row.update({"node_id": last.get("node_id", ""), "hostname": last.get("hostname", ""),
                    "device": last.get("device", ""), "gpu_ids": last.get("gpu_ids", ""),
                    "started_at": last.get("started_at", math.nan), "finished_at": last.get("reported_at", math.nan)})
        trials.append(row)
        for r in results:
            curves.append({"trial_id": trial_id, "data": row["data"], **{k: row[k] for k in FACTOR_COLUMNS + ["seed"]},
                           "epoch": r.get("epoch"), **{m.key: r.get(m.key) for m in specs}})
    trials_df = pd.DataFrame(trials)
    curves_df = pd.DataFrame(curves)
    if not curves_df.empty:  # an epoch replayed after a worker was killed: its last record counts
        curves_df = curves_df.drop_duplicates(["trial_id", "epoch"], keep="last").reset_index(drop=True)
    if not trials_df.empty:  # a retried trial can leave two dirs: keep its latest
        trials_df = trials_df.sort_values("epochs").drop_duplicates(GROUP + ["arm", "seed"], keep="last")
        trials_df = trials_df.sort_values(GROUP + ["arm", "seed"]).reset_index(drop=True)
    return trials_df, curves_df, pd.DataFrame(silent, columns=UNREPORTED_COLUMNS)


def _factor(config: dict, key: str):
    """A factor of the trial's config; one a study does not carry reads as its default level (a trial of
    a study made before ES or LSUV existed ran without them)."""
    value = config.get(key)
    return FACTOR_DEFAULTS.get(key) if value is None else value


# Tune names a trial's folder TRAINABLE_TRIALID_TAG, trial ids as 5 hex digits _ 5 digits ("3c9a1_00004")
_TRIAL_ID = re.compile(r"(?:^|_)([0-9a-f]{5}_\d{5})(?:_|$)")


def add_identical_arms(trials: pd.DataFrame, identical: dict) -> pd.DataFrame:
    """Rows for arms that were not run because they are the same computation as a twin (DN on a model
    without BatchNorm): the twin's trials, relabelled, with `identical_to` naming the twin."""
    extra = []
    for model, pairs in (identical or {}).items():
        for arm, twin in pairs.items():
            rows = trials[(trials.model == model) & (trials.arm == twin)].copy()
            if rows.empty:
                continue
            rows["arm"] = arm
            rows["denorm"] = ~rows["denorm"].astype(bool)  # the twin differs only in DN
            rows["identical_to"] = twin
            extra.append(rows)
    return pd.concat([trials, *extra], ignore_index=True) if extra else trials


def mark_divergence(trials: pd.DataFrame) -> pd.DataFrame:
    """`blew_up`: finished, finite, but above the family's blow-up scale; `diverged`: the trial said so, or
    it finished and the family's rule says so (TaskFamily.diverged: non-finite or blown up); `stalled`: it
    finished without diverging but never trained (TaskFamily.stalled, decided by the trainer); `ok`: finished,
    neither diverged nor stalled."""
    t = trials.copy()
    family = task_family(t)
    finished = t.finished.astype(bool)
    rows = t.to_dict("records")
    blown = np.array([family.blown_up(r) for r in rows], dtype=bool)
    ruled = np.array([family.diverged(r) for r in rows], dtype=bool)
    t["blew_up"] = (finished & blown).astype(int)
    t["diverged"] = ((t.diverged.astype(int) == 1) | (finished & ruled)).astype(int)
    stalled = t["stalled"].fillna(0).astype(int) == 1 if "stalled" in t else False
    t["stalled"] = (finished & stalled & (t.diverged == 0)).astype(int)
    t["ok"] = finished & (t.diverged == 0) & (t.stalled == 0)
    return t


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
        row = {"data": data, "model": model, "arm": arm, "activation": g.activation.iloc[0],
               "denorm": bool(g.denorm.iloc[0]), "rescale": bool(g.rescale.iloc[0]),
               "shift": bool(g["shift"].iloc[0]), "init": g["init"].iloc[0] if "init" in g else FACTOR_DEFAULTS["init"],
               "seeds": len(g), "n": len(ok),
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


def fmt(x, sig: int = 3) -> str:
    """3 significant figures in positional notation (356, 2.54, 0.0123, 7,140), never 1.7e+02."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    x = float(x)
    if x == 0:
        return "0"
    digits = sig - 1 - int(math.floor(math.log10(abs(x))))
    rounded = round(x, digits)
    if rounded != 0 and int(math.floor(math.log10(abs(rounded)))) > sig - 1 - digits:  # 9.9951 → 10.0
        digits -= 1
        rounded = round(x, digits)
    if digits <= 0:
        return f"{rounded:,.0f}"
    return f"{rounded:.{digits}f}"


def _ratio(r, short: str) -> str:
    ratio = r[f"{short}_ratio"]
    if not np.isfinite(ratio):
        return "–"
    lo, hi = r[f"{short}_ratio_lo"], r[f"{short}_ratio_hi"]
    ci = f" [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) else ""
    return f"×{fmt(ratio, 3)}{ci}"


def fmt_p(p: float) -> str:
    return "–" if not np.isfinite(p) else ("<0.001" if p < 1e-3 else fmt(p, 3))  # 0.0499, never "0.050"


def _p(r, short: str) -> str:
    p = r[f"{short}_p_holm"]
    if not np.isfinite(p):
        return "–"
    return f"**{fmt_p(p)}**\\*" if r[f"{short}_significant"] else fmt_p(p)


def _change(arm: dict, ref: dict) -> str:
    """What the arm changes relative to the reference, in words: 'IReLU → iSiLU; DN removed'."""
    words = []
    if arm["activation"] != ref["activation"]:
        words.append(f"{ref['activation']} → {arm['activation']}")
    for factor, short in (("denorm", "DN"), ("rescale", "LR"), ("shift", "ES")):
        if bool(arm[factor]) != bool(ref[factor]):
            words.append(f"{short} {'added' if arm[factor] else 'removed'}")
    init, ref_init = (r.get("init") or FACTOR_DEFAULTS["init"] for r in (arm, ref))
    if init != ref_init:
        words.append(f"init {ref_init} → {init}")
    if {"DN removed", "LR removed"} <= set(words):
        words = [w for w in words if w not in ("DN removed", "LR removed")] + ["DN and LR both removed"]
    return "; ".join(words) or "same factors"


def findings(summary: pd.DataFrame, reference_arm: str, units: dict, specs: tuple) -> str:
    """One plain sentence per (data set, model, question), only what the numbers support."""
    lines = ["## Findings", "",
             f"Each arm against the reference **{reference_arm}** on the same data set and model: ratio of "
             f"geometric means of the test error over paired seeds with its 95 % CI, Holm-adjusted p over "
             f"the arms of that data set, model and metric (significant: p < {ALPHA}).", ""]
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
        for r in g[~g.reference].itertuples(index=False):
            r = r._asdict()
            change = _change(r, ref)
            if r["identical_to"]:
                lines.append(f"- {change} ({r['arm']}): identical by construction — {model} has no BatchNorm, so "
                             f"it is the same computation as {r['identical_to']} (run once, reported twice).")
                continue
            parts = []
            for spec in specs:
                short, name = spec.short, spec.name
                n = r[f"{short}_n_pairs"]
                if not (isinstance(n, (int, float)) and np.isfinite(n)) or n < 2:
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


_STALL_WORDS = "stalled (the optimizer stopped moving: at the start, or where Adam handed over to L-BFGS)"
_STALL_BOUND = f"{STALL_TOLERANCE:.0e}".replace("e-0", "e-")  # 1e-6 (the tables use no exponent padding)


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


def _sentence(text: str) -> str:
    """The first character upper-cased, nothing else touched (str.capitalize() lowercases the rest: Å → å)."""
    return text[:1].upper() + text[1:]


def to_markdown(summary: pd.DataFrame, reference_arm: str, title: str, units: dict, specs: tuple) -> str:
    lines = [f"# {title}", "",
             _intro(specs) + " **vs ref**: ratio of geometric means to the "
             f"reference arm **{reference_arm}** over paired seeds, [95 % CI]; **p**: paired t-test on log "
             f"errors, Holm-adjusted within each data set × model × metric (**bold\\*** = p < {ALPHA}). "
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
        lines += ["| arm | n | diverged | " + " | ".join(f"{m.short} mean ± std | ×base | {m.short} vs ref | p({m.short})"
                                                     for m in specs) + " |",
                  "|---|---|---|" + "---|---|---|---|" * len(specs)]
        base = g.iloc[0]
        label = ", ".join(dict.fromkeys(m.baseline_row for m in specs if m.baseline))
        lines.append(f"| *baseline: {label}* | | |" + "".join(
            f" {fmt(base[f'{m.short}_baseline'])} | 1 | | |" if m.baseline else " | | | |" for m in specs))
        for _, r in g.iterrows():
            name = f"**{r.arm}** (ref)" if r.reference else r.arm
            if r.identical_to:
                name += f" ≡ {r.identical_to}"
            failed = f"{r.diverged}" + (f" · {r.stalled} stalled" if r.stalled else "")
            lines.append(f"| {name} | {r.n}/{r.seeds} | {failed} |" + "".join(
                f" {fmt(r[f'{m.short}_mean'])} ± {fmt(r[f'{m.short}_std'], 2)} | "
                f"{fmt(r[f'{m.short}_vs_baseline'], 2) if m.baseline else ''} | "
                f"{'' if r.reference else _ratio(r, m.short)} | {'' if r.reference else _p(r, m.short)} |"
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


def plot_bars(summary: pd.DataFrame, path: Path, units: dict, specs: tuple) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(summary.arm))
    models = list(dict.fromkeys(summary.model))
    datas = list(dict.fromkeys(summary.data))
    fig, axes = plt.subplots(len(datas), len(specs), figsize=(max(8, 1.3 * len(arms) * len(specs)), 4.5 * len(datas)),
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
    found = findings(summary, reference_arm, units, main)
    unfinished = unfinished_trials(trials, silent, meta)
    analyses = contributions.analyse(trials, reference_arm, main)
    paths = {"trials": out / "trials.csv", "curves": out / "curves.csv", "summary": out / "summary.csv",
             "baselines": out / "baselines.csv", "findings": out / "findings.md",
             "markdown": out / "report.md", "bars": out / "bars.png", "learning_curves": out / "curves.png"}
    trials.to_csv(paths["trials"], index=False)
    curves.to_csv(paths["curves"], index=False)
    summary.to_csv(paths["summary"], index=False)
    base.to_csv(paths["baselines"], index=False)
    paths["findings"].write_text(found + "\n")
    contrib = contributions.to_frame(analyses)
    if analyses:
        paths["contributions"] = out / "contributions.csv"
        contrib.to_csv(paths["contributions"], index=False)
        if contributions.plot_waterfall(analyses, out / "contributions.png", units):
            paths["contributions_plot"] = out / "contributions.png"
    md = (to_markdown(summary, reference_arm, title, units, main) + "\n" + secondary_table(summary, units, specs)
          + failed_section(trials)
          + damaged_or_unfinished_section(trials, silent, unfinished, meta, location) + found)
    section = contributions.to_markdown(analyses, units)
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
