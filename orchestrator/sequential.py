"""The statistics of `seeds: auto` (search_spaces/seed_design.py): when is a comparison with the reference
decided, with a family-wise error that survives looking after every added seed.

The design, and why each part:
- **The statistic** is the report's (orchestrator/report_stats.py): the paired log-ratio d_s = log(arm_s) −
  log(ref_s) over the seeds both finished without diverging or stalling, in seed order, and its t statistic.
- **Looks** at every n from `min` to `max` pairs (information fraction n / max).  Each look of a comparison
  has a repeated confidence interval mean(d) ± c_n · sd(d)/√n: *lower* when it lies below 0, *higher* when
  above, *equivalent* when inside ±log(1 + margin) (two one-sided tests at the same boundary).
- **Boundaries c_n** spend α by the power family α·t³ (Kim & DeMets, Biometrika 74, 149 (1987)): little at the
  first looks, where 2–4 degrees of freedom make a t boundary huge anyway, so the last look's boundary stays
  close to a single test's (level 0.05/14: 4.4 at n = 10 against 3.9 for one look) and the design reaches
  the fixed 10-seed design's decisions; a ×15 effect is still decided at 4–5 seeds.  Measured against
  Pocock-type α·ln(1 + (e − 1)t) and α·t² by simulation (benchmarks/seed_design.py, 2,000 studies per
  scenario): the same error rates and trials, fewer of the fixed design's decisions reached (0.40 and 0.66
  of studies against 0.77 on the default study's CGCNN answer).  They are calibrated on the exact null
  distribution of the sequence of t statistics, which does not depend on σ when log errors are normal (the
  t statistic is pivotal): 10⁶ seeded simulated paths, so a look at n = 3 (2 degrees of freedom) is as valid
  as one at 10, which the usual normal-theory boundaries (for known variance) are not.  Where a spend is
  below one path in 10⁶ the look rejects nothing (conservative).  Equivalence uses the two-sided boundary
  for each one-sided test, so its error is at most α/2 (conservative).
- **Many comparisons** (arms × metrics of one data set and model): Holm's procedure carried into the group
  sequential setting (Maurer & Bretz, Stat. Biopharm. Res. 5, 311 (2013), graphical approach with Holm's
  weights): each open comparison is tested at α / (number still open); a decided one hands its α to the rest,
  which are tested again at the same look with their larger share.  A comparison's two nulls (no difference;
  a difference of at least the margin) cannot both be true, so both are tested at its share.
- **Replay**: decisions are a function of the data alone: looks are replayed n = min, min + 1, ... on each
  comparison's first n pairs, so the searcher that spends the seeds and the report that explains them agree
  whatever order trials finished in, and a seed finished later never undoes a decision.

No maintained Python library does group-sequential boundaries for t statistics with Holm's recycling (the
maintained implementations are R's gsDesign, ldbounds, gMCP); scipy and numpy carry the numerics.
`benchmarks/seed_design.py` measures the error rates and the seeds saved by simulation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from search_spaces.seed_design import SeedDesign

__all__ = ["Decision", "boundaries", "decide", "replay", "comparisons", "design_decisions", "NULL_PATHS"]

NULL_PATHS = 1_000_000  # simulated null paths per (min, max): boundary tail probabilities to ~1 path in 10⁶
_NULL_SEED = 20_131_311  # fixed: the boundaries are a deterministic function of (level, min, max)


@dataclass(frozen=True)
class Decision:
    kind: str  # lower | higher | equivalent | open
    n: int  # pairs at the deciding look (open: pairs so far)
    level: float  # the comparison's share of α at that look (Holm's recycling)
    ratio: float = math.nan  # geometric-mean ratio arm / reference at that look
    lo: float = math.nan  # repeated confidence interval of the ratio at that look
    hi: float = math.nan


SPENDING_POWER = 3  # α·t^ρ: Kim & DeMets' power family (module docstring: why 3)


def spending(t: np.ndarray, alpha: float) -> np.ndarray:
    """α spent by information fraction t (Kim & DeMets' power family, ρ = SPENDING_POWER)."""
    return alpha * np.asarray(t, dtype=float) ** SPENDING_POWER


@lru_cache(maxsize=8)
def _null_t_paths(n_min: int, n_max: int) -> np.ndarray:
    """|t| of the paired t statistic at n = n_min..n_max pairs on NULL_PATHS paths of N(0, 1) differences
    (float32 [paths, looks]); pivotal, so valid for any σ."""
    rng = np.random.default_rng(_NULL_SEED)
    out = np.empty((NULL_PATHS, n_max - n_min + 1), dtype=np.float32)
    chunk = 200_000
    for start in range(0, NULL_PATHS, chunk):
        x = rng.standard_normal((min(chunk, NULL_PATHS - start), n_max))
        s1, s2 = np.cumsum(x, axis=1)[:, n_min - 1:], np.cumsum(x * x, axis=1)[:, n_min - 1:]
        n = np.arange(n_min, n_max + 1, dtype=float)
        mean = s1 / n
        var = np.maximum(s2 - n * mean * mean, 0.0) / (n - 1)
        out[start:start + len(x)] = np.abs(mean) / np.sqrt(var / n)
    return out


@lru_cache(maxsize=512)
def boundaries(level: float, n_min: int, n_max: int) -> tuple[float, ...]:
    """c_n for n = n_min..n_max: the |t| above which a look rejects, spending `level` (two-sided) over the
    looks by `spending`; inf where the look's spend is under one simulated path."""
    paths = _null_t_paths(n_min, n_max)
    t = np.arange(n_min, n_max + 1) / n_max
    spend = np.diff(np.concatenate([[0.0], spending(t, level)]))
    alive = np.ones(len(paths), dtype=bool)
    out = []
    for k, s in enumerate(spend):
        count = int(math.floor(s * NULL_PATHS))
        col = paths[:, k]
        values = col[alive]
        if count < 1 or len(values) == 0:
            out.append(math.inf)
            continue
        count = min(count, len(values))
        c = float(np.partition(values, len(values) - count)[len(values) - count])
        out.append(c)
        alive &= col < c
    return tuple(out)


def decide(d: np.ndarray, level: float, design: SeedDesign) -> Decision:
    """The look at n = len(d) pairs (n ≥ design.min): lower / higher / equivalent, or open."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    return _look(float(d.mean()) if n else math.nan, float(d.std(ddof=1)) if n > 1 else math.nan, n, level, design)


def _look(mean: float, sd: float, n: int, level: float, design: SeedDesign) -> Decision:
    if n < design.min:
        return Decision("open", n, level, math.exp(mean) if n else math.nan)
    c = boundaries(level, design.min, design.max)[min(n, design.max) - design.min]
    half = c * sd / math.sqrt(n) if sd > 0 else 0.0  # every seed alike: the interval is the point
    lo, hi = mean - half, mean + half
    bound = math.log1p(design.margin)
    kind = "open"
    if hi < 0:
        kind = "lower"
    elif lo > 0:
        kind = "higher"
    elif -bound < lo and hi < bound:
        kind = "equivalent"
    return Decision(kind, n, level, math.exp(mean), math.exp(lo), math.exp(hi))


def _prefix_stats(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation of d[:n] for n = 1..len(d) (sd NaN at n = 1)."""
    d = np.asarray(d, dtype=float)
    n = np.arange(1, len(d) + 1, dtype=float)
    mean = np.cumsum(d) / n
    # centred on the first value: the running sums stay small, so the difference of sums does not cancel
    x = d - (d[0] if len(d) else 0.0)
    s1, s2 = np.cumsum(x), np.cumsum(x * x)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(s2 - s1 * s1 / n, 0.0) / (n - 1)
    return mean, np.sqrt(var)


def replay(pairs: dict, design: SeedDesign) -> dict:
    """{key: Decision} for one family of comparisons ({key: paired log-ratios in seed order}): looks
    n = min..max replayed, each open comparison at α / (number open), repeated at a look while any
    decision frees α (module docstring)."""
    prefix = {k: _prefix_stats(d) for k, d in pairs.items()}
    decided: dict = {}
    last: dict = {}
    for n in range(design.min, design.max + 1):
        changed = True
        while changed:
            changed = False
            open_ = [k for k in pairs if k not in decided]
            if not open_:
                break
            level = design.alpha / len(open_)
            for k in open_:
                if len(pairs[k]) < n:
                    continue
                mean, sd = prefix[k]
                result = _look(float(mean[n - 1]), float(sd[n - 1]), n, level, design)
                last[k] = result
                if result.kind != "open":
                    decided[k] = result
                    changed = True
    out = {}
    n_open = max(len([x for x in pairs if x not in decided]), 1)
    for k, d in pairs.items():
        if k in decided:
            out[k] = decided[k]
        else:
            look = last.get(k) or decide(d, design.alpha / n_open, design)
            out[k] = Decision("open", len(d), look.level, look.ratio, look.lo, look.hi)
    return out


def paired_log_ratios(arm: pd.DataFrame, ref: pd.DataFrame, metric: str, seeds: list[int]) -> np.ndarray:
    """log(arm) − log(ref) per seed in `seeds` order, over the first seeds both have *finished*: a seed
    either has not finished yet ends the sequence (its look has not happened); a finished seed that
    diverged, stalled or has no positive value in either arm is left out (as the report leaves it out)."""
    a = arm.set_index("seed")
    r = ref.set_index("seed")
    out = []
    for s in seeds:
        if s not in a.index or s not in r.index or not bool(a.at[s, "finished"]) or not bool(r.at[s, "finished"]):
            break
        if not (bool(a.at[s, "ok"]) and bool(r.at[s, "ok"])):
            continue
        x, y = float(a.at[s, metric]), float(r.at[s, metric])
        if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y):
            out.append(math.log(x) - math.log(y))
    return np.asarray(out, dtype=float)


def comparisons(trials: pd.DataFrame, reference_arm: str, metrics: list[tuple[str, str]],
                seeds: list[int]) -> dict:
    """{(data, model): {(arm, short): paired log-ratios}} for every arm but the reference and the
    identical-by-construction twins; `metrics`: (short name, test key) pairs.  `trials` needs data, model,
    arm, seed, finished, ok and the test keys (the report's trials table, or the searcher's)."""
    out: dict = {}
    twins = trials["identical_to"].astype(str) if "identical_to" in trials else pd.Series("", index=trials.index)
    for (data, model), g in trials[twins.isin(["", "nan", "None"])].groupby(["data", "model"], sort=False):
        ref = g[g.arm == reference_arm]
        family = out.setdefault((data, model), {})
        for arm, rows in g[g.arm != reference_arm].groupby("arm", sort=False):
            for short, key in metrics:
                family[(arm, short)] = paired_log_ratios(rows, ref, key, seeds) if key in g else np.array([])
    return out


def design_decisions(trials: pd.DataFrame, reference_arm: str, metrics: list[tuple[str, str]],
                     design: SeedDesign) -> dict:
    """{(data, model, arm, short): Decision} for every comparison of the study."""
    out = {}
    for (data, model), pairs in comparisons(trials, reference_arm, metrics, design.seeds).items():
        for (arm, short), decision in replay(pairs, design).items():
            out[(data, model, arm, short)] = decision
    return out
