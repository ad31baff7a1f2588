"""The study's progress lines (orchestrator/progress.py): the time left they count, and the heartbeat while
trials run long, driven through the callback's own hooks with a clock the test sets."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

from orchestrator.progress import StudyProgress
from orchestrator.tracking import trial_run_name


def config(model: str, seed: int) -> dict:
    return {"model": model, "activation": "irelu", "denorm": True, "rescale": True, "seed": seed}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(cfg: dict, status: str = "RUNNING", **last) -> SimpleNamespace:
    """What the callback reads of Tune's Trial: its status, config and last result."""
    return SimpleNamespace(status=status, config=cfg, last_result=last)


def test_the_time_left_schedules_what_each_trial_has_left_on_the_slots_in_use(capsys):
    a0, a1, a2, b0 = config("schnet", 0), config("schnet", 1), config("schnet", 2), config("cgcnn", 0)
    planned = [(trial_run_name(c), c["model"], epochs) for c, epochs in ((a0, 10), (a1, 10), (a2, 10), (b0, 4))]
    clock = Clock()
    progress = StudyProgress(4, planned=planned, heartbeat_s=300, clock=clock)
    t0, t1 = trial(a0), trial(a1)
    trials = [t0, t1, trial(a2, "PENDING"), trial(b0, "PENDING")]
    progress.on_step_begin(0, trials)
    for epoch in (1, 2):
        progress.on_trial_result(0, trials, t0, {"epoch": epoch, "time_this_iter_s": 5.0})
    progress.on_trial_result(0, trials, t1, {"epoch": 1, "time_this_iter_s": 5.0})
    # trial 0: 8 epochs left, trial 1: 9, trial 2 not started: 10 at SchNet's 5 s; on 2 slots: 40 | 45, then
    # 40 + 50; CGCNN has no epoch yet: not counted, and said so
    assert progress.time_left() == (90.0, {"cgcnn": 1})
    assert capsys.readouterr().out == ""  # no heartbeat before heartbeat_s
    clock.now += 301
    progress.on_trial_result(0, trials, t1, {"epoch": 2, "time_this_iter_s": 7.0})
    line = capsys.readouterr().out.strip()
    assert line == (f"[0/4 · 301 s] running: {trial_run_name(a0)} epoch 2/10, {trial_run_name(a1)} epoch 2/10; "
                    "≈ 1 min 30 s left (not counting 1 cgcnn trial: no epoch of theirs yet)"), line
    # a finished trial leaves the plan and gives its model's epoch time to the trials not started
    t0.status = "TERMINATED"
    t0.last_result = {"epoch": 10, "test_energy_loss": 0.5, "test_force_loss": 0.25}
    progress.on_trial_complete(0, trials, t0)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"[1/4 · 301 s] {trial_run_name(a0)}: test ") and "(epoch 10)" in line
    # trial 1: 8 epochs at its median 6 s = 48; trial 2: 10 at SchNet's 5 s (trial 0's mean epoch) on the 2 slots
    assert line.endswith("; ≈ 0 min 50 s left (not counting 1 cgcnn trial: no epoch of theirs yet)"), line
    assert progress.time_left() == (50.0, {"cgcnn": 1})


def test_without_a_plan_the_lines_say_no_time_left(capsys):
    """A seed design adds trials as its comparisons stay open: there is no plan to count from."""
    clock = Clock()
    progress = StudyProgress(3, label="tune x ", heartbeat_s=60, clock=clock)
    t = trial(config("schnet", 0))
    progress.on_trial_result(0, [t], t, {"epoch": 1, "time_this_iter_s": 2.0})
    clock.now += 61
    progress.on_trial_result(0, [t], t, {"epoch": 2, "time_this_iter_s": 2.0})
    assert capsys.readouterr().out.strip() == f"[tune x 0/3 · 61 s] running: {trial_run_name(t.config)} epoch 2"
    assert progress.time_left() == (None, {})


def test_a_callback_pickled_by_an_earlier_version_still_runs(capsys):
    """Tune pickles its callbacks into `tuner.pkl` when a study starts, and a resumed study runs those: one
    pickled before the time-left attributes existed gets their defaults (no plan: no time claimed)."""
    old = StudyProgress.__new__(StudyProgress)  # what the earlier version's __init__ set, and nothing else
    old.__dict__.update(total=2, label="", done=0, t0=0.0, _counted=False)
    restored = pickle.loads(pickle.dumps(old))
    restored.setup()  # Tune's call when the resumed run starts
    t = trial(config("schnet", 0), "TERMINATED", epoch=3, test_energy_loss=0.5, test_force_loss=0.25)
    restored.on_trial_complete(0, [t], t)
    assert capsys.readouterr().out.startswith(f"[1/2 · 0 s] {trial_run_name(t.config)}: test ")
