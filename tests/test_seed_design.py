"""`seeds: auto` (issue 25): the sequential design's statistics (orchestrator/sequential.py), its error rates
by simulation (benchmarks/seed_design.py, small here), and a real study on Ray that spends seeds only where a
comparison is open, killed between rounds and resumed."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from benchmarks.seed_design import SCENARIOS, holm_rejects, run
from conftest import ROOT, TINY, kill_driver
from orchestrator.cli import build_parser
from orchestrator.sequential import NULL_PATHS, boundaries, decide, replay
from search_spaces import load_study
from search_spaces.seed_design import SeedDesign

DESIGN = SeedDesign()


def test_boundaries_spend_alpha_on_an_independent_null_simulation():
    """The boundaries, calibrated on 10⁶ seeded null paths of the paired t statistic, reject on fresh null
    paths (another generator, σ = 7: the statistic is pivotal) at the spent rate: the total within Monte Carlo
    error of α, and the first looks rarely.  A normal-theory boundary (z quantile) would reject far more at
    n = 3 with 2 degrees of freedom."""
    level = 0.05
    c = np.asarray(boundaries(level, DESIGN.min, DESIGN.max))
    assert np.all(np.isfinite(c)) and np.all(np.diff(c) < 0), c  # decreasing: late looks need less
    rng = np.random.default_rng(12345)
    paths = 200_000
    x = rng.normal(0.3, 7.0, (paths, DESIGN.max)) - 0.3  # any mean-zero σ
    n = np.arange(DESIGN.min, DESIGN.max + 1)
    mean = np.cumsum(x, axis=1)[:, DESIGN.min - 1:] / n
    sd = np.sqrt(np.maximum(np.cumsum(x * x, axis=1)[:, DESIGN.min - 1:] - n * mean * mean, 0) / (n - 1))
    t = np.abs(mean / (sd / np.sqrt(n)))
    crossed = t >= c
    any_cross = crossed.any(axis=1).mean()
    se = math.sqrt(level * (1 - level) / paths)
    assert abs(any_cross - level) < 4 * se, (any_cross, level)
    first = crossed[:, 0].mean()
    assert first < level * (DESIGN.min / DESIGN.max) ** 3 * 1.5, first
    # the same spend with a normal quantile at the first look would reject ~ 6x more often
    from scipy import stats
    z = stats.norm.isf(level * (DESIGN.min / DESIGN.max) ** 3 / 2)
    assert (t[:, 0] >= z).mean() > 5 * first
    # a smaller share of α needs a larger statistic at every look
    assert np.all(np.asarray(boundaries(level / 14, DESIGN.min, DESIGN.max)) > c)
    assert NULL_PATHS >= 10**6


def test_a_look_decides_lower_higher_equivalent_or_leaves_it_open():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, 6)
    assert decide(np.log(0.5) + noise, 0.05, DESIGN).kind == "lower"
    assert decide(np.log(2.0) + noise, 0.05, DESIGN).kind == "higher"
    assert decide(noise, 0.05, DESIGN).kind == "equivalent"  # ±1 % noise around ×1: within ±10 %
    assert decide(rng.normal(0, 0.5, 6), 0.05, DESIGN).kind == "open"
    assert decide(np.log(0.5) + noise[:2], 0.05, DESIGN).kind == "open"  # below the minimum: no look
    same = decide(np.full(4, math.log(0.8)), 0.05, DESIGN)  # identical seeds: the interval is the point
    assert same.kind == "lower" and same.lo == pytest.approx(0.8) and same.hi == pytest.approx(0.8)
    # the interval at a look is the t interval widened to the boundary
    d = np.log(0.7) + rng.normal(0, 0.2, 7)
    look = decide(d, 0.01, DESIGN)
    c = boundaries(0.01, DESIGN.min, DESIGN.max)[7 - DESIGN.min]
    half = c * d.std(ddof=1) / math.sqrt(7)
    assert look.lo == pytest.approx(math.exp(d.mean() - half)) and look.hi == pytest.approx(math.exp(d.mean() + half))


def test_holm_recycling_decides_a_comparison_once_another_frees_its_alpha():
    """B's statistic lies between the boundaries at α/2 and α: alone with an open A it stays open; once A is
    decided (clearly lower) its α passes to B at the same look, which is then decided."""
    n = 6
    lo_c, hi_c = (boundaries(DESIGN.alpha, DESIGN.min, DESIGN.max)[n - DESIGN.min],
                  boundaries(DESIGN.alpha / 2, DESIGN.min, DESIGN.max)[n - DESIGN.min])
    base = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # mean 0, sd known
    unit = base / base.std(ddof=1)
    target_t = (lo_c + hi_c) / 2
    b = 0.1 * unit + target_t * 0.1 / math.sqrt(n)  # t statistic = target_t
    a_open = np.random.default_rng(1).normal(0, 1.0, n)
    a_lower = np.log(0.1) + 0.01 * unit
    open_family = replay({"A": a_open, "B": b}, DESIGN)
    assert open_family["A"].kind == "open" and open_family["B"].kind == "open"
    decided = replay({"A": a_lower, "B": b}, DESIGN)
    assert decided["A"].kind == "lower" and decided["A"].n == DESIGN.min
    assert decided["B"].kind == "higher" and decided["B"].level == DESIGN.alpha


def test_simulated_error_rates_and_seeds_saved():
    """Small version of `python -m benchmarks.seed_design` (the full one, 2,000 studies, in the README):
    no effect anywhere — the family-wise error stays under α; the default study's CGCNN answer — the design
    reaches most of the fixed 10-seed design's decisions with fewer trials, with few errors."""
    null = run("null", 400, DESIGN, seed=1)
    assert null["auto"]["fwer"] <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 400), null
    assert null["auto"]["trials"] == pytest.approx(8 * DESIGN.max)  # nothing decided: every arm to the max
    like = run("seed-plan-cgcnn", 300, DESIGN, seed=2)
    assert like["auto"]["fwer"] <= 0.07, like
    assert like["auto"]["trials"] < 0.9 * like[f"fixed {DESIGN.max}"]["trials"], like
    assert like["auto"]["decided"] >= 0.9 * like[f"fixed {DESIGN.max}"]["decided"], like
    assert like["auto"]["decided"] > 1.5 * like[f"fixed {DESIGN.min}"]["decided"], like
    assert len(SCENARIOS["seed-plan-cgcnn"][0]) == 7


def test_holm_in_the_simulation_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    for _ in range(300):
        p = rng.uniform(0, 0.08, 14) ** rng.uniform(0.5, 2.0)
        assert (holm_rejects(p, 0.05) == multipletests(p, 0.05, method="holm")[0]).all()


def test_seeds_auto_in_yaml_and_on_the_command_line(tmp_path):
    base = {"designs": [{"activation": ["irelu", "isilu"], "denorm": [True], "rescale": [True]}],
            "reference": {"activation": "irelu", "denorm": True, "rescale": True}, "models": ["schnet"]}
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump({**base, "seeds": "auto"}))
    study = load_study(str(path))
    assert study.seed_design == SeedDesign() and study.seeds == list(range(10))
    path.write_text(yaml.safe_dump({**base, "seeds": {"auto": {"min": 2, "max": 5, "margin": 0.2}}}))
    study = load_study(str(path))
    assert study.seed_design == SeedDesign(min=2, max=5, margin=0.2) and study.seeds == [0, 1, 2, 3, 4]
    assert study.with_overrides(seeds=[0, 1]).seed_design is None  # explicit seeds: a fixed design
    assert load_study("seed-plan").with_overrides(seeds="auto").seed_design == SeedDesign()
    for bad, words in (({"auto": {"min": 5, "max": 3}}, "min <= max"), ({"auto": {"margin": 2}}, "margin"),
                       ({"auto": {"n": 3}}, "takes"), ("some", "must be a list")):
        path.write_text(yaml.safe_dump({**base, "seeds": bad}))
        with pytest.raises(ValueError, match=words):
            load_study(str(path))
    args = build_parser().parse_args(["ablate", "--seeds", "auto"])
    assert args.seeds == "auto"
    assert build_parser().parse_args(["ablate", "--seeds", "0,1"]).seeds == [0, 1]


def _cli(args, log_path, wait=True):
    cmd = [sys.executable, "-m", "orchestrator.cli", "ablate", "--address", "local", *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if wait:
        proc.wait(timeout=400)
    return proc


def _finished_trials(exp_dir: Path, running: bool = False) -> list[tuple[str, int]]:
    """(arm, seed) of every trial folder whose result says done.  `running`: the driver is writing the files
    now (Tune's copies are not atomic), so a file caught mid-write counts as not finished yet."""
    out = []
    for params in exp_dir.glob("*/params.json"):
        try:
            lines = [x for x in (params.parent / "result.json").read_text().splitlines() if x.strip()] \
                if (params.parent / "result.json").exists() else []
            if any(json.loads(x).get("done") for x in lines):
                config = json.loads(params.read_text())
                out.append((config["arm"], int(config["seed"])))
        except (OSError, ValueError):
            if not running:
                raise
    return out


def test_auto_seeds_on_ray_killed_between_rounds_and_resumed(tmp_path, tracking_uri):
    """A real study (SchNet on ethanol, 3 arms, `seeds: {auto: {min: 2, max: 4}}`) on in-process Ray with two
    concurrent trials: the driver is SIGKILLed once the first round has finished and more seeds were asked
    for, then resumed.  Then: no (arm, seed) trained twice; each arm's seeds are 0..k−1; an arm whose
    comparisons were all decided stopped at the deciding n, an open one ran to the maximum, the reference as
    far as any arm (an arm may run one seed past its deciding n when the α another comparison freed decided
    it while that seed trained); one FINISHED MLflow run per trial; the report's decisions and the trials it counts."""
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump({
        "designs": [{"activation": ["irelu", "isilu", "original"], "denorm": [True], "rescale": [True]}],
        "reference": {"activation": "irelu", "denorm": True, "rescale": True}, "models": ["schnet"],
        "seeds": {"auto": {"min": 2, "max": 4}}, "fixed": {**TINY, "epochs": 1}}))
    exp_dir = tmp_path / "res" / "auto"
    args = ["--study", path, "--storage", tmp_path / "res", "--tracking-uri", tracking_uri, "--experiment", "auto",
            "--max-concurrent", "2"]
    proc = _cli(args, tmp_path / "first.log", wait=False)
    deadline, killed, before = time.time() + 300, False, 0
    while proc.poll() is None and time.time() < deadline:
        before = len(_finished_trials(exp_dir, running=True))
        if before >= 6 + 1:  # the first round (3 arms × 2 seeds) and one more
            kill_driver(proc)
            killed = True
            break
        time.sleep(0.05)
    log = (tmp_path / "first.log").read_text()
    assert killed or proc.returncode == 0, log[-3000:]
    resumed = _cli([*args, "--resume"], tmp_path / "resumed.log")
    log = (tmp_path / "resumed.log").read_text()
    assert resumed.returncode == 0, log[-3000:]

    done = _finished_trials(exp_dir)
    assert len(done) == len(set(done)), sorted(done)  # nothing trained twice
    seeds: dict = {}
    for arm, seed in done:
        seeds.setdefault(arm, []).append(seed)
    assert set(seeds) == {"irelu+DN+LR", "isilu+DN+LR", "original+DN+LR"}
    for arm, got in seeds.items():
        assert sorted(got) == list(range(len(got))) and 2 <= len(got) <= 4, (arm, got)
    summary = pd.read_csv(exp_dir / "report" / "summary.csv")
    for r in summary[~summary.reference].itertuples():
        kinds = [r.E_decision, r.F_decision]
        n = len(seeds[r.arm])
        if "open" in kinds:
            assert n == 4, (r.arm, kinds, n)
        else:  # decided: no seed after the later of its two deciding looks, but the one that was training
            # when α freed by another comparison decided it at an earlier look
            last = max(r.E_decided_n, r.F_decided_n)
            assert last <= n <= last + 1, (r.arm, kinds, n)
    assert len(seeds["irelu+DN+LR"]) == max(len(v) for v in seeds.values())
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("auto")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("dcnn.role") == "trial" and r.info.status == "FINISHED"]
    assert sorted((r.data.tags["arm"], int(r.data.tags["seed"])) for r in runs) == sorted(done)
    report = (exp_dir / "report" / "report.md").read_text()
    assert "## Seeds spent where questions were open" in report
    assert f"with {len(done)} trials**, against 12 for a fixed design of 4 seeds" in report, report
    assert "decision(E)" in report and "p(E)" not in report
    print(f"killed: {killed} (after {before} finished trials); after --resume {len(done)} trials: "
          + ", ".join(f"{a} {len(v)}" for a, v in seeds.items()) + "; decisions "
          + "; ".join(f"{r.arm}: E {r.E_decision} F {r.F_decision}" for r in summary[~summary.reference].itertuples()))
