"""Both trainables under both Tune APIs, relative paths, failures and retries, against real Ray and MLflow."""
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from ray import tune

from conftest import ROOT, TINY
from orchestrator import tracking
from trainables import DCNNTrainable, dcnn_trainable

CONFIG = {**TINY, "epochs": 2, "model": "schnet", "activation": "isilu", "denorm": True, "rescale": True,
          "rescale_factor": 1e4, "seed": 0}


@pytest.mark.parametrize("trainable", [dcnn_trainable, DCNNTrainable], ids=["function", "class"])
@pytest.mark.parametrize("api", ["tune.run", "Tuner"])
def test_trainable_runs_under_both_apis(trainable, api, ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = {**CONFIG, "dataset": "data/ethanol-gfn2-500K.npz"}  # relative to the driver's directory
    if api == "tune.run":
        analysis = tune.run(trainable, config=config, storage_path=str(tmp_path), verbose=0,
                            resources_per_trial={"cpu": 1})
        results = [t.last_result for t in analysis.trials]
    else:
        # (no tune.with_resources here: on a function it sets an attribute on the function object
        # itself, which later tune.run(resources_per_trial=...) calls of the same function reject)
        grid = tune.Tuner(trainable, param_space=config,
                          run_config=tune.RunConfig(storage_path=str(tmp_path), name="t", verbose=0)).fit()
        assert not grid.errors
        results = [r.metrics for r in grid]
    (r,) = results
    assert r["epoch"] == 2 and r["diverged"] == 0 and r["test_force_loss"] > 0
    assert r["device"] == "cpu" and r["node_id"] and r["reported_at"] >= r["started_at"]


def _logger(uri, name, tmp_path):
    exp = tracking.ensure_experiment(uri, name, tmp_path / "art")
    parent = tracking.ensure_parent_run(uri, exp, name, {})
    return exp, tracking.MLflowStudyLogger(uri, exp, parent, name)


def test_retried_trial_continues_its_own_mlflow_run(ray_session, tracking_uri, tmp_path):
    # defined here so Ray pickles the class by value (workers cannot import test modules)
    class FailsOnceTrainable(DCNNTrainable):
        """Crashes in its second epoch the first time (a worker failure); Tune retries from the checkpoint."""

        def step(self):
            marker = Path(self.config["marker"])
            if self.trainer.epoch == 1 and not marker.exists():
                marker.write_text("failed once")
                raise RuntimeError("injected failure")
            return super().step()

        def setup(self, config):
            super().setup({k: v for k, v in config.items() if k != "marker"})

    exp, logger = _logger(tracking_uri, "retry", tmp_path)
    grid = tune.Tuner(FailsOnceTrainable, param_space={**CONFIG, "epochs": 3, "marker": str(tmp_path / "m")},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="retry", verbose=0,
                                                callbacks=[logger],
                                                failure_config=tune.FailureConfig(max_failures=1),
                                                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1))).fit()
    assert not grid.errors and (tmp_path / "m").exists()
    c = MlflowClient(tracking_uri)
    runs = [r for r in c.search_runs([exp]) if r.data.tags.get("dcnn.role") == "trial"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted(m.step for m in c.get_metric_history(runs[0].info.run_id, "force_loss"))
    assert steps == [1, 2, 3]  # resumed at epoch 2 from the epoch-1 checkpoint, in the same run


def test_errored_trial_ends_failed_with_the_error(ray_session, tracking_uri, tmp_path):
    exp, logger = _logger(tracking_uri, "errored", tmp_path)
    grid = tune.Tuner(DCNNTrainable, param_space={**CONFIG, "learning_rate": 0.1},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="bad", verbose=0,
                                                callbacks=[logger])).fit()
    assert grid.errors and "unknown config key(s) ['learning_rate']" in str(grid.errors[0])
    (run,) = [r for r in MlflowClient(tracking_uri).search_runs([exp]) if r.data.tags.get("dcnn.role") == "trial"]
    assert run.info.status == "FAILED"
    assert "learning_rate" in run.data.tags.get("error", "")


def test_class_trainable_under_population_based_training(ray_session, tmp_path):
    """PBT clones a better trial's checkpoint into a worse one with a perturbed lr: the lr of the
    restored optimizer must be the new config's, not the checkpoint's."""
    from ray.tune.schedulers import PopulationBasedTraining

    pbt = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=1,
                                  # every exploit resamples an lr that neither starting trial had, so a
                                  # restored optimizer that kept the checkpoint's lr is caught
                                  hyperparam_mutations={"lr": [5e-4, 2e-3]}, resample_probability=1.0,
                                  quantile_fraction=0.5)  # of 2 trials, the worse copies the better
    grid = tune.Tuner(
        DCNNTrainable,
        param_space={**CONFIG, "epochs": 4, "lr_schedule": "constant", "lr": tune.grid_search([1e-4, 3e-3])},
        tune_config=tune.TuneConfig(scheduler=pbt, metric="val_loss", mode="min", reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="pbt", verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1)),
    ).fit()
    assert not grid.errors and len(grid) == 2
    for result in grid:
        assert result.metrics["epoch"] == 4 and result.metrics["diverged"] == 0
        assert result.metrics["lr"] == pytest.approx(result.config["lr"])  # the optimizer runs the config's lr
    assert list((tmp_path / "pbt").glob("pbt_policy_*.txt")), "PBT never exploited a checkpoint"
    assert any(r.config["lr"] in (5e-4, 2e-3) for r in grid)


def _restore_after_checkpoint_deleted(config, root):
    import shutil

    from ray.tune.trainable.trainable import _TrainingResult

    first = DCNNTrainable(config=config)
    for k in range(2):
        first.train()
        (root / f"checkpoint_00000{k}").mkdir()
        first.save_checkpoint(str(root / f"checkpoint_00000{k}"))
    shutil.rmtree(root / "checkpoint_000000")  # the snapshot still names this one
    gone = _TrainingResult(checkpoint=tune.Checkpoint(str(root / "checkpoint_000000")),
                           metrics={"training_iteration": 1})
    resumed = DCNNTrainable(config=config)
    resumed.restore(gone)
    same = all(torch.equal(v, resumed.trainer.model.state_dict()[k])
               for k, v in first.trainer.model.state_dict().items())
    return resumed.trainer.epoch, resumed.iteration, same


def test_class_trainable_restores_the_newest_checkpoint_when_the_named_one_is_gone(ray_session, tmp_path):
    """A driver killed between Tune deleting an old checkpoint (num_to_keep) and snapshotting its state
    leaves a snapshot naming a checkpoint that is gone: the trial must continue from the newer one."""
    import sys

    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the test module
    config = {**CONFIG, "epochs": 4, "dataset": str(ROOT / "data/ethanol-gfn2-500K.npz")}
    run = ray.remote(num_cpus=1)(_restore_after_checkpoint_deleted)  # trainables run in Ray workers
    assert ray.get(run.remote(config, tmp_path)) == (2, 2, True)


def test_study_trainable_is_dcnn_trainable_or_the_subclass_dcnn_trainable_names(monkeypatch):
    """$DCNN_TRAINABLE is how a study runs a subclass of the class trainable (the fault tests' fault injection
    is one): unset, the study runs DCNNTrainable; set, the class it names; a name that does not import, or a
    class that is not a DCNNTrainable (whose checkpoints, records and resume a study relies on), is refused
    with the variable named rather than failing inside Tune."""
    import trainables
    from trainables.dcnn_trainables import DCNNTrainable as Base

    monkeypatch.delenv("DCNN_TRAINABLE", raising=False)
    assert trainables.study_trainable() is Base and trainables.DCNNTrainable is Base
    monkeypatch.setenv("DCNN_TRAINABLE", "fault_trainable:FaultInjectingTrainable")
    from fault_trainable import FaultInjectingTrainable

    assert trainables.study_trainable() is FaultInjectingTrainable and issubclass(FaultInjectingTrainable, Base)
    for bad, says in [("no_such_module:X", "does not import"), ("fault_trainable:Nope", "does not import"),
                      ("fault_trainable", "must name a subclass"), ("ray.tune:Trainable", "must name a subclass")]:
        monkeypatch.setenv("DCNN_TRAINABLE", bad)
        with pytest.raises(ValueError, match=f"DCNN_TRAINABLE='{bad}' {says}"):
            trainables.study_trainable()
