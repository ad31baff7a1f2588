"""One line per finished or failed trial, with the study's count, elapsed time and time left; and, while
trials run long without finishing, a line every few minutes of where each stands.

Tune's own progress tables repeat every trial's config every few seconds; a study wants one line
per trial as it finishes.  But a real-DFT study's trials run for half an hour each (`mlearn-angular`:
DimeNet++, 250 epochs of ≈ 6 s), so its first such line would come after 30 minutes of silence: a
heartbeat line (`HEARTBEAT_S` without any line) says which trials run, at which epoch, and how long the
study has left.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Optional

from ray import tune

from dcnn.registry import family_of_config

from orchestrator.estimate import hms, makespan
from orchestrator.tracking import trial_run_name

HEARTBEAT_S = 300.0  # a line at least this often while trials run: a study of short trials prints more often anyway


class StudyProgress(tune.Callback):
    """`[done/total · elapsed s] trial: test metrics; ≈ time left` as each trial ends, and
    `[done/total · elapsed s] running: trial epoch e/E, …; ≈ time left` when `heartbeat_s` passed without a line.

    Time left, given the study's `planned` trials ((name, model, epochs) each, in the order they run): each
    running trial's epochs left at its own median epoch (Tune's `time_this_iter_s`: checkpoints and reports
    included), each trial not started at its model's mean epoch in the trials finished (their first epoch's
    compile included; the median epoch of a running one before any has finished), the lot scheduled on as many
    slots as have run at once (`orchestrator.estimate.makespan`).  A trial that stops early (early stopping, a
    divergence) makes it an over-estimate; trials of a model none of whose epochs has finished yet are named
    and not counted.

    A resumed study runs the callbacks Tune pickled when the study first started (`Tuner.restore` takes the
    run config back from `tuner.pkl`), so the clock and the count are (re)set when each run starts (`setup`)
    and at its first step, from the trials an earlier run finished: the resumed run's lines go on from
    7/12 with its own elapsed time, not from 1/12 with the hours since the study first started."""

    def __init__(self, total: int, label: str = "", planned: Optional[list[tuple[str, str, int]]] = None,
                 heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.time):
        self.total, self.label, self.planned = total, label, planned
        self.heartbeat_s, self.clock = heartbeat_s, clock
        self.setup()

    def __setstate__(self, state):
        """A study started by an earlier version and resumed by this one restores the callback pickled then
        (`tuner.pkl`), without the attributes added since: they take their defaults."""
        self.__dict__.update({"planned": None, "heartbeat_s": HEARTBEAT_S, "clock": time.time, **state})

    def setup(self, **info):
        self.t0 = self.last_line = self.clock()
        self.done, self._counted = 0, False
        self.finished: set[str] = set()
        # running trials: name → (model, epoch, epoch times)
        self.epochs: dict[str, tuple[str, int, list[float]]] = {}
        self.model_epoch_s: dict[str, list[float]] = {}  # every finished trial's mean epoch, by model
        self.slots = 1  # the most trials seen running at once

    def on_step_begin(self, iteration, trials, **info):
        if not self._counted:  # the trials an earlier run of the study finished
            ended = [t for t in trials if t.status == "TERMINATED"]
            self.done, self._counted = len(ended), True
            self.finished.update(trial_run_name(t.config) for t in ended)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.slots = max(self.slots, sum(t.status == "RUNNING" for t in trials))
        name = trial_run_name(trial.config)
        model, _, times = self.epochs.get(name, (trial.config.get("model", ""), 0, []))
        if isinstance(result.get("time_this_iter_s"), (int, float)):
            times.append(float(result["time_this_iter_s"]))
        self.epochs[name] = (model, int(result.get("epoch", result.get("training_iteration", 0)) or 0), times)
        if self.clock() - self.last_line >= self.heartbeat_s:
            running = ", ".join(f"{n} epoch {e}{self._of_epochs(n)}" for n, (_, e, _) in self.epochs.items())
            self._line(f"running: {running}")

    def _of_epochs(self, name: str) -> str:
        planned = {n: epochs for n, _, epochs in self.planned or ()}
        return f"/{planned[name]}" if name in planned else ""

    def time_left(self) -> tuple[Optional[float], dict[str, int]]:
        """(seconds the study has left, {model: trials not counted for want of an epoch time}); None without a
        plan or before any epoch time."""
        if self.planned is None:
            return None, {}
        by_model = {m: statistics.median(v) for m, v in self.model_epoch_s.items()}
        for model, _, times in self.epochs.values():
            if times and model not in by_model:
                by_model[model] = statistics.median(times)
        running, waiting, unknown = [], [], {}
        for name, model, epochs in self.planned:
            if name in self.finished:
                continue
            if name in self.epochs and self.epochs[name][2]:
                _, epoch, times = self.epochs[name]
                running.append(max(epochs - epoch, 0) * statistics.median(times))
            elif model in by_model:
                waiting.append(epochs * by_model[model])
            else:
                unknown[model] = unknown.get(model, 0) + 1
        if unknown and not (running or waiting):
            return None, unknown
        return makespan(running + waiting, self.slots), unknown

    def _left(self) -> str:
        seconds, unknown = self.time_left()
        if seconds is None:
            return ""
        text = f"; ≈ {hms(seconds)} left"
        if unknown:
            text += " (not counting " + ", ".join(f"{n} {m} trial{'s' * (n > 1)}" for m, n in unknown.items()) + \
                    ": no epoch of theirs yet)"
        return text

    def _line(self, text: str) -> None:
        self.last_line = self.clock()
        print(f"[{self.label}{self.done}/{self.total} · {self.last_line - self.t0:.0f} s] {text}{self._left()}",
              flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        name = trial_run_name(trial.config)
        self.finished.add(name)
        model, _, times = self.epochs.pop(name, ("", 0, []))
        if times:  # the mean: a trial not started will pay its first epoch's compile too
            self.model_epoch_s.setdefault(model, []).append(statistics.fmean(times))
        r = trial.last_result or {}
        # the main metrics always; a secondary one only where the data set defines it (EFwT: eV data only)
        shown = [m for m in family_of_config(trial.config).metrics
                 if m.main or math.isfinite(float(r.get(m.test_key, float("nan"))))]
        status = "DIVERGED" if r.get("diverged") else "test " + ", ".join(
            f"{m.short} {r.get(m.test_key, float('nan')):.4g}" for m in shown)
        if r.get("stalled") and not r.get("diverged"):  # dcnn.families.TaskFamily.stalled
            status = "STALLED (the optimizer stopped moving), " + status
        self._line(f"{name}: {status} (epoch {r.get('epoch')})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.epochs.pop(trial_run_name(trial.config), None)
        print(f"[{self.label}error] {trial_run_name(trial.config)} failed: "
              f"{getattr(trial, 'error_file', '') or 'see the trial folder'}", flush=True)
