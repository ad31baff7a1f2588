"""Checks at the edge, before Ray or MD starts: every refusal names the flag, file, field or value and
what would be accepted, and nothing is created or changed when one fails (issue 8).

`run_ablation` calls `check_storage()` before it reads anything from --storage, and `preflight()` after the
options and the study validated and before `ray.init`;
`write_plan()` records the study in `report/study.json` when it starts (not when it ends), and
`--resume` compares the new command with that record (`check_resume`).
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
from pathlib import Path

from dcnn.config import TrainConfig
from dcnn.models import BUILTIN_SPECS, MODEL_NAMES
from dcnn.plugin_check import check_plugin
from dcnn.registry import resolve_config
from orchestrator.report import REPORT_DIR
from orchestrator.storage import Storage
from orchestrator.trial_files import read_trials
from search_spaces import FACTORS
from search_spaces.study import is_size

PLAN_FILE = "study.json"
# what a resumed study must share with the one it continues (resources and addresses may change)
PLAN_KEYS = ("study", "study_source", "arms", "reference", "models", "seeds", "seed_design", "datasets", "split_seeds",
             "fixed", "tune_hparams",
             "tuning_space", "scheduler", "tracking_uri", "experiment")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}$")


def check_name(flag: str, name: str) -> str:
    """Experiment names are names, not paths: one folder under --storage and one MLflow experiment."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..") or ".." in name:
        raise ValueError(f"{flag} {name!r}: expected a name (letters, digits and . _ - + = @, starting with "
                         f"a letter or digit, no '/' or '..'), not a path; the study folder is always "
                         f"STORAGE/NAME")
    return name


def check_finite(flag: str, value, minimum=None, strict=True):
    if value is None:
        return value
    if not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{flag} must be {'greater than' if strict else 'at least'} {minimum:g}, got {value!r}")
    return value


def check_set(values: dict, flags: dict | None = None) -> None:
    """--set KEY=VALUE: a TrainConfig key with a valid value; the study's axes and the data set have
    their own flags (a --set that would be ignored or overridden is refused, never dropped)."""
    from dataclasses import fields


    own_flag = {"dataset": "--datasets ethanol,FILE", "seed": "--seeds 0,1,2", "model": "--models schnet,cgcnn",
                "split_seed": "--split-seeds fixed|vary"}
    known = {f.name for f in fields(TrainConfig)}
    for key, value in values.items():
        if not key:
            raise ValueError(f"--set {key}={value!r}: expected KEY=VALUE with a TrainConfig key")
        if key in own_flag:
            raise ValueError(f"--set {key}={value!r}: {key} has its own flag, use {own_flag[key]}")
        if key in FACTORS:
            raise ValueError(f"--set {key}={value!r}: {key} is a factor of the study (its arms); write a "
                             f"study YAML file with the levels you want and pass it with --study")
        if is_size(key):  # a model size (a plug-in's own too): checked on each of its models by the study
            continue
        if key not in known:
            raise ValueError(f"--set {key}={value!r}: unknown key {key!r}; TrainConfig keys are: "
                             f"{', '.join(sorted(known - set(own_flag)))}")
        if value is None:
            raise ValueError(f"--set {key}=: no value given (expected --set {key}=VALUE)")
        flag_value = (flags or {}).get(key)
        if flag_value is not None and flag_value != value:
            raise ValueError(f"--set {key}={value!r} contradicts --{key} {flag_value}: give one of them")
        if key == "preset":  # plug-ins name their own presets: the study checks it on each of its models
            continue
        errors = []
        for model in MODEL_NAMES:  # a size key applies to some models only
            try:
                resolve_config({"model": model, key: value})
                break
            except ValueError as e:
                errors.append(str(e))
        else:
            raise ValueError(f"--set {key}={value!r}: {errors[0]}")


def parse_address(address: str) -> tuple[str, int]:
    text = address
    for prefix in ("ray://", "http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379), 'local' for a "
                         f"fresh local Ray, or 'auto'")
    return host.strip("[]"), int(port)


def check_address(address: str | None, timeout: float = 3.0) -> None:
    """A Ray address with nothing listening fails within seconds instead of ray.init waiting forever."""
    if not address or address in ("local", "auto"):
        return
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise ValueError(f"--address {address}: nothing answers at {host}:{port} ({e.strerror or e}); start "
                         f"the Ray head there (`ray start --head --port {port}`), fix the address, or leave "
                         f"it out for a local Ray") from None


def check_storage(storage) -> None:
    """--storage must be (or be creatable as) a writable folder, or an object-store prefix this machine
    may write to; checked without leaving anything behind (orchestrator/storage.py)."""
    Storage.resolve(storage).check_writable()


def check_tracking_store(uri: str) -> None:
    """A sqlite tracking URI must name an SQLite file (or a new one in an existing folder): MLflow must
    never be pointed at a data set or any other file it would fail on or write into."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    if path.is_dir():
        raise ValueError(f"--tracking-uri {uri}: {path} is a folder, expected an SQLite file such as "
                         f"{path / 'mlflow.db'}")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise ValueError(f"--tracking-uri {uri}: {path} exists and is not an SQLite database; "
                                 f"refusing to use it as the MLflow store")
    elif not path.exists() and not path.parent.is_dir():
        # the default store is created in --storage (made when the study starts); others need their folder
        raise ValueError(f"--tracking-uri {uri}: the folder {path.parent} does not exist")


def plan_of(opts, study, experiment: str, tracking_uri: str) -> dict:
    """What defines a study: the record written at its start and compared on --resume."""
    return {"study": study.name, "study_source": study.source, "description": study.description,
            "reference": study.reference.key, "arms": [a.key for a in study.arms],
            "models": list(study.models), "seeds": list(study.seeds), "datasets": list(study.datasets),
            "split_seeds": study.split_seeds,
            "seed_design": study.seed_design.as_dict() if study.seed_design else None,
            # every training setting as trials will get it (TrainConfig's defaults resolved), not only
            # what the study file names: a changed default is a different study too
            "fixed": study.resolved_settings(),
            "tune_hparams": opts.tune_hparams, "tuning_space": opts.tuning_space if opts.tune_hparams else None,
            "scheduler": opts.scheduler, "max_concurrent": opts.max_concurrent,
            "tracking_uri": tracking_uri, "experiment": experiment}


def _norm(value):
    return json.loads(json.dumps(value, default=str))


def check_resume(experiment_dir, plan: dict) -> None:
    """--resume with flags that change the study is refused with the list of differences."""

    study = Storage.resolve(experiment_dir)
    rel = f"{REPORT_DIR}/{PLAN_FILE}"
    path = f"{study}/{rel}"
    if not study.exists(rel):
        return  # a study started before plans were recorded: nothing to compare with
    try:
        recorded = json.loads(study.read_text(rel))
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume: {path} is unreadable ({e}); cannot tell which study to continue") from None
    new = _norm(plan)
    diffs = []
    for key in PLAN_KEYS:
        if key not in recorded:
            continue
        if key == "fixed":
            old_f, new_f = recorded["fixed"] or {}, new["fixed"] or {}
            for k in sorted(set(old_f) | set(new_f)):
                if k not in old_f and _is_default(k, new_f.get(k)):
                    continue  # a TrainConfig key added since the study started, at its default: nothing changed
                if old_f.get(k) != new_f.get(k):
                    diffs.append(f"{k}: {old_f.get(k, '(unset)')!r} → {new_f.get(k, '(unset)')!r}")
        elif recorded[key] != new[key]:
            diffs.append(f"{key}: {recorded[key]!r} → {new[key]!r}")
    if diffs:
        raise ValueError(f"--resume: this command differs from the study in {experiment_dir} "
                         f"({path}): " + "; ".join(diffs) + ". Resume with the study's own settings "
                         "(--cpus-per-trial, --gpus-per-trial, --max-concurrent and --address may change), or start a new "
                         "study with another --experiment (nothing was changed)")


def _is_default(key: str, value) -> bool:
    """Whether `value` is TrainConfig's default for `key` (as a plan records it)."""
    defaults = _norm({"fixed": TrainConfig().to_dict()})["fixed"]
    return key in defaults and defaults[key] == value


def write_plan(experiment_dir, plan: dict, extra: dict | None = None) -> str:
    """Record the study when it starts (one whole-file write); the end of the study adds to the same file."""

    study = Storage.resolve(experiment_dir)
    rel = f"{REPORT_DIR}/{PLAN_FILE}"
    old = {}
    if study.exists(rel):
        try:
            old = json.loads(study.read_text(rel))
        except (OSError, ValueError):
            old = {}
    data = {**old, **_norm(plan), **_norm(extra or {})}
    study.write_text(rel, json.dumps(data, indent=2, default=str))
    return f"{study}/{rel}"


def check_models(study) -> dict:
    """The plug-in contract (dcnn/models/plugins.py) of every model that is not built in, on two frames
    of each of the study's data sets: a broken plug-in fails here, naming itself, not in every worker."""

    found = {}
    for model in study.models:
        if model in BUILTIN_SPECS:
            continue
        cfg = resolve_config({**study.fixed_for(model), "model": model, "dataset": study.datasets[0]})
        for dataset in study.datasets:
            found[model] = check_plugin(model, cfg.preset, cfg.model_sizes(), dataset=dataset)
    return found


def preflight(opts, study, experiment: str, experiment_dir: Storage, tracking_uri: str) -> dict:
    """Everything left to check before Ray starts; returns the study's plan."""
    check_name("--experiment", experiment)
    settings = {k: study.setting(k) for k in ("n_train", "n_val", "n_test", "split", "split_seed", "test_dataset")}
    for dataset in study.datasets:  # the family checks the data and that the study's split fits it
        study.family.check_dataset(dataset, settings)
    check_models(study)
    if opts.tracking_uri:
        check_tracking_store(opts.tracking_uri)
    plan = plan_of(opts, study, experiment, tracking_uri)
    if opts.resume:
        check_resume(experiment_dir, plan)
    check_address(opts.address or os.environ.get("RAY_ADDRESS"))
    return plan


def check_study_folder(path) -> Storage:
    """`report PATH`: PATH (a folder or an object-store URI) must be a study folder holding trials; returns it
    resolved. A trial's params.json or result.json cut off or emptied (a kill during the write) is only
    warned about: the report rebuilds it from the trial's checkpoint record, or keeps what is whole, and
    says which."""
    study = Storage.resolve(path, flag="report", absolute=False)
    if not study.exists():
        raise ValueError(f"report {study}: no such folder (expected a study folder STORAGE/EXPERIMENT)")
    if study.is_file():
        raise ValueError(f"report {study}: is a file, expected a study folder STORAGE/EXPERIMENT")
    files = study.files()
    params = [f for f in files if f.count("/") == 1 and f.endswith("/params.json")]
    if not params:
        studies = sorted(f.split("/")[0] for f in files if f.count("/") == 2 and f.endswith("/params.json"))
        hint = (f"; did you mean {study / studies[0]}?" if studies else
                " (Tune trial folders, each with params.json and result.json)")
        raise ValueError(f"report {study}: holds no trials{hint}")
    _warn_damaged_trials(study)
    return study


def _warn_damaged_trials(study: Storage) -> None:
    """One warning per trial folder whose files were cut off or emptied (a kill during Tune's copy): the
    report rebuilds what the trial's checkpoint records (orchestrator/trial_files.py) and names the rest."""
    import logging


    log = logging.getLogger("dcnn.orchestrator")
    for trial in read_trials(study):
        if trial.notes:
            log.warning("report: %s/%s: %s", study, trial.folder, trial.damaged)
