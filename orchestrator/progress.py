"""One line per finished or failed trial, with the study's count and elapsed time.

Tune's own progress tables repeat every trial's config every few seconds; a study wants one line
per trial as it finishes.
"""
from __future__ import annotations

import math
import time

from ray import tune

from dcnn.registry import family_of_config

from orchestrator.tracking import trial_run_name


class StudyProgress(tune.Callback):
    """`[done/total · elapsed s] trial: test metrics` as each trial ends.

    A resumed study runs the callbacks Tune pickled when the study first started (`Tuner.restore` takes the
    run config back from `tuner.pkl`), so the clock and the count are (re)set when each run starts (`setup`)
    and at its first step, from the trials an earlier run finished: the resumed run's lines go on from
    7/12 with its own elapsed time, not from 1/12 with the hours since the study first started."""

    def __init__(self, total: int, label: str = ""):
        self.total, self.label, self.done, self.t0 = total, label, 0, time.time()
        self._counted = False

    def setup(self, **info):
        self.t0, self.done, self._counted = time.time(), 0, False

    def on_step_begin(self, iteration, trials, **info):
        if not self._counted:  # the trials an earlier run of the study finished
            self.done, self._counted = sum(t.status == "TERMINATED" for t in trials), True

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        r = trial.last_result or {}
        # the main metrics always; a secondary one only where the data set defines it (EFwT: eV data only)
        shown = [m for m in family_of_config(trial.config).metrics
                 if m.main or math.isfinite(float(r.get(m.test_key, float("nan"))))]
        status = "DIVERGED" if r.get("diverged") else "test " + ", ".join(
            f"{m.short} {r.get(m.test_key, float('nan')):.4g}" for m in shown)
        if r.get("stalled") and not r.get("diverged"):  # dcnn.families.TaskFamily.stalled
            status = "STALLED (the optimizer stopped moving), " + status
        print(f"[{self.label}{self.done}/{self.total} · {time.time() - self.t0:.0f} s] "
              f"{trial_run_name(trial.config)}: {status} (epoch {r.get('epoch')})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[{self.label}error] {trial_run_name(trial.config)} failed: "
              f"{getattr(trial, 'error_file', '') or 'see the trial folder'}", flush=True)
