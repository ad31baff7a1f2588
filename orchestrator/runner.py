"""`dcnn-ablate ablate`: validate everything, then run a study on Ray Tune with MLflow tracking.

Order matters: every flag, the study file and the data set are checked before Ray starts, and an
existing study folder is never overwritten (use --resume or a new --experiment).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dcnn.models.plugins import plugin_search_path, safe_name
from dcnn.registry import family_of, resolve_dataset
from orchestrator import validate
from orchestrator.report import REPORT_DIR, build_report
from orchestrator.storage import Storage, default_tracking_uri
from orchestrator.throughput import concurrent_slots, summarize, write_summary
from orchestrator.trial_files import repair_trials
from orchestrator.ui import experiment_url
from search_spaces import Study, load_study, tuning_space
from search_spaces.factors import BUILTIN
from trainables import study_trainable
from trainables.trial_record import RECORD_FILE

log = logging.getLogger("dcnn.orchestrator")
SCHEDULERS = ("fifo", "asha")


@dataclass
class AblateOptions:
    study: str = "seed-plan"
    models: Optional[list] = None
    datasets: Optional[list] = None  # bundled names or paths (default: the study's, else bundled ethanol)
    seeds: Optional[list] = None
    split_seeds: Optional[str] = None  # fixed | vary (default: the study's, else fixed)
    switch_on: tuple = ()  # factors (keys) set to their "on" level on every arm: `--shift` (search_spaces/factors.py)
    epochs: Optional[int] = None
    preset: Optional[str] = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: Optional[int] = None
    address: Optional[str] = None
    storage: Optional[str] = None
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None
    resume: bool = False
    tune_hparams: int = 0
    tuning_space: str = "default"
    scheduler: str = "fifo"
    max_failures: int = 2
    set: dict = field(default_factory=dict)  # extra TrainConfig keys for every trial
    quiet: bool = False

    def validate(self) -> Study:
        """All checks that need no Ray; returns the study with the overrides applied."""

        validate.check_finite("--cpus-per-trial", self.cpus_per_trial)
        validate.check_finite("--gpus-per-trial", self.gpus_per_trial)
        if self.experiment is not None:
            validate.check_name("--experiment", self.experiment)
        validate.check_set(self.set, {"epochs": self.epochs, "preset": self.preset})
        study_trainable()  # a $DCNN_TRAINABLE that names no subclass of DCNNTrainable is refused before Ray
        if self.cpus_per_trial <= 0:
            raise ValueError(f"--cpus-per-trial must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise ValueError(f"--gpus-per-trial must be non-negative, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
            raise ValueError(f"--gpus-per-trial above 1 must be a whole number, got {self.gpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"--max-concurrent must be at least 1, got {self.max_concurrent}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        if self.scheduler == "asha" and not self.tune_hparams:
            raise ValueError("--scheduler asha stops trials early by their validation loss: on a seed-replicated "
                             "ablation it drops arms' slow seeds and compares the survivors. It is only for "
                             "--tune-hparams (which uses ASHA already); the seeds always run to the end")
        if self.tune_hparams < 0:
            raise ValueError(f"--tune-hparams must be non-negative, got {self.tune_hparams}")
        if self.tune_hparams:
            tuning_space(self.tuning_space)
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"--epochs must be positive, got {self.epochs}")
        storage = self.storage_location  # an absolute folder or an object-store URI without credentials
        if not storage.is_local and not self.tracking_uri:
            raise ValueError(f"--storage {storage}: the default MLflow store (sqlite in the storage folder) "
                             f"cannot live in an object store; pass --tracking-uri: an MLflow server (e.g. "
                             f"`mlflow server --artifacts-destination {storage}/mlartifacts`) or "
                             f"sqlite:////abs/path/mlflow.db")
        if self.tracking_uri:
            _check_tracking_uri(self.tracking_uri)
        fixed = dict(self.set)
        if self.epochs is not None:
            fixed["epochs"] = self.epochs
        if self.preset is not None:
            fixed["preset"] = self.preset
        base = load_study(self.study)
        model = (self.models or base.models)[0]
        family = family_of(model)  # data sets are files or PDE problems
        if fixed.get("test_dataset"):  # a path from the command line: relative to here, not to a trial's folder
            fixed["test_dataset"] = resolve_dataset(family, fixed["test_dataset"], model=model)
        datasets = None if self.datasets is None else [resolve_dataset(family, d, model=model) for d in self.datasets]
        study = base.with_overrides(models=self.models, seeds=self.seeds, fixed=fixed, datasets=datasets,
                                    split_seeds=self.split_seeds,
                                    levels={k: BUILTIN[k].component[0] for k in self.switch_on})
        if self.tune_hparams:  # a tuned key would overwrite the levels the arms compare
            both = sorted(set(tuning_space(self.tuning_space)) & {f.key for f in study.factors})
            if both:
                raise ValueError(f"--tune-hparams: the tuning space {self.tuning_space!r} tunes {both}, a factor of "
                                 f"study {study.name} (its arms set it); use --tuning-space lr, or a study that does "
                                 f"not vary {', '.join(both)}")
        for path in study.datasets:  # names the file (or problem) and what is wrong, before Ray starts
            study.family.check_dataset(path, {"test_dataset": study.setting("test_dataset")}
                                       if study.setting("test_dataset") else {})
        return study

    @property
    def storage_location(self) -> Storage:
        """--storage resolved: a local folder (default ./results) or an object-store prefix."""
        return Storage.resolve(self.storage or Path.cwd() / "results")


def _check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer fails now, not after Ray started (MLflow's client would
    retry for minutes)."""
    import urllib.error
    import urllib.request

    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # it answered (some proxies have no /health): reachable
        except (urllib.error.URLError, OSError) as e:
            raise ValueError(f"--tracking-uri {uri}: MLflow server not reachable ({e}); start it or fix the URI")
    elif scheme not in ("sqlite", "postgresql", "mysql", "mssql", "file", "databricks"):
        raise ValueError(f"--tracking-uri {uri!r}: expected http(s)://HOST:PORT or a database URI "
                         f"such as sqlite:////abs/path/mlflow.db")


def _init_ray(address: Optional[str], quiet: bool, env: Optional[dict] = None):
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # checkpoints every epoch are the point (resume); Tune's warning about frequent snapshots is noise
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return ray
    # no address: a fresh in-process Ray ("local"), never a cluster ray.init() might find by itself
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    runtime_env = {"worker_process_setup_hook": "trainables.dcnn_trainables.quiet_worker_logs"}
    env_vars = dict(env or {})  # the storage's non-secret SDK settings (endpoint, region): workers reach the same store
    if address == "local" and "LD_PRELOAD" not in os.environ:
        from dcnn.numerics import fast_allocator

        allocator = fast_allocator()  # a local study's workers preload tcmalloc/jemalloc when installed
        if allocator:
            env_vars["LD_PRELOAD"] = allocator
            log.info("Ray workers preload %s (DCNN_ALLOCATOR=system to use glibc's malloc)", allocator)
    if env_vars:
        runtime_env["env_vars"] = env_vars
    ray.init(address=address, include_dashboard=False, log_to_driver=not quiet, configure_logging=False,
             runtime_env=runtime_env)
    return ray


class _without_tune_default_loggers:
    """While Tune runs a study: no default logger callbacks (the study passes the JSON and CSV ones itself,
    `callbacks_for`), so Tune adds no TensorBoard logger and prints no TensorBoard hint.  Restored after, so a
    user's own Tune runs in the same process keep Tune's defaults."""

    KEY = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"

    def __enter__(self):
        self.saved = os.environ.get(self.KEY)
        os.environ[self.KEY] = "1"

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop(self.KEY, None)
        else:
            os.environ[self.KEY] = self.saved
        return False


def _check_cluster_fits(ray, opts: AblateOptions) -> None:
    """A trial the cluster can never place would sit PENDING forever: refuse it up front."""
    total = ray.cluster_resources()
    per_node = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    need = {"CPU": opts.cpus_per_trial, "GPU": opts.gpus_per_trial}
    if not any(all(res.get(k, 0.0) >= v for k, v in need.items() if v) for res in per_node):
        raise ValueError(
            f"no node of the Ray cluster can hold one trial ({opts.cpus_per_trial:g} CPU, "
            f"{opts.gpus_per_trial:g} GPU per trial); the cluster has {total.get('CPU', 0):g} CPU and "
            f"{total.get('GPU', 0):g} GPU in all, largest node "
            f"{max((r.get('CPU', 0) for r in per_node), default=0):g} CPU / "
            f"{max((r.get('GPU', 0) for r in per_node), default=0):g} GPU (on an autoscaling cluster, keep at "
            f"least one node of the needed type running)")


def _trainable(opts: AblateOptions):
    from ray import tune

    return tune.with_resources(study_trainable(), {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})


def _tune_arm(opts, study, model, arm, callbacks_for, experiment_dir: Storage) -> dict:
    """N Optuna trials (OptunaSearch + ASHA) for one (model, arm); returns its best hyperparameters."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch


    space = tuning_space(opts.tuning_space)
    name = f"{safe_name(model)}-{arm.key}"  # a folder: a plug-in's 'pkg.mod:attr' is made safe
    storage = experiment_dir / "tuning"
    path, fs = (storage / name).tune_location()
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        _prepare_resume(storage / name)
        tuner = _restore(path, trainable=_trainable(opts), resume_unfinished=True, resume_errored=True,
                         storage_filesystem=fs)
    else:
        epochs = study.setting("epochs")
        param_space = {**study.fixed_for(model), **arm.as_config(), "model": model, "seed": study.seeds[0],
                       "dataset": study.datasets[0],
                       "arm": arm.key, "study": study.name, "phase": "tune", **plugin_path(study), **space}
        tuner = tune.Tuner(
            _trainable(opts), param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="val_loss", mode="min", num_samples=opts.tune_hparams, reuse_actors=True,
                search_alg=OptunaSearch(seed=0), max_concurrent_trials=opts.max_concurrent,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1)),
            run_config=tune.RunConfig(name=name, storage_path=storage.tune_location()[0],
                                      storage_filesystem=storage.tune_location()[1], verbose=0,
                                      callbacks=callbacks_for(f"tune {name} ", storage / name),
                                      failure_config=tune.FailureConfig(max_failures=opts.max_failures)))
    with _without_tune_default_loggers():
        best = tuner.fit().get_best_result(metric="val_loss", mode="min", scope="last")
    return {k: best.config[k] for k in space}


def _prepare_resume(tune_dir: Storage) -> None:
    """Tune's snapshot made safe to resume (orchestrator.tune_snapshot), and each trial's params.json and
    result.json made whole from its checkpoint's record before Tune reads them back and appends to them
    (orchestrator.trial_files); what was repaired is said."""
    from orchestrator.tune_snapshot import prepare_resume  # Ray's: loaded when a study runs (see run_ablation)

    for note in prepare_resume(tune_dir):
        print(f"resume: {note}", flush=True)
    _repair_trial_files(tune_dir, "resume")


def _restore(path: str, **kwargs):
    """`tune.Tuner.restore`, saying in one line how many trials had recorded no result (they start from their
    first epoch) where Tune would warn of a FileNotFoundError for each (orchestrator.tune_snapshot
    .UnstartedTrials)."""
    from ray import tune

    from orchestrator.tune_snapshot import counting_unstarted_trials

    with counting_unstarted_trials() as unstarted:
        tuner = tune.Tuner.restore(path, **kwargs)
    if unstarted.count:
        print(f"resume: {unstarted.count} trial(s) had recorded no result yet; they run from their first epoch",
              flush=True)
    return tuner


def _repair_trial_files(tune_dir: Storage, when: str) -> None:
    for note in repair_trials(tune_dir):
        print(f"{when}: repaired {note}", flush=True)


def run_ablation(opts: AblateOptions) -> dict:
    # Tune callbacks (MLflow logging, progress lines, snapshots) load Ray: here, when a study runs, so that
    # `dcnn-ablate train` and `data`, which share the command line, never load it
    from orchestrator import tracking
    from orchestrator.progress import StudyProgress
    from orchestrator.seed_search import SequentialSeeds
    from orchestrator.tune_snapshot import SnapshotKeeper

    """Run (or resume) a study; returns the report (paths, summary table)."""
    from ray import tune


    study = opts.validate()
    experiment = opts.experiment or study.name
    storage = opts.storage_location
    validate.check_storage(storage)  # writable (an object store: reachable, bucket there, credentials)
    experiment_dir = storage / experiment
    if not opts.resume and not experiment_dir.is_empty():
        raise ValueError(f"{experiment_dir} already holds a study; pass --resume to continue it, or "
                         f"choose another --experiment (nothing was changed)")
    if opts.resume and not experiment_dir.exists():
        raise ValueError(f"--resume: {experiment_dir} does not exist (nothing to resume)")
    uri = opts.tracking_uri or default_tracking_uri(storage.local_path)
    plan = validate.preflight(opts, study, experiment, experiment_dir, uri)  # last checks before Ray
    ray = _init_ray(opts.address, opts.quiet, storage.worker_env())
    _check_cluster_fits(ray, opts)

    storage.mkdir()
    exp_id = tracking.ensure_experiment(uri, experiment, (storage / "mlartifacts" / experiment).artifact_uri(),
                                        study.description)
    parent = tracking.ensure_parent_run(uri, exp_id, study.name, {"dcnn.storage": str(experiment_dir)})
    identical = study.identical_arms()
    n_trials = len(study.trial_configs())
    validate.write_plan(experiment_dir, plan, _study_record(study, identical, uri, experiment, parent))  # at the start
    design = study.seed_design
    seeds_said = (f"seeds auto ({design.min} to {design.max} per arm, more only while a comparison is open)"
                  if design else f"{len(study.seeds)} seeds")
    print(f"study {study.name}: {len(study.arms)} arms × {len(study.models)} models × {len(study.datasets)} "
          f"data set(s) × {seeds_said} = {'at most ' if design else ''}{n_trials} trials → {experiment_dir}\n"
          + "".join(f"  {m}: has no BatchNorm, so {', '.join(f'{a} ≡ {t}' for a, t in pairs.items())} "
                    f"(identical by construction: run once)\n" for m, pairs in identical.items())
          + f"MLflow: {uri} (experiment {experiment!r})", flush=True)


    # what the progress lines count the time left from: each trial's name, model and epochs (a seed design adds
    # trials as it goes: no plan)
    planned = None if design else [
        (tracking.trial_run_name(c), c["model"], c.get("epochs", study.setting("epochs", c["model"])))
        for c in study.trial_configs()]

    def callbacks_for(label, tune_dir, total=None, planned=planned):
        from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback


        # Tune's own result.json and progress.csv (the report reads result.json), but not its TensorBoard
        # logger, whose "To visualize your results with TensorBoard" line points at a tool we do not use
        cbs = [tracking.MLflowStudyLogger(uri, exp_id, parent, study.name), JsonLoggerCallback(), CSVLoggerCallback(),
               SnapshotKeeper(tune_dir)]
        if total:
            cbs.append(StudyProgress(total, label, planned))
        return cbs

    space = {**study.param_space(skip_identical=True), **plugin_path(study)}
    best = {}
    if opts.tune_hparams:
        for model, arm in study.cells():
            best[f"{model}/{arm.key}"] = _tune_arm(
                opts, study, model, arm,
                lambda label, tune_dir: callbacks_for(label, tune_dir, opts.tune_hparams, None), experiment_dir)
            print(f"best hyperparameters {model} · {arm.key}: {best[f'{model}/{arm.key}']}", flush=True)
        for key in tuning_space(opts.tuning_space):
            space[key] = tune.sample_from(BestHyperparameter(best, key))
        validate.write_plan(experiment_dir, plan, {"best_hyperparameters": best})

    exp_path, fs = experiment_dir.tune_location()
    if opts.resume and tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
        _prepare_resume(experiment_dir)
        # the param space is given again: Tune needs it to resolve its sample_from placeholders (a seed
        # design's searcher is restored with Tune's state and suggests concrete configs)
        tuner = _restore(exp_path, trainable=_trainable(opts), resume_unfinished=True, resume_errored=True,
                         param_space=None if design else space, storage_filesystem=fs)
    else:
        scheduler = None
        if opts.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="training_iteration", metric="val_loss", mode="min",
                                      max_t=study.setting("epochs"), grace_period=1)
        searcher = None
        if design:  # the trials come from the sequential seed design, not from a grid
            searcher = SequentialSeeds(study, plugin_path(study), tuned=best)
            space = {}
        tuner = tune.Tuner(
            _trainable(opts), param_space=space,
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=opts.max_concurrent,
                                        scheduler=scheduler, search_alg=searcher,
                                        num_samples=-1 if searcher else 1),
            run_config=tune.RunConfig(
                name=experiment, storage_path=storage.tune_location()[0],
                storage_filesystem=storage.tune_location()[1], verbose=0,
                callbacks=callbacks_for("", experiment_dir, n_trials),
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_frequency=1,
                                                        checkpoint_at_end=True)))
    t0 = time.time()
    try:
        return _run_and_report(opts, ray, tuner, study, uri, exp_id, parent, experiment_dir, n_trials, t0)
    except Exception as e:  # noqa: BLE001 — only a full disk is turned into a message; anything else re-raised
        cause = _disk_full(storage, e)
        if cause is None:
            raise
        try:
            tracking.client(uri).set_terminated(parent, "FAILED")
        except Exception:  # noqa: BLE001 — the tracking store may be on the same full disk
            pass
        raise StudyStopped(
            f"the disk of --storage {storage} is full ({cause}): the study stopped. Trials that finished, and "
            f"every complete checkpoint, are kept (an incomplete one is never resumed from); free space, then "
            f"continue with the same command and --resume") from e


class StudyStopped(RuntimeError):
    """A study that could not go on for a reason outside it (a full disk); the message says what to do."""


def _disk_full(storage: Storage, error: BaseException) -> str | None:
    """Why `error` is a full disk (the errno in its chain, or a local --storage with under 1 MiB free), else None."""
    import errno
    import shutil

    chain, seen = error, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if getattr(chain, "errno", None) == errno.ENOSPC or "No space left on device" in str(chain):
            return "no space left on device"
        chain = chain.__cause__ or chain.__context__
    if storage.is_local:
        folder = storage.local_path
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if free < 2**20:
            return f"{free} bytes free"
    return None


def _run_and_report(opts, ray, tuner, study, uri, exp_id, parent, experiment_dir, n_trials, t0) -> dict:
    from orchestrator import tracking  # Ray's: see run_ablation

    """The study's trials (Tune), then its report, MLflow's parent run and the throughput summary."""

    with _without_tune_default_loggers():
        grid = tuner.fit()
    wall = time.time() - t0
    _repair_trial_files(experiment_dir, "study")  # whatever Tune's last copies left behind, before the report
    errors = [r.error for r in grid if r.error is not None]
    print(f"study finished in {wall:.0f} s; {len(errors)} trial(s) errored", flush=True)

    run_ids = {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id for r in tracking.client(uri).search_runs(
        [exp_id], filter_string="tags.`dcnn.role` = 'trial'", max_results=10000)}
    experiment_dir.write_text(f"{REPORT_DIR}/mlflow_runs.json", json.dumps(run_ids, indent=2))
    c = tracking.client(uri)

    def publish(report, report_dir):
        tracking.log_study_results(uri, parent, report)
        c.log_artifacts(parent, str(report_dir), artifact_path="report")

    report = report_study(experiment_dir, publish)
    c.set_terminated(parent, "FINISHED" if not errors else "FAILED")
    print(report["markdown"], flush=True)
    print(f"report: {report['paths']['markdown']}", flush=True)
    print(_throughput(opts, ray, grid, wall, n_trials, experiment_dir, t0), flush=True)

    print(f"MLflow runs: {experiment_url('http://127.0.0.1:5000', exp_id)} (serve it with `make ui`, or "
          f"`mlflow ui --backend-store-uri {uri}`)", flush=True)
    report["errors"] = errors
    return report


# the files build_report reads: all a study in an object store downloads for its report
REPORT_INPUTS = ("*/params.json", "*/result.json", "*/error.txt", f"*/checkpoint_*/{RECORD_FILE}", "report/study.json",
                 "report/mlflow_runs.json")


def report_study(study, publish=None) -> dict:
    """Build the study's report from its folder (a local copy of REPORT_INPUTS when it lives in an object
    store) and store the report files beside it; `publish(report, local_report_dir)` runs while the local
    files exist (MLflow upload)."""

    study = Storage.resolve(study, absolute=False)
    checkpoints = study.glob("*/checkpoint_*/trainer.pt")  # named in the report, not downloaded for it
    with study.local_copy(REPORT_INPUTS) as folder:
        report = build_report(folder, location=str(study), checkpoints=checkpoints)
        study.upload(folder / REPORT_DIR, REPORT_DIR)
        if publish is not None:
            publish(report, folder / REPORT_DIR)
    if not study.is_local:  # the local copy is gone: point at the stored files
        report["paths"] = {k: f"{study}/{REPORT_DIR}/{Path(p).name}" for k, p in report["paths"].items()}
    return report


def _throughput(opts: AblateOptions, ray, grid, wall: float, n_trials: int, study_dir: Storage,
                study_start: float) -> str:
    """The study's throughput summary (orchestrator/throughput.py), written to report/throughput.{md,json}."""


    resources = ray.cluster_resources()
    slots = concurrent_slots(resources, opts.cpus_per_trial, opts.gpus_per_trial, opts.max_concurrent, n_trials)
    return write_summary(study_dir, REPORT_DIR, summarize(list(grid), wall, slots, resources, study_start))


def plugin_path(study: Study) -> dict:
    """{"plugin_path": folders} when a plug-in model was imported from a folder Ray's workers would not
    search (not installed, not the working directory): each trial puts them on its sys.path. On a
    multi-node cluster the folder must exist on every node (a shared file system), or install the plug-in."""

    folders = list(dict.fromkeys(p for p in map(plugin_search_path, study.models) if p))
    return {"plugin_path": folders} if folders else {}


def _study_record(study: Study, identical: dict, uri: str, experiment: str, parent: str) -> dict:
    """What the report needs to know about the study beyond its plan: data sets with units, twins."""
    datasets = {}
    for d in study.datasets:
        datasets[d] = {"label": study.dataset_labels()[d], **study.family.dataset_info(d)}
    levels = {a.key: {k: v for k, v in a.levels} for a in study.arms}  # the report's factor columns of twins
    return {"identical": identical, "dataset_info": datasets, "factors": [f.key for f in study.factors],
            "arm_levels": levels, "units": next(iter(datasets.values()))["units"], "peers": list(study.peers),
            "tracking_uri": uri, "experiment": experiment, "parent_run_id": parent, "best_hyperparameters": {},
            "settings": {k: study.setting(k) for k in ("epochs", "lr", "lr_schedule", "lr_min", "rescale_factor",
                                                      "force_weight", "n_train", "n_val", "n_test", "preset",
                                                      "split", "test_dataset")}}


class BestHyperparameter:
    """`tune.sample_from` callable: the tuned value of one hyperparameter for the trial's (model, arm)."""

    def __init__(self, best: dict, key: str):
        self.best, self.key = best, key

    def __call__(self, config: dict):
        return self.best[f"{config['model']}/{config['arm']}"][self.key]
