"""How long a study would take on this machine, measured before it runs (`dcnn-ablate ablate --estimate`).

Why: a study's wall time is its compute over this machine's speed, and machines sold as the same kind differ
by more than the budgets do: the same `mlearn-angular` study took 3 h 03 min on a 2-core machine whose
one-thread 1024² matmul runs ≈ 70 GFLOP/s and was estimated at 1 h 25 min on one of ≈ 110 (docs/data.md).
A figure in the docs cannot tell a user what a multi-hour study costs on theirs; a few timed epochs can.

Method: every arm of the study on every (model, data set) (the seeds of an arm share its timing: arms differ
in cost, measured on SchNet and Mo: an iSiLU epoch 1.6× an IReLU one, iGELU 1.35×, docs/studies.md), and
every level of a factor of the study's own (a knob such as the batch size or a cutoff), is built as its
first trial builds it (`trainables.train_config_from_tune`, `dcnn.train.Trainer`) and trained for
`WARMUP_EPOCHS` epochs (the first carries the compile, or `compile: auto`'s timed steps), then
`TIMED_EPOCHS` more, timed (and as many of the L-BFGS phase that follows Adam where a config has one),
then evaluated on its test split.  A trial of that arm costs setup + compile + each phase's epochs × its
median timed epoch + the test evaluation, the compile being a warm one: the estimate's own compile of each
arm's graph fills the compile cache the study's trials then find (where it was cold, a second build times
the warm compile, `warm_compile_s`).  The arms are timed as many side by side (in as many worker processes) as
the study will run trials at once here (`time_arms`): concurrent trials share memory bandwidth and caches,
which an arm timed alone does not see.  The trials are then laid out as Tune starts them (in
the study's trial order, each into the first slot that frees) over the concurrent slots the study would have
here (`throughput.concurrent_slots`): the last one's end is the wall time.

What it does not see (said in its output): a few epochs cannot see a shared machine's speed drift (tens of
percent over hours, measured: docs/speed.md); early stopping and the stall rule can end trials sooner
(pinn-seed-plan's IReLU arms stall) and `seeds: auto` can add seeds
(counted at their minimum).  Nothing is recorded: no Ray, no MLflow, no results folder (the compiles do
fill the compile cache, which the study's trials then find warm).
"""
from __future__ import annotations

import heapq
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter

from dcnn.train import Trainer
from orchestrator.throughput import concurrent_slots
import trainables  # its trainables (and Ray) load on first use: here, only when a study is estimated

WARMUP_EPOCHS = 1  # the first epoch compiles (or times eager steps for compile=auto): not a steady epoch
TIMED_EPOCHS = 2


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of jobs started in this order, each into the first of `slots` workers that frees."""
    free = [0.0] * max(1, slots)
    for d in durations:
        heapq.heapreplace(free, free[0] + d)  # the earliest-free worker takes the next job
    return max(free)


def phases(trainer: Trainer) -> list[tuple[str, int, int]]:
    """(optimizer, first epoch, epochs) of each optimizer phase of the trainer's run, as the trainer picks
    each epoch's (`Trainer._optimizer_kind`: Adam, then L-BFGS for the last `lbfgs_epochs`); their epochs cost
    differently (an L-BFGS iteration evaluates the loss again in its line search)."""
    out: list[tuple[str, int, int]] = []
    for epoch in range(trainer.config.epochs):
        kind = trainer._optimizer_kind(epoch)
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1], out[-1][2] + 1)
        else:
            out.append((kind, epoch, 1))
    return out


def time_trial(config: dict, threads: int, log=print) -> dict:
    """Setup, compile and steady epoch time (s) of one trial config on this machine; epochs it would run."""
    values = {**config, "threads": threads}
    t0 = time.perf_counter()
    trainer = Trainer(trainables.train_config_from_tune(values))
    setup = time.perf_counter() - t0
    cfg = trainer.config
    training_s, first, said = 0.0, [], []
    for kind, start, n in phases(trainer):
        trainer.epoch = max(trainer.epoch, start)  # straight to the phase: its optimizer is the epoch's
        n_warm = min(WARMUP_EPOCHS, n) if start == 0 else 0  # the compile (or auto's timing) is in epoch 1
        first += [trainer.run_epoch()["epoch_time_s"] for _ in range(n_warm)]
        timed = [trainer.run_epoch()["epoch_time_s"] for _ in range(min(TIMED_EPOCHS, n - n_warm))]
        epoch_s = statistics.median(timed) if timed else math.nan
        training_s += n * epoch_s if timed else math.nan
        said.append(f"{epoch_s:.2f} s per {kind} epoch × {n}")
    t1 = time.perf_counter()
    trainer.test()  # the test split's evaluation each trial ends with
    test_s = time.perf_counter() - t1
    stats = getattr(trainer.task, "compile_stats", lambda: {})()
    compile_s = float(stats.get("compile_s", 0.0))
    if not math.isfinite(training_s):  # too short to time a steady epoch: its first epochs, less the compile
        training_s = max(sum(first) - compile_s, 0.0) * cfg.epochs / max(len(first), 1)
    warm_s, cold = compile_s, stats.get("compile_warm_cache") == 0
    if cold and stats.get("compiled"):
        warm_s = warm_compile_s(values, compile_s)
    out = {"setup_s": setup, "compile_s": compile_s, "compile_cold": int(cold), "compile_warm_s": warm_s,
           "epoch_s": training_s / cfg.epochs, "epochs": cfg.epochs, "test_s": test_s,
           "compiled": int(stats.get("compiled", 0)), "first_epoch_s": first[0] if first else math.nan,
           "pid": os.getpid()}
    # the study after this estimate finds this arm's graph in the compile cache: its trials compile warm
    out["trial_s"] = setup + warm_s + training_s + test_s
    compiled = (f"compile {compile_s:.1f} s (cold; warm: {warm_s:.1f} s)" if cold else f"compile {compile_s:.1f} s")
    log(f"  {config['model']} {config.get('arm', '')} on "
        f"{config.get('data', os.path.basename(str(config['dataset'])))}: setup "
        f"{setup:.1f} s, {compiled}, {', '.join(said)} → {hms(out['trial_s'])} per trial", flush=True)
    return out


def warm_compile_s(values: dict, cold_s: float) -> float:
    """The compile time of a trial that finds its graph in the compile cache, as the arm's trials will after
    this estimate (DimeNet++ on Mo: 165.5 s cold, 23.2 s warm; docs/studies.md): a second build of
    the same trial, trained until it has compiled (its first epoch).  If that build does not compile (an
    `auto` decision the first build's measured saving changed), the cold time stands, an upper bound."""
    again = Trainer(trainables.train_config_from_tune(values))
    again.run_epoch()
    stats = getattr(again.task, "compile_stats", lambda: {})()
    return float(stats["compile_s"]) if stats.get("compiled") else cold_s


def time_arms(arms: dict[tuple, dict], threads: int, slots: int, log=print) -> dict[tuple, dict]:
    """`time_trial` of each arm's config, `slots` at a time side by side in `slots` worker processes, as the
    study runs its trials (in as many Ray workers, each taking trial after trial: Tune's `reuse_actors`).  Why
    side by side: concurrent trials share the memory bandwidth and the last-level cache, which an arm timed
    alone does not see.  With fewer arms than slots, copies of them keep the other slots busy as the study's
    seeds will (load only: their times are not used).  One slot: timed here, in this process."""
    if slots <= 1:
        return {key: time_trial(cfg, threads, log) for key, cfg in arms.items()}
    keys = list(arms)
    jobs = [(i, arms[k], threads) for i, k in enumerate(keys)]
    jobs += [(-1, arms[keys[i % len(keys)]], threads) for i in range(len(keys), slots)]
    out: dict[tuple, dict] = {}
    # spawn: a fork of a process that already ran torch (or Ray) is not safe
    with multiprocessing.get_context("spawn").Pool(slots) as pool:
        for index, row, lines in pool.imap_unordered(_time_in_process, jobs, chunksize=1):
            if index >= 0:
                for line in lines:
                    log(line, flush=True)
                out[keys[index]] = row
    return {key: out[key] for key in keys}


def _time_in_process(job: tuple[int, dict, int]) -> tuple[int, dict, list[str]]:
    """A worker's job for `time_arms`: (index, measured row, its progress lines), the lines sent back for the
    estimate's own log."""
    index, config, threads = job
    lines: list[str] = []
    row = time_trial(config, threads, lambda line, **kw: lines.append(line))
    return index, row, lines


def estimate_study(study, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                   max_concurrent: int | None = None, log=print) -> dict:
    """Per arm on each model and data set: measured times and trial count; the study's wall time over this
    machine's slots.  With more than one slot the arms are timed in spawned worker processes (`time_arms`):
    a script that calls this guards its own code with `if __name__ == "__main__":`, as multiprocessing's spawn
    start method requires."""
    configs = study.trial_configs()
    slots = concurrent_slots({"CPU": os.cpu_count() or 1}, cpus_per_trial, gpus_per_trial, max_concurrent,
                             len(configs))
    threads = max(1, int(cpus_per_trial))
    own = [f.key for f in study.own_factors]  # knobs an arm varies: shown beside the arm

    def group(cfg: dict) -> tuple:  # an arm on a model and data set: its seeds cost the same
        return (cfg["model"], str(cfg["dataset"]), cfg.get("arm", "")) + tuple((k, cfg.get(k)) for k in own)

    log(f"estimate for study {study.name}: {len(configs)} trials, {slots} at a time on this machine "
        f"({os.cpu_count()} CPUs, {cpus_per_trial:g} per trial); timing one trial of each of its "
        f"{len({group(c) for c in configs})} arms (on each model and data set; {WARMUP_EPOCHS} + {TIMED_EPOCHS} "
        f"epochs each, {min(slots, len(configs))} side by side as the study runs them) …", flush=True)

    arms: dict[tuple, dict] = {}
    for cfg in configs:
        arms.setdefault(group(cfg), cfg)
    measured = time_arms(arms, threads, min(slots, len(configs)), log)
    for key, n in Counter(group(c) for c in configs).items():
        measured[key]["trials"] = n
    durations = [measured[group(c)]["trial_s"] for c in configs]
    wall = makespan(durations, slots)
    return {"study": study.name, "trials": len(configs), "slots": slots, "wall_s": wall,
            "trial_s_total": sum(durations), "seeds_auto": study.seed_design is not None,
            "rows": [{"model": k[0], "dataset": k[1], "arm": k[2], "levels": dict(k[3:]), **v}
                     for k, v in measured.items()]}


def format_estimate(e: dict) -> str:
    lines = [f"## Estimated wall time of {e['study']} on this machine: {hms(e['wall_s'])}",
             "",
             "| model | data set | arm | levels | trials | setup s | compile s | s per epoch (mean) | epochs "
             "| test s | per trial |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in e["rows"]:
        levels = ", ".join(f"{k}={v}" for k, v in r["levels"].items()) or "–"
        lines.append(f"| {r['model']} | {os.path.basename(r['dataset'])} | {r['arm'] or '–'} | {levels} | "
                     f"{r['trials']} | {r['setup_s']:.1f} | {_compile_cell(r)} | {r['epoch_s']:.2f} | "
                     f"{r['epochs']} | {r['test_s']:.1f} | {hms(r['trial_s'])} |")
    lines += ["",
              f"{e['trials']} trials, Σ {hms(e['trial_s_total'])} of trial time over {e['slots']} concurrent "
              f"slot(s). An estimate, not a bound: timed over a few epochs, {e['slots']} arm(s) side by side as the "
              f"study runs them (a shared machine's speed drifts by tens of percent); a Ray worker's start (≈ 6–7 s "
              f"a slot), the checkpoints and records Tune writes (≈ 2 s a trial) and its driver's share of the "
              f"CPUs are not counted; early stopping and the stall rule "
              f"(an optimizer that stopped moving) can end trials sooner"
              + ("; seeds auto counted at their minimum (more seeds run while comparisons stay open)."
                 if e["seeds_auto"] else ".")]
    return "\n".join(lines)


def _compile_cell(row: dict) -> str:
    """The compile a trial pays (warm: the estimate filled the cache), with the cold one it timed."""
    if row.get("compile_cold"):
        return f"{row['compile_warm_s']:.1f} (cold here: {row['compile_s']:.1f})"
    return f"{row['compile_s']:.1f}"


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def main_estimate(opts) -> int:
    """`dcnn-ablate ablate --estimate`: the study validated as for a run, then timed; nothing written."""
    if opts.tune_hparams:
        raise ValueError("--estimate times the seed trials of a study, not --tune-hparams's Optuna trials (their "
                         "count and length depend on ASHA's stops): estimate without --tune-hparams")
    study = opts.validate()
    e = estimate_study(study, opts.cpus_per_trial, opts.gpus_per_trial, opts.max_concurrent)
    print(format_estimate(e), file=sys.stdout, flush=True)
    return 0
