"""The report's loading: one row per trial (and per trial-epoch) from a Tune experiment folder, read through
orchestrator/trial_files.py (each trial's files made whole from its checkpoint's record), with the factors' levels
as columns (search_spaces/factors.py), identical-by-construction twins and the divergence/stall rules."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from dcnn.registry import family_of, family_of_config
from orchestrator.trial_files import read_trials
from search_spaces.factors import BUILTIN, factor, level_of


GROUP = ["data", "model"]
REPORT_DIR = "report"
# the per-group test metrics' prefix in a trial's result (dcnn.atomistic.task.group_key: test_group.NAME.metric)
GROUP_PREFIX = "test_group."
# The columns come from the task family of the study's models (dcnn/families.py: molecules report energy
# and force MAE, PINNs relative L2, nRMSE, final-time RMSE and PDE residual), never from a list here.


def task_family(trials: pd.DataFrame):
    """The study's task family (one family per study: Study.validate checks it)."""
    models = list(trials.model.dropna().unique()) if "model" in trials else []
    return family_of(str(models[0]) if models else "")


def metric_specs(trials: pd.DataFrame) -> tuple:
    """The metrics of the study's task family.  On data whose test frames carry groups (cells of many kinds
    and sizes: mlearn's bulk, surfaces and vacancies) the energy per atom is a main metric in place of the
    structure's energy, as the field reports it there (mlearn's, MACE's and NequIP's tables)."""
    specs = task_family(trials).metrics
    grouped = any(str(c).startswith(GROUP_PREFIX) for c in trials.columns)
    keys = [m.key for m in specs]
    if grouped and "energy_per_atom_loss" in keys and "energy_loss" in keys:
        swap = {"energy_loss": False, "energy_per_atom_loss": True}
        specs = tuple(dataclasses.replace(m, main=swap.get(m.key, m.main)) for m in specs)
        place = {m.key: k for k, m in enumerate(specs)}
        place["energy_per_atom_loss"] = place["energy_loss"] - 0.5  # in the energy's column, before the rest
        specs = tuple(sorted(specs, key=lambda m: (not m.main, place[m.key])))
    return specs


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
        own = [k for k in str(config.get("factors") or "").split(",") if k]
        levels = {f.key: _column_level(level_of(config, f)) for f in [*BUILTIN.values(), *map(factor, own)]}
        row = {"data": _label(config, labels), "model": config.get("model"), "arm": config.get("arm"), **levels,
               "seed": config.get("seed"), "factors": ",".join(own),
               "trial_id": trial_id, "mlflow_run_id": run_ids.get(trial_id, ""), "finished": finished,
               "epochs": last.get("epoch", 0), "diverged": int(last.get("diverged", 0)),
               "stalled": int(last.get("stalled", 0) or 0),
               "error": "" if finished else error,
               "identical_to": "", "trial_dir": files.folder, "damaged": damaged}
        for m in specs:  # test value, baseline, blow-up scale, last validation value
            for key in (m.test_key, m.baseline, m.blowup_scale, m.key):
                if key:
                    row[key] = last.get(key, math.nan)
        # per-group test metrics (data whose frames carry a group: mlearn's Surface, Vacancy, ...)
        row.update({k: v for k, v in last.items() if k.startswith(GROUP_PREFIX)})
        row.update({"node_id": last.get("node_id", ""), "hostname": last.get("hostname", ""),
                    "device": last.get("device", ""), "gpu_ids": last.get("gpu_ids", ""),
                    "started_at": last.get("started_at", math.nan), "finished_at": last.get("reported_at", math.nan)})
        trials.append(row)
        for r in results:
            curves.append({"trial_id": trial_id, "data": row["data"], "model": row["model"], "arm": row["arm"],
                           **levels, "seed": row["seed"],
                           "epoch": r.get("epoch"), **{m.key: r.get(m.key) for m in specs}})
    trials_df = pd.DataFrame(trials)
    curves_df = pd.DataFrame(curves)
    if not curves_df.empty:  # an epoch replayed after a worker was killed: its last record counts
        curves_df = curves_df.drop_duplicates(["trial_id", "epoch"], keep="last").reset_index(drop=True)
    if not trials_df.empty:  # a retried trial can leave two dirs: keep its latest
        trials_df = trials_df.sort_values("epochs").drop_duplicates(GROUP + ["arm", "seed"], keep="last")
        trials_df = trials_df.sort_values(GROUP + ["arm", "seed"]).reset_index(drop=True)
    return trials_df, curves_df, pd.DataFrame(silent, columns=UNREPORTED_COLUMNS)


def _column_level(level):
    """A level in the trials table: a size left at the preset's reads "preset's" (a value, not a gap)."""
    return "preset's" if level is None else level


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
            for f in BUILTIN.values():  # the twin differs only in the factors a model without BatchNorm ignores (DN)
                if f.same_without_batchnorm:
                    rows[f.key] = ~rows[f.key].astype(bool)
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
