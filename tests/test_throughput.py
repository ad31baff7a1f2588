"""The study's throughput accounting (orchestrator/throughput.py) on trial records with known times."""
from types import SimpleNamespace

import pandas as pd
import pytest

from orchestrator.throughput import summarize


def _result(started, reported, actor, epochs=(1.0, 1.0), setup=0.5):
    metrics = {"trial_id": f"t{started}", "started_at": started, "reported_at": reported, "actor_start_s": actor,
               "setup_s": setup, "compile_s": 0.0, "compiled": 0}
    return SimpleNamespace(metrics=metrics, metrics_dataframe=pd.DataFrame({"epoch_time_s": list(epochs)}))


def test_time_before_the_study_started_is_not_the_studys():
    """Two slots; Ray started both worker processes 30 s before the study's wall clock (prestarted at
    ray.init): their trials count from the study's start, so efficiency is 1 when both slots were busy the
    whole time, not (30 + 10) / 10 = 4."""
    t0 = 1000.0
    results = [_result(t0 + 0.5, t0 + 10.0, actor=30.5), _result(t0 + 0.2, t0 + 10.0, actor=30.2)]
    s = summarize(results, wall_s=10.0, slots=2, resources={"CPU": 2}, study_start=t0)
    assert s["sum_trial_s"] == pytest.approx(20.0) and s["efficiency"] == pytest.approx(1.0)
    assert [t["actor_start_s"] for t in s["per_trial"]] == pytest.approx([0.5, 0.2])
    unclipped = summarize(results, wall_s=10.0, slots=2, resources={"CPU": 2})
    assert unclipped["efficiency"] > 3  # what the old accounting said


def test_trials_finished_by_an_earlier_driver_are_left_out_of_a_resumed_run():
    t0 = 5000.0
    done_before = _result(100.0, 200.0, actor=1.0)
    resumed = _result(t0 + 1.0, t0 + 6.0, actor=1.0)
    s = summarize([done_before, resumed], wall_s=6.0, slots=1, resources={"CPU": 1}, study_start=t0)
    assert s["trials"] == 1 and s["sum_trial_s"] == pytest.approx(6.0) and s["efficiency"] == pytest.approx(1.0)
