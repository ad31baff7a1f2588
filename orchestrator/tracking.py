"""MLflow layout of a study: one experiment per study, a parent "study" run holding the
report, one run per trial named like `schnet · isilu · DN+LR · seed 1`.

Logging happens on the driver (a Tune callback), so trials need no access to the tracking store; runs
are found again by the trial id tag, so a retried or resumed trial continues its own run.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from ray import tune

from dcnn.registry import family_of_config, resolve_config
from orchestrator.storage import default_tracking_uri  # noqa: F401 (tracking.default_tracking_uri)
from search_spaces import FACTORS, LABEL_KEYS, trial_name

log = logging.getLogger("dcnn.orchestrator")
warnings.filterwarnings("ignore", message=".*noload.*")

METRIC_KEYS = ("energy_loss", "force_loss", "train_energy_loss", "train_force_loss", "train_loss",
               "val_loss", "lr", "epoch_time_s", "diverged", "stalled", "test_energy_loss", "test_force_loss",
               "test_energy_baseline", "test_force_baseline",
               # cost (issue 11): data load + model build, compile, peak memory
               "setup_s", "compile_s", "compiled", "peak_rss_mib", "peak_cuda_mib",
               # whether the trial's CPU flushed denormals (dcnn/numerics.py); compiled from a warm cache
               "denormals_flushed", "compile_warm_cache",
               # what the arm did to the model (dcnn.train.Trainer.BUILD_KEYS), with the final metrics
               "activations_replaced", "batchnorm_removed", "n_parameters", "init_layers_scaled")
_PLACEMENT_TAGS = ("node_id", "hostname", "node_ip", "gpu_ids", "cuda_visible_devices", "device", "malloc")
TRIAL_TAG = "dcnn.trial_id"


def _own_factors(config: dict) -> list[str]:
    """The study's own factors a trial lists (`factors`: force_weight,size.cutoff), tagged like the built-ins."""
    return [k for k in str(config.get("factors") or "").split(",") if k]


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


# MLflow's experiment type ("Machine learning", not "GenAI apps & agents"): the tag its UI's type selector
# writes.  MLflow 3.17's own UI picks the view from its global GenAI / Model training switch instead (URL
# `?workflowType=machine_learning`, or the switch, remembered per browser): see orchestrator/ui.py.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


NOTE_TAG = "mlflow.note.content"  # the description the UI shows for an experiment (and a run)


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | Path | None,
                      description: str = "") -> str:
    """Experiment id; sqlite stores get `artifact_location` (a folder, made absolute, or a URI such as
    the study's object store), as MLflow's default is CWD-relative; a tracking server keeps its own
    (`--artifacts-destination`, proxied: the client needs no store credentials).

    Marks the experiment as model training (`EXPERIMENT_KIND_TAG`) and, when given, sets the study's
    description as its note (`NOTE_TAG`), new or found again, so the experiments list says what each
    study is."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, **({NOTE_TAG: description} if description else {})}
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {name!r} is deleted in {tracking_uri}; restore it or "
                             f"choose another --experiment")
        for key, value in wanted.items():
            if exp.tags.get(key) != value:
                c.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:") and artifact_location is not None:
        location = str(artifact_location) if "://" in str(artifact_location) else \
            Path(artifact_location).resolve().as_uri()
    return c.create_experiment(name, artifact_location=location, tags=wanted)


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


def close_unfinished(tracking_uri: str, parent_run_id: str, trial_ids: list[str]) -> dict:
    """Mark KILLED the RUNNING runs of these trials (by TRIAL_TAG, under the study's parent run) and the
    parent run itself when RUNNING: a driver that was killed and will not be resumed leaves them RUNNING
    forever (a resume reopens them: `MLflowStudyLogger.run_for`, `ensure_parent_run`). Nothing else is
    changed. Returns {"closed": [(trial id, run id)], "not_running": {trial id: status or 'no MLflow run'},
    "parent_name", "parent_status" (before), "parent_closed"}."""
    from mlflow.exceptions import MlflowException

    c = client(tracking_uri)
    try:
        parent = c.get_run(parent_run_id)
    except MlflowException as e:
        raise ValueError(f"the study's parent run {parent_run_id} is not in {tracking_uri} "
                         f"({str(e).splitlines()[0][:200]}); nothing was closed") from None
    runs = c.search_runs([parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                         max_results=50000)
    by_trial = {r.data.tags.get(TRIAL_TAG): r for r in runs}
    closed, not_running = [], {}
    for tid in trial_ids:
        run = by_trial.get(tid)
        if run is None:
            not_running[tid] = "no MLflow run"
        elif run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, "KILLED")
            closed.append((tid, run.info.run_id))
        else:
            not_running[tid] = run.info.status
    parent_closed = parent.info.status == "RUNNING"
    if parent_closed:
        c.set_terminated(parent_run_id, "KILLED")
    return {"closed": closed, "not_running": not_running, "parent_name": parent.info.run_name,
            "parent_status": parent.info.status, "parent_closed": parent_closed}


trial_run_name = trial_name  # one naming rule for runs, progress lines and the report


def log_study_results(tracking_uri: str, parent_run_id: str, report: dict) -> None:
    """Baselines and findings on the study's parent run, so the UI shows the answer next to the runs."""
    from mlflow.entities import Metric

    c = client(tracking_uri)
    metrics = []
    baselines = report.get("baselines")
    for row in ([] if baselines is None else baselines.to_dict("records")):
        for spec in report.get("metric_specs", ()):  # the task family's metrics that have a baseline
            value = row.get(f"{spec.slug}_baseline")
            if spec.baseline and value is not None and value == value:
                metrics.append(Metric(f"{spec.baseline_metric}.{row['data']}", float(value), 0, 0))
    if metrics:
        c.log_batch(parent_run_id, metrics=metrics)
    if report.get("findings"):
        c.set_tag(parent_run_id, "findings", report["findings"][:5000])
        c.set_tag(parent_run_id, "mlflow.note.content", report["findings"][:5000])


def _params(config: dict) -> dict:
    """Every config key (the resolved TrainConfig, so defaults show too) plus the labels."""
    values = {k: v for k, v in config.items() if k not in LABEL_KEYS}
    try:
        full = resolve_config(values).to_dict()
        full.pop("threads"), full.pop("device")  # placement: recorded as tags from the trial itself
    except ValueError:  # the trial itself will fail and say why; record what it was given
        full = dict(values)
    full.update({k: config[k] for k in LABEL_KEYS if k in config})
    return {k: ("" if v is None else str(v)) for k, v in full.items()}


class MLflowStudyLogger(tune.Callback):
    """Tune callback: trial runs nested under the study run; params, factor tags, per-epoch metrics.

    Faults (issue 8): a retried or resumed trial replays the epochs after its last durable checkpoint;
    each epoch is logged once (steps at or below the run's last logged step are skipped, and a new driver
    reads the run's metric history first).  When the tracking store does not answer, every call is kept
    in order in a buffer and sent when it answers again (tried every few seconds while trials go on
    training); what cannot be sent by the end of the study is reported on the driver's log and is still
    in the study folder (each trial's result.json).
    """

    RETRY_S = 2.0

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study_name: str):
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.parent_run_id, self.study_name = parent_run_id, study_name
        self._runs: dict[str, str] = {}
        self._placed: set[str] = set()
        self._last_step: dict[str, int] = {}  # run id -> last logged epoch
        self._pending: list = []  # calls not yet accepted by the tracking store, in order
        self._down_since = None
        self._last_try = 0.0
        self._client = None
        self.sent, self.write_s = 0, 0.0  # calls the store accepted, and the driver's seconds spent on them

    def __getstate__(self):  # Tune pickles callbacks with the experiment state
        state = dict(self.__dict__)
        state["_client"] = None
        state["_pending"] = []  # closures over trials: not picklable; result.json holds the metrics
        return state

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.tracking_uri)
        return self._client

    @property
    def run_ids(self) -> dict[str, str]:
        return dict(self._runs)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def run_for(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        found = find_run(self.tracking_uri, self.experiment_id, TRIAL_TAG, tid)
        if found is not None:  # retried, restored or resumed: continue the trial's own run
            run_id = found.info.run_id
            if found.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, "val_loss")  # every family logs it
            if history:  # a new driver: epochs this run already holds are not logged again
                self._last_step[run_id] = max(m.step for m in history)
        else:
            cfg = trial.config
            tags = {TRIAL_TAG: tid, "mlflow.parentRunId": self.parent_run_id,
                    "dcnn.study": self.study_name, "dcnn.role": "trial", "trial_name": str(trial),
                    **{k: str(cfg.get(k)) for k in ("model", *FACTORS, *_own_factors(cfg), "seed", "arm", "phase", "data")
                       if k in cfg}}
            run = self.client.create_run(self.experiment_id, run_name=trial_run_name(cfg), tags=tags)
            run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in _params(cfg).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        self._runs[tid] = run_id
        return run_id

    # -- delivery: in order, buffered while the store does not answer ------------------------------
    def _submit(self, call, force: bool = False) -> None:
        self._pending.append(call)
        self._flush(force=True if not self._down_since else force)

    def _flush(self, force: bool = False) -> None:
        import time

        if not self._pending:
            return
        if not force and time.time() - self._last_try < self.RETRY_S:
            return
        self._last_try = time.time()
        with _fail_fast(self.tracking_uri):
            while self._pending:
                t0 = time.perf_counter()
                try:
                    self._pending[0]()
                    self.sent += 1
                    self.write_s += time.perf_counter() - t0
                except Exception as e:  # any failure of the store: keep the call, try again later
                    if self._down_since is None:
                        self._down_since = time.time()
                        log.warning("MLflow (%s) does not answer (%s: %s); buffering the study's metrics and "
                                    "sending them when it answers again", self.tracking_uri,
                                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                    return
                self._pending.pop(0)
        if self._down_since is not None:
            log.warning("MLflow (%s) answers again after %.0f s; buffered metrics sent",
                        self.tracking_uri, time.time() - self._down_since)
            self._down_since = None

    def _log_result(self, trial, result: dict) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.run_for(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if step <= self._last_step.get(run_id, 0):
            return  # a replayed epoch (retried from an older checkpoint): already logged once
        ts = int(1000 * result.get("timestamp", 0)) or None
        keys = METRIC_KEYS + family_of_config(trial.config).metric_keys()  # what the task family reports
        metrics = [Metric(k, float(result[k]), ts or 0, step) for k in dict.fromkeys(keys)
                   if k in result and isinstance(result[k], (int, float))]
        tags = []
        if trial.trial_id not in self._placed:
            tags = [RunTag(k, str(result[k])) for k in _PLACEMENT_TAGS if result.get(k) not in (None, "")]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self._placed.add(trial.trial_id)
        self._last_step[run_id] = step

    def _end_run(self, trial, status: str, error_text: str = "") -> None:
        run_id = self.run_for(trial)
        if status == "FINISHED":
            last = trial.last_result or {}
            self.client.set_tag(run_id, "diverged", str(bool(last.get("diverged"))).lower())
            self.client.set_tag(run_id, "stalled", str(bool(last.get("stalled"))).lower())  # did not train
        elif error_text:
            self.client.set_tag(run_id, "error", error_text[-4000:])
        self.client.set_terminated(run_id, status)

    # -- Tune hooks -----------------------------------------------------------------------------
    def on_step_end(self, iteration, trials, **info):
        self._flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit(lambda: self.run_for(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        result = dict(result)
        self._submit(lambda: self._log_result(trial, result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._submit(lambda: self._end_run(trial, "FINISHED"))

    def on_trial_error(self, iteration, trials, trial, **info):
        error = getattr(trial, "error_file", None) or ""
        text = Path(error).read_text() if error and Path(error).exists() else ""
        self._submit(lambda: self._end_run(trial, "FAILED", text))

    def on_experiment_end(self, trials, **info):
        import time

        deadline = time.time() + float(os.environ.get("DCNN_MLFLOW_FLUSH_S", "60"))
        while self._pending and time.time() < deadline:
            self._flush(force=True)
            if self._pending:
                time.sleep(self.RETRY_S)
        # what tracking cost the driver's one thread: where a large study's time goes
        log.info("MLflow: %d logging call(s) sent in %.1f s of the driver's time (%.1f ms each)", self.sent,
                 self.write_s, 1000 * self.write_s / max(self.sent, 1))
        if self._pending:
            log.error("MLflow (%s) did not answer by the end of the study: %d logging call(s) were not sent; "
                      "the metrics are in each trial's result.json in the study folder (the report reads "
                      "them from there)", self.tracking_uri, len(self._pending))


class _fail_fast:
    """While buffering, an HTTP store that does not answer fails in seconds, not after MLflow's
    minutes of retries (the calls are retried by the buffer instead)."""

    KEYS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

    def __init__(self, uri: str):
        self.active = uri.startswith(("http://", "https://"))

    def __enter__(self):
        if self.active:
            self.saved = {k: os.environ.get(k) for k in self.KEYS}
            for k, v in self.KEYS.items():
                os.environ.setdefault(k, v)
        return self

    def __exit__(self, *exc):
        if self.active:
            for k, v in self.saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return False
