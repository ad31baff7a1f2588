"""Study throughput: where the wall time of a study went, printed at its end and saved beside the report.

Efficiency = Σ trial time / (wall time × concurrent slots), with slots = how many trials Ray could run at
once (CPUs / cpus-per-trial, GPUs / gpus-per-trial, --max-concurrent, number of trials).  Per trial the
overhead is split into actor start (worker process start → its first trial's setup; 0 for a reused
actor), setup (data load +
model build), compile (trace + torch.compile, inside the first epoch) and the rest outside training
epochs (checkpoints, reports, the test evaluation); peak memory per trial says what --gpus-per-trial can
share a GPU.
"""
from __future__ import annotations

import json
import math


def concurrent_slots(resources: dict, cpus_per_trial: float, gpus_per_trial: float,
                     max_concurrent: int | None, n_trials: int) -> int:
    slots = [n_trials, int(resources.get("CPU", 0) // cpus_per_trial) if cpus_per_trial else n_trials]
    if gpus_per_trial:
        slots.append(int(resources.get("GPU", 0) // gpus_per_trial + 1e-9))
    if max_concurrent:
        slots.append(max_concurrent)
    return max(1, min(slots))


def _mean(values):
    v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(v) / len(v) if v else math.nan


def summarize(results, wall_s: float, slots: int, resources: dict, study_start: float | None = None) -> dict:
    """`results`: Tune Results (last metrics + metrics dataframe) of the trials this run saw; each trial's
    time runs from its worker's start (actor start) to its last report, counted from `study_start` (the
    wall clock's own start) at the earliest: Ray may start a worker process before the study does (a
    prestarted worker), and time before the wall clock started is not the study's, or efficiency could
    exceed 1.  Trials whose last report came before `study_start` (finished by an earlier driver, then
    resumed) did not run in this wall time and are left out (counted as `earlier_trials`); of a trial restored
    from its checkpoint, only the epochs its new worker ran (reported at or after its `started_at`) count, or
    the epochs before the restore would outweigh the trial's time here and its `other_s` turn negative."""
    trials, earlier = [], 0
    for r in results:
        m = r.metrics or {}
        if not m or "reported_at" not in m:
            continue
        reported, started = float(m["reported_at"]), float(m["started_at"])
        if study_start is not None and reported < study_start:
            earlier += 1
            continue
        df = r.metrics_dataframe
        if df is not None and "reported_at" in df:
            df = df[df["reported_at"] >= started]
        epochs = float(df["epoch_time_s"].sum()) if df is not None and "epoch_time_s" in df else math.nan
        actor = float(m.get("actor_start_s", 0.0))
        if study_start is not None:
            actor = max(0.0, min(actor, started - study_start))
        total = reported - started + actor
        compile_s = float(m.get("compile_s", 0.0) or 0.0)
        setup_s = float(m.get("setup_s", math.nan))
        trials.append({"trial_id": m.get("trial_id"), "time_s": total, "actor_start_s": actor, "setup_s": setup_s,
                       "compile_s": compile_s, "train_s": epochs - compile_s,
                       "other_s": total - epochs - actor - setup_s,
                       "compiled": m.get("compiled"), "compile_warm_cache": m.get("compile_warm_cache"),
                       "peak_rss_mib": m.get("peak_rss_mib", math.nan),
                       "peak_cuda_mib": m.get("peak_cuda_mib", math.nan)})
    sum_trial = sum(t["time_s"] for t in trials)
    out = {"wall_s": wall_s, "trials": len(trials), "earlier_trials": earlier, "sum_trial_s": sum_trial, "slots": slots,
           "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0),
           "efficiency": sum_trial / (wall_s * slots) if wall_s > 0 else math.nan,
           "compiled_trials": sum(1 for t in trials if t["compiled"]),
           "warm_cache_trials": sum(1 for t in trials if t["compiled"] and t["compile_warm_cache"]),
           "per_trial_mean": {k: _mean(t[k] for t in trials) for k in
                                ("time_s", "actor_start_s", "setup_s", "compile_s", "train_s", "other_s")},
           "peak_rss_mib_max": max((t["peak_rss_mib"] for t in trials), default=math.nan),
           "peak_cuda_mib_max": max((t["peak_cuda_mib"] for t in trials), default=math.nan),
           "per_trial": trials}
    return out


def format_summary(s: dict) -> str:
    med = s["per_trial_mean"]
    gpu = f", peak CUDA {s['peak_cuda_mib_max']:.0f} MiB" if math.isfinite(s["peak_cuda_mib_max"]) else ""
    return "\n".join([
        "## Throughput",
        "",
        f"- wall time {s['wall_s']:.1f} s; {s['trials']} trials, Σ trial time {s['sum_trial_s']:.1f} s; "
        f"{s['slots']} concurrent slot(s) on {s['cpus']:g} CPU / {s['gpus']:g} GPU → efficiency "
        f"{s['efficiency']:.2f} (Σ trial time / (wall × slots))"
        + (f"; this run resumed the study: {s['earlier_trials']} trial(s) finished by an earlier run, and the "
           "epochs restored trials ran before it, are not in this wall time" if s.get("earlier_trials") else ""),
        f"- per trial (mean): {med['time_s']:.1f} s = actor start {med['actor_start_s']:.2f} s + setup "
        f"(data + model) {med['setup_s']:.2f} s + compile {med['compile_s']:.1f} s + training "
        f"{med['train_s']:.1f} s + other (checkpoints, reports, test) {med['other_s']:.2f} s; "
        f"{s['compiled_trials']}/{s['trials']} trials ran compiled"
        + (f" ({s.get('warm_cache_trials', 0)} of them from a warm compile cache)" if s["compiled_trials"] else ""),
        f"- peak memory per trial: RSS {s['peak_rss_mib_max']:.0f} MiB (max over trials){gpu}",
        ""])


def write_summary(study, report_dir: str, s: dict) -> str:
    """Write report/throughput.{json,md} through the study's Storage (a folder or an object store)."""
    text = format_summary(s)
    study.write_text(f"{report_dir}/throughput.json", json.dumps(s, indent=1, default=str))
    study.write_text(f"{report_dir}/throughput.md", text)
    return text
