"""Task family types: what a kind of training run measures and what its "data set" is, declared once so the
trainer, the trainables, MLflow logging and the report need no per-domain branches.

A family declares its data sets (files for molecules, PDE problems for PINNs), the metrics its task's
`evaluate()` returns (name, unit, label, lower-is-better, the baseline a model must beat, the scale above
which a result counts as blown up) and the fixed-weight validation objective `val_loss`.  Only the types and
the rules every family shares live here (imports nothing of the project): each family is defined next to
its task (dcnn/atomistic/family.py, dcnn/pinn/family.py), and dcnn/registry.py is the one place that maps
names to families and tasks and dispatches on them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

__all__ = ["MetricSpec", "TaskFamily", "BLOWUP_FACTOR", "STALL_TOLERANCE", "STALL_EPOCHS"]

# The one divergence rule (trainer, `dcnn-ablate train`, MLflow's `diverged`, the report): a run diverged when
# a loss or test metric is not finite, or when a test error is above BLOWUP_FACTOR × the error of a model
# that outputs zero (molecules: mean |E| and mean |F| of the test split; PINNs: the zero prediction, 1).
# Against zero, not the mean: an energy offset not yet learned is a (bad) result, not a blow-up.
BLOWUP_FACTOR = 10.0
# The stall rule (issue 28): a trial whose training objective (epoch means) moved by less than this relative
# amount from one epoch to the next within the first STALL_EPOCHS epochs of an optimizer's phase stopped
# training there: the optimizer stopped moving (a collapsed initialisation's vanishing gradients at the start; L-BFGS unable to leave
# where Adam left an IReLU net on Burgers, its line search failing on the kinks of IReLU'' in u_xx).  Reported
# as such, never as an arm's effect; the trainer stops the trial there (it would not move again).  A moving
# trial's epoch means differ by far more (Adam, L-BFGS, mini-batch or full-batch: ≥ 1e-4 here).
STALL_TOLERANCE = 1e-6
STALL_EPOCHS = 3


@dataclass(frozen=True)
class MetricSpec:
    """One reported metric. `key` is what `Task.evaluate()` returns (logged per epoch on the validation
    split); `test_<key>` after the last epoch. Units: `unit`, or the data set's units[unit_index]."""

    key: str
    slug: str  # a name for columns and MLflow keys: "energy", "rel_l2"
    short: str  # column prefix in summary.csv and the report ("E", "relL2")
    name: str  # in words: "energy", "relative L2 error"
    stat: str = ""  # what the number is: "MAE", "" (already in the name)
    unit: Optional[str] = None
    unit_index: int = 0
    baseline: Optional[str] = None  # result key of the test baseline, e.g. "test_energy_baseline"
    baseline_label: str = ""  # "predict-mean"
    baseline_row: str = ""  # the baseline in the report table's row label: "mean E"
    error_words: str = ""  # how to say "its error" in a sentence (default: "<name> error")
    blowup_scale: Optional[str] = None  # result key; diverged when test value > BLOWUP_FACTOR × it
    lower_is_better: bool = True
    main: bool = True  # in the report's main table, Findings and plots; else in its second table and the CSVs

    @property
    def test_key(self) -> str:
        return f"test_{self.key}"

    @property
    def error_phrase(self) -> str:
        return self.error_words or f"{self.name} error"

    @property
    def baseline_metric(self) -> str:
        """The MLflow metric name of the test baseline (a data set's label is appended)."""
        return f"baseline_test_{self.slug}" + (f"_{self.stat.lower()}" if self.stat else "")

    def unit_for(self, units) -> str:
        if self.unit is not None:
            return self.unit
        units = tuple(units or ())
        return units[self.unit_index] if self.unit_index < len(units) else ""


@dataclass(frozen=True)
class TaskFamily:
    name: str
    metrics: tuple  # MetricSpec, in report order
    objective: dict  # val_loss = Σ weight · validation metric (fixed weights: comparable across trials)
    train_terms: tuple  # per-epoch training terms a task reports (physical units)
    default_dataset: Callable[[], str]
    resolve_dataset: Callable[..., str]  # (name_or_path, base=None) -> canonical string
    dataset_info: Callable[[str], dict]  # -> {"name", "theory", "units": [..]}
    check_dataset: Callable[[str, dict], None]  # (dataset, settings) -> raises ValueError before compute
    dataset_label: Callable[[str], str]
    model_words: str = ""  # what its models are, and what data they take (a refusal's words)
    data_words: Callable[[], str] = field(default=lambda: "")

    def val_loss(self, metrics: dict) -> float:
        return float(sum(w * metrics[k] for k, w in self.objective.items()))

    def blown_up(self, result) -> bool:
        """Whether a finite test error of `result` (a mapping of result keys: a trainer's test metrics, a
        result.json line, a report row) is above BLOWUP_FACTOR × its zero-output scale."""
        for m in self.metrics:
            if not m.blowup_scale:
                continue
            value, scale = _number(result.get(m.test_key)), _number(result.get(m.blowup_scale))
            if math.isfinite(value) and math.isfinite(scale) and value > BLOWUP_FACTOR * scale:
                return True
        return False

    def diverged(self, result, nonfinite_in_training: bool = False) -> bool:
        """The divergence rule: non-finite during training, a non-finite test metric, or a blow-up."""
        if nonfinite_in_training:
            return True
        if any(not math.isfinite(_number(result.get(m.test_key))) for m in self.metrics if m.main):
            return True  # (secondary metrics may be undefined by design: EFwT outside eV)
        return self.blown_up(result)

    def stalled(self, history) -> bool:
        """The stall rule on a trial's epoch metrics (`train_loss`, and `optimizer` where a trial switches, in
        order): two consecutive epochs among the first STALL_EPOCHS of some optimizer's phase agree to
        STALL_TOLERANCE, relative (its first epoch may still hold the few steps it took before it froze).
        Undecided (False) before a phase's second epoch.  Its limit: an optimizer that converges to 1e-6 within
        its first epochs (an L-BFGS phase after an Adam phase that had already converged) counts as stalled."""
        phases: dict[int, list[float]] = {}
        start = 0
        for i, m in enumerate(history):
            if i and m.get("optimizer") != history[i - 1].get("optimizer"):
                start = i
            phases.setdefault(start, []).append(_number(m.get("train_loss")))
        for losses in phases.values():
            losses = losses[:STALL_EPOCHS]
            if all(math.isfinite(v) for v in losses) and any(
                    abs(b - a) <= STALL_TOLERANCE * max(abs(a), abs(b), 1e-300) for a, b in zip(losses, losses[1:])):
                return True
        return False

    def nonfinite(self, metrics: dict) -> bool:
        """A training epoch's divergence: its loss, a training term or a main validation metric not finite."""
        keys = ["train_loss", *self.train_terms, *(m.key for m in self.metrics if m.main)]
        return any(k in metrics and not math.isfinite(_number(metrics[k])) for k in keys)

    def metric_keys(self) -> tuple:
        """Every per-epoch or final result key of this family worth logging (MLflow)."""
        keys = [m.key for m in self.metrics] + [m.test_key for m in self.metrics]
        keys += [m.baseline for m in self.metrics if m.baseline] + list(self.train_terms)
        return tuple(dict.fromkeys(keys))


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
