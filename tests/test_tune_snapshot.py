"""Tune's experiment snapshot made safe to resume (orchestrator/tune_snapshot.py), on real Tune runs of a
tiny class trainable: a cut-off snapshot comes back from the kept copy (or is refused, nothing changed),
and a STOP decision left cached for a trial of the stopped driver no longer ends it early; trials that never
started are counted, not warned of as FileNotFoundErrors, when Tune restores the study."""
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import pytest
from ray import cloudpickle, tune

from orchestrator.progress import StudyProgress
from orchestrator.storage import Storage
from orchestrator.tune_snapshot import (KEPT_FILE, SnapshotKeeper, UnstartedTrials, counting_unstarted_trials,
                                        is_whole, prepare_resume)

ITERATIONS = 4
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/


class Counter(tune.Trainable):
    """Counts iterations, checkpoints each; raises at iteration `fail_at` while the file `marker` exists."""

    def setup(self, config):
        self.i = 0

    def step(self):
        self.i += 1
        marker = Path(self.config["marker"])
        if self.i == self.config["fail_at"] and marker.exists():
            raise RuntimeError("injected failure")
        return {"i": self.i, "done": self.i >= ITERATIONS}

    def save_checkpoint(self, checkpoint_dir):
        Path(checkpoint_dir, "i").write_text(str(self.i))

    def load_checkpoint(self, checkpoint_dir):
        self.i = int(Path(checkpoint_dir, "i").read_text())


def _first_run(tmp_path) -> Storage:
    """Two trials; trial 1 fails at iteration 2 (after checkpoint 1) and ends ERROR."""
    marker = tmp_path / "fail"
    marker.touch()
    experiment = Storage.resolve(str(tmp_path / "results")) / "snap"
    tuner = tune.Tuner(
        Counter, param_space={"marker": str(marker), "fail_at": tune.grid_search([99, 2])},
        run_config=tune.RunConfig(name="snap", storage_path=str(tmp_path / "results"), verbose=0,
                                  callbacks=[SnapshotKeeper(experiment, every_s=0.0)],
                                  checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=1)))
    grid = tuner.fit()
    assert grid.num_errors == 1
    marker.unlink()
    return experiment


def _resume(experiment: Storage) -> dict:
    grid = tune.Tuner.restore(experiment.path, trainable=Counter, resume_unfinished=True,
                              resume_errored=True).fit()
    return {r.config["fail_at"]: r.metrics["i"] for r in grid}


def _state_file(experiment: Storage) -> str:
    (name,) = experiment.glob("experiment_state-*.json")
    return name


def test_a_cut_off_snapshot_comes_back_from_the_kept_copy(ray_session, tmp_path):
    experiment = _first_run(tmp_path)
    assert experiment.is_file(KEPT_FILE)
    name = _state_file(experiment)
    whole = experiment.read_bytes(name)
    (Path(experiment.path) / name).write_bytes(whole[: len(whole) // 2])  # what a full disk leaves
    assert not is_whole(experiment.read_bytes(name))
    notes = prepare_resume(experiment)
    assert len(notes) == 1 and f"was cut off ({name}; a full disk?)" in notes[0], notes
    assert is_whole(experiment.read_bytes(name))
    assert _resume(experiment) == {99: ITERATIONS, 2: ITERATIONS}  # the errored trial resumed, none restarted
    trial_dirs = [p for p in Path(experiment.path).iterdir() if p.name.startswith("Counter_")]
    assert len(trial_dirs) == 2  # Tune did not start the study again beside the old trials


def test_a_cut_off_snapshot_without_a_kept_copy_is_refused_unchanged(ray_session, tmp_path):
    experiment = _first_run(tmp_path)
    experiment.delete(KEPT_FILE)
    name = _state_file(experiment)
    (Path(experiment.path) / name).write_bytes(b'{"trial_data": [["{\\n  \\"stub')
    before = {f: experiment.read_bytes(f) for f in experiment.files()}
    with pytest.raises(ValueError, match=rf"--resume: Tune's record .* is cut off \({name}; .*new --experiment"):
        prepare_resume(experiment)
    assert {f: experiment.read_bytes(f) for f in experiment.files()} == before


def test_a_decision_cached_by_the_stopped_driver_is_dropped(ray_session, tmp_path):
    """What the disk-full study left (measured): the errored trial's id → STOP in the runner state.
    Resumed as is, Tune stops that trial after its first new checkpoint; dropped, it runs to the end."""
    experiment = _first_run(tmp_path)
    name = _state_file(experiment)
    state = json.loads(experiment.read_bytes(name))
    errored = [json.loads(t)["trial_id"] for t, _ in state["trial_data"] if json.loads(t)["status"] == "ERROR"]
    state["runner_data"]["_cached_trial_decisions"] = {errored[0]: "STOP"}
    experiment.write_text(name, json.dumps(state))
    notes = prepare_resume(experiment)
    assert len(notes) == 1 and errored[0] in notes[0] and "STOP" in notes[0], notes
    assert json.loads(experiment.read_bytes(name))["runner_data"]["_cached_trial_decisions"] == {}
    assert _resume(experiment) == {99: ITERATIONS, 2: ITERATIONS}
    assert prepare_resume(experiment) == []  # nothing left to repair


class AfterFirstTrial(tune.Stopper):
    """Stops the whole experiment at the first result of the trial after one that finished (so the finished one
    was seen complete), while the file `armed` exists (the restored experiment keeps this stopper)."""

    def __init__(self, armed: Path):
        self.armed, self.finished, self.next_started = armed, set(), False

    def __call__(self, trial_id, result):
        if result.get("done"):
            self.finished.add(trial_id)
        elif self.finished and trial_id not in self.finished:
            self.next_started = True
        return False

    def stop_all(self):
        return self.next_started and self.armed.exists()


def test_a_resumed_study_counts_unstarted_trials_and_its_progress_goes_on(ray_session, tmp_path, capsys):
    """Three trials, one slot, the experiment stopped after the first, the unfinished ones set back to PENDING in
    Tune's record as a stopped driver leaves them (`mlearn-angular`, stopped with 4 trials waiting for a slot:
    Tune's restore warned "Failed to fetch metrics for 4 trial(s) ... FileNotFoundError"). Under
    `counting_unstarted_trials` that warning becomes a count of them; they then run whole, and the progress
    lines (Tune restores the first run's `StudyProgress`) go on from 2/3 with the resumed run's own clock."""
    armed = tmp_path / "armed"
    armed.touch()
    tune.Tuner(  # one slot: each trial takes the session's 2 CPUs
        tune.with_resources(Counter, {"cpu": 2}),
        param_space={"marker": str(tmp_path / "no-fail"), "fail_at": 99, "model": "schnet",
                     "seed": tune.grid_search([0, 1, 2])},
        run_config=tune.RunConfig(name="pending", storage_path=str(tmp_path / "results"), verbose=0,
                                  stop=AfterFirstTrial(armed), callbacks=[StudyProgress(3)])).fit()
    armed.unlink()
    first = capsys.readouterr().out
    assert re.findall(r"^\[(\d)/3 · ", first, re.M) == ["1"], first
    experiment = Storage.resolve(str(tmp_path / "results")) / "pending"
    for name in experiment.glob("experiment_state-*.json"):
        state = json.loads(experiment.read_bytes(name))
        rows = []
        for trial_json, runtime in state["trial_data"]:
            trial = json.loads(trial_json)
            results = experiment.glob(f"*{trial['trial_id']}*/result.json")
            if not results or '"done": true' not in experiment.read_bytes(results[0]).decode():
                trial["status"] = "PENDING"
            rows.append([json.dumps(trial), runtime])
        state["trial_data"] = rows
        experiment.write_text(name, json.dumps(state))
    time.sleep(3)  # the resumed run's clock starts after this
    ray_logger = logging.getLogger(UnstartedTrials.LOGGER)  # Ray's loggers do not propagate: listen on it
    seen = []
    listener = logging.Handler(logging.WARNING)
    listener.emit = lambda record: seen.append(record.getMessage())
    ray_logger.addHandler(listener)
    resumed_at = time.time()
    try:
        with counting_unstarted_trials() as unstarted:
            tuner = tune.Tuner.restore(experiment.path, trainable=tune.with_resources(Counter, {"cpu": 2}),
                                       resume_unfinished=True, resume_errored=True)
            ray_logger.warning("Failed to fetch metrics for 1 trial(s):\n- T_1: ValueError('bad json')")
    finally:
        ray_logger.removeHandler(listener)
    assert not any("FileNotFoundError" in m for m in seen), seen
    assert any("ValueError('bad json')" in m for m in seen)  # a warning of any other error passes
    assert unstarted.count == 1  # the first trial finished, the second had started, the third had not
    assert {r.config["seed"]: r.metrics["i"] for r in tuner.fit()} == {0: ITERATIONS, 1: ITERATIONS, 2: ITERATIONS}
    lines = re.findall(r"^\[(\d)/3 · (\d+) s\]", capsys.readouterr().out, re.M)
    assert [done for done, _ in lines] == ["2", "3"], lines
    assert all(int(elapsed) <= time.time() - resumed_at + 1 for _, elapsed in lines), lines


def test_whole_means_parses_to_the_end():
    import pickle

    blob = pickle.dumps({"a": list(range(100))}, protocol=5)
    assert is_whole(blob) and is_whole(b'{"a": 1}')
    assert not any(is_whole(b) for b in (blob[:-1], blob[:10], b'{"a": 1', b"", b"\x00" * 4096))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail ENOSPC)")
def test_a_failed_write_keeps_the_previous_file(tmp_path):
    """Storage.write_bytes when the disk is full (its temporary file is /dev/full, whose every write fails
    with ENOSPC): the previous file intact, no temporary left behind."""
    folder = Storage.resolve(str(tmp_path))
    folder.write_text("kept.json", '{"v": 1}')
    os.symlink("/dev/full", tmp_path / "kept.json.tmp")
    with pytest.raises(OSError, match="No space left"):
        folder.write_text("kept.json", '{"v": 2}' * 100_000)
    assert (tmp_path / "kept.json").read_text() == '{"v": 1}' and os.listdir(tmp_path) == ["kept.json"]


def test_the_kept_copy_is_never_in_the_resumed_drivers_staging_folder(ray_session, tmp_path):
    """Tune's restore downloads every root *.json and *.pkl into the new driver's staging folder and copies them
    back over the stored ones at every sync; the kept copy must not be among them (a kill during such a copy
    emptied one named .dcnn-tune-snapshot.json together with the state files it was to restore)."""
    import ray

    experiment = _first_run(tmp_path)
    assert _resume(experiment) == {99: ITERATIONS, 2: ITERATIONS}
    session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
    staged = [p for p in session.glob("artifacts/*/snap/driver_artifacts") if p.is_dir()]
    assert staged and any(staged[-1].glob("experiment_state-*.json"))  # the folder Tune syncs from
    assert not any((s / KEPT_FILE).exists() for s in staged)


def test_a_temporary_file_tune_left_mid_write_is_not_its_record(ray_session, tmp_path):
    """Tune's background sync can copy a searcher state's temporary `.<uuid>-tmp-<name>` (renamed a moment
    later in the staging folder) into the experiment folder, cut off (seen in CI after a resumed study). It is
    not part of Tune's record: the resume neither refuses nor repairs for it, and the resumed driver (whose
    staging folder Tune fills with every root *.json, this one too) still keeps its copy of the snapshot."""
    import uuid

    experiment = _first_run(tmp_path)
    (name,) = experiment.glob("basic-variant-state-*.json")
    leftover = f".{uuid.uuid4()}-tmp-{name}"
    (Path(experiment.path) / leftover).write_bytes(experiment.read_bytes(name)[:100])
    kept_before = experiment.read_bytes(KEPT_FILE)
    assert prepare_resume(experiment) == []
    assert _resume(experiment) == {99: ITERATIONS, 2: ITERATIONS}
    kept = json.loads(experiment.read_bytes(KEPT_FILE))
    assert experiment.read_bytes(KEPT_FILE) != kept_before and leftover not in kept["files"]
    assert prepare_resume(experiment) == []
