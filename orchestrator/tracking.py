"""MLflow layout of a study (design §6): one experiment per study, a parent "study" run holding the
report, one run per trial named like `schnet · isilu · DN+LR · seed 1`.

Logging happens on the driver (a Tune callback), so trials need no access to the tracking store; runs
are found again by the trial id tag, so a retried or resumed trial continues its own run.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from ray import tune

from dcnn.config import TrainConfig
from search_spaces import LABEL_KEYS, trial_name

log = logging.getLogger("dcnn.orchestrator")
warnings.filterwarnings("ignore", message=".*noload.*")

METRIC_KEYS = ("energy_loss", "force_loss", "train_energy_loss", "train_force_loss", "train_loss",
               "val_loss", "lr", "epoch_time_s", "diverged", "test_energy_loss", "test_force_loss",
               "test_energy_baseline", "test_force_baseline")
_PLACEMENT_TAGS = ("node_id", "hostname", "node_ip", "gpu_ids", "cuda_visible_devices", "device")
TRIAL_TAG = "dcnn.trial_id"


def default_tracking_uri(storage: Path) -> str:
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


# MLflow's experiment type ("Machine learning", not "GenAI apps & agents"): the tag its UI's type selector
# writes.  MLflow 3.17's own UI picks the view from its global GenAI / Model training switch instead (URL
# `?workflowType=machine_learning`, or the switch, remembered per browser): see orchestrator/ui.py.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(tracking_uri: str, name: str, artifact_dir: Path | None) -> str:
    """Experiment id; sqlite stores get an absolute artifact folder (MLflow's default is CWD-relative).

    Marks the experiment as model training (`EXPERIMENT_KIND_TAG`), new or found again."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {name!r} is deleted in {tracking_uri}; restore it or "
                             f"choose another --experiment")
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:") and artifact_dir is not None:
        location = Path(artifact_dir).resolve().as_uri()
    return c.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def find_run(tracking_uri: str, experiment_id: str, tag: str, value: str):
    runs = client(tracking_uri).search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                            max_results=2)
    return runs[0] if runs else None


def ensure_parent_run(tracking_uri: str, experiment_id: str, study_name: str, tags: dict) -> str:
    """The study's parent run (found again on --resume, never duplicated)."""
    c = client(tracking_uri)
    found = find_run(tracking_uri, experiment_id, "dcnn.role", "study")
    if found is not None:
        c.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    run = c.create_run(experiment_id, run_name=f"study · {study_name}",
                       tags={"dcnn.role": "study", "dcnn.study": study_name, **tags})
    return run.info.run_id


trial_run_name = trial_name  # one naming rule for runs, progress lines and the report


def log_study_results(tracking_uri: str, parent_run_id: str, report: dict) -> None:
    """Baselines and findings on the study's parent run, so the UI shows the answer next to the runs."""
    from mlflow.entities import Metric

    c = client(tracking_uri)
    metrics = []
    baselines = report.get("baselines")
    for row in ([] if baselines is None else baselines.to_dict("records")):
        for key in ("energy", "force"):
            value = row.get(f"{key}_baseline")
            if value is not None and value == value:
                metrics.append(Metric(f"baseline_test_{key}_mae.{row['data']}", float(value), 0, 0))
    if metrics:
        c.log_batch(parent_run_id, metrics=metrics)
    if report.get("findings"):
        c.set_tag(parent_run_id, "findings", report["findings"][:5000])
        c.set_tag(parent_run_id, "mlflow.note.content", report["findings"][:5000])


def _params(config: dict) -> dict:
    """Every config key (the resolved TrainConfig, so defaults show too) plus the labels."""
    values = {k: v for k, v in config.items() if k not in LABEL_KEYS}
    try:
        full = TrainConfig.from_dict(values).to_dict()
        full.pop("threads"), full.pop("device")  # placement: recorded as tags from the trial itself
    except ValueError:  # the trial itself will fail and say why; record what it was given
        full = dict(values)
    full.update({k: config[k] for k in LABEL_KEYS if k in config})
    return {k: ("" if v is None else str(v)) for k, v in full.items()}


class MLflowStudyLogger(tune.Callback):
    """Tune callback: trial runs nested under the study run; params, factor tags, per-epoch metrics."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study_name: str):
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.parent_run_id, self.study_name = parent_run_id, study_name
        self._runs: dict[str, str] = {}
        self._placed: set[str] = set()
        self._client = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment state
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.tracking_uri)
        return self._client

    @property
    def run_ids(self) -> dict[str, str]:
        return dict(self._runs)

    def run_for(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        found = find_run(self.tracking_uri, self.experiment_id, TRIAL_TAG, tid)
        if found is not None:  # retried, restored or resumed: continue the trial's own run
            run_id = found.info.run_id
            if found.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            cfg = trial.config
            tags = {TRIAL_TAG: tid, "mlflow.parentRunId": self.parent_run_id,
                    "dcnn.study": self.study_name, "dcnn.role": "trial", "trial_name": str(trial),
                    **{k: str(cfg.get(k)) for k in ("model", "activation", "denorm", "rescale", "shift", "seed",
                                                    "arm", "phase", "data") if k in cfg}}
            run = self.client.create_run(self.experiment_id, run_name=trial_run_name(cfg), tags=tags)
            run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in _params(cfg).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self._runs[tid] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric, RunTag

        run_id = self.run_for(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(1000 * result.get("timestamp", 0)) or None
        metrics = [Metric(k, float(result[k]), ts or 0, step) for k in METRIC_KEYS
                   if k in result and isinstance(result[k], (int, float))]
        tags = []
        if trial.trial_id not in self._placed:
            tags = [RunTag(k, str(result[k])) for k in _PLACEMENT_TAGS if result.get(k) not in (None, "")]
            self._placed.add(trial.trial_id)
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        diverged = bool((trial.last_result or {}).get("diverged"))
        self.client.set_tag(run_id, "diverged", str(diverged).lower())
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_for(trial)
        error = getattr(trial, "error_file", None) or ""
        if error and Path(error).exists():
            self.client.set_tag(run_id, "error", Path(error).read_text()[-4000:])
        self.client.set_terminated(run_id, "FAILED")

