"""Task families: what a kind of training run measures and what its "data set" is, declared once so the
trainer, the trainables, MLflow logging and the report need no per-domain branches.

A family names its models, its data sets (files for molecules, PDE problems for PINNs), the metrics its
task's `evaluate()` returns (name, unit, label, lower-is-better, the baseline a model must beat, the
scale above which a result counts as blown up) and the fixed-weight validation objective `val_loss`.
Light on imports: the task classes themselves live in dcnn.tasks and dcnn.pinn.task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

__all__ = ["MetricSpec", "TaskFamily", "FAMILIES", "family_of", "family_of_config", "BLOWUP_FACTOR"]

# The one divergence rule (trainer, `dcnn-ablate train`, MLflow's `diverged`, the report): a run diverged when
# a loss or test metric is not finite, or when a test error is above BLOWUP_FACTOR × the error of a model
# that outputs zero (molecules: mean |E| and mean |F| of the test split; PINNs: the zero prediction, 1).
# Against zero, not the mean: an energy offset not yet learned is a (bad) result, not a blow-up.
BLOWUP_FACTOR = 10.0


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
    models: tuple = field(default=())

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
        if any(not math.isfinite(_number(result.get(m.test_key))) for m in self.metrics):
            return True
        return self.blown_up(result)

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


# -- molecules ---------------------------------------------------------------------------------------
def _mol_default() -> str:
    from dcnn.data import DEFAULT_DATASET

    return str(DEFAULT_DATASET)


def _mol_resolve(name, base=None) -> str:
    from dcnn.data import resolve_dataset

    return str(resolve_dataset(name, base))


def _mol_info(path: str) -> dict:
    from dcnn.data import load_dataset

    ds = load_dataset(path)
    return {"name": ds.name, "theory": ds.theory, "units": [ds.energy_unit, ds.force_unit]}


def _mol_check(path: str, settings: dict) -> None:
    from dcnn.data import load_dataset
    from dcnn.models import MAX_Z

    load_dataset(path, max_z=MAX_Z)  # DatasetError names the file and the problem


def _mol_label(path: str) -> str:
    from dcnn.data import BUNDLED_DATASETS

    bundled = {str(p): name for name, p in BUNDLED_DATASETS.items()}
    return bundled.get(str(path), Path(str(path)).stem)


MOLECULE = TaskFamily(
    name="molecule",
    metrics=(MetricSpec("energy_loss", "energy", "E", "energy", "MAE", unit_index=0, baseline="test_energy_baseline",
                        baseline_label="predict-mean", baseline_row="mean E", blowup_scale="test_energy_scale"),
             MetricSpec("force_loss", "force", "F", "force", "MAE", unit_index=1, baseline="test_force_baseline",
                        baseline_label="predict-zero", baseline_row="zero F", blowup_scale="test_force_baseline")),
    # the paper's β = 30, fixed: comparable across trials even when force_weight itself is tuned
    objective={"energy_loss": 1.0, "force_loss": 30.0},
    train_terms=("train_energy_loss", "train_force_loss"),
    default_dataset=_mol_default, resolve_dataset=_mol_resolve, dataset_info=_mol_info,
    check_dataset=_mol_check, dataset_label=_mol_label)


# -- PINNs -------------------------------------------------------------------------------------------
def _pinn_resolve(name, base=None) -> str:
    from dcnn.pinn.problems import get_problem

    return get_problem(str(name)).name


def _pinn_info(name: str) -> dict:
    from dcnn.pinn.problems import get_problem

    p = get_problem(name)
    return {"name": p.name, "theory": p.title, "units": ["u", "u/t"]}


def _pinn_check(name: str, settings: dict) -> None:
    """The problem exists, and its reference is computed (and cached) now, before any trial starts."""
    from dcnn.pinn.problems import get_problem

    get_problem(name).reference()


PINN = TaskFamily(
    name="pinn",
    # relative L2 over the whole reference grid (DeepXDE's l2_relative_error); nRMSE as PDEBench: RMSE
    # over space divided by the reference's RMS, per time step and field, averaged; RMSE of the final time
    # step; RMS of the PDE residual at held-out Sobol points. Baseline: the zero prediction (1 and 1).
    metrics=(MetricSpec("rel_l2", "rel_l2", "relL2", "relative L2", unit="", baseline="test_rel_l2_baseline",
                        baseline_label="predict-zero", baseline_row="zero u", blowup_scale="test_rel_l2_baseline",
                        error_words="relative L2 error"),
             MetricSpec("nrmse", "nrmse", "nRMSE", "nRMSE", unit="", baseline="test_nrmse_baseline",
                        baseline_label="predict-zero", baseline_row="zero u", error_words="nRMSE"),
             MetricSpec("rmse_last", "rmse_last", "RMSE_T", "final-time RMSE", unit_index=0,
                        error_words="final-time RMSE", main=False),
             MetricSpec("residual", "residual", "res", "PDE residual", "RMS", unit_index=1,
                        error_words="PDE residual", main=False)),
    objective={"rel_l2": 1.0},
    train_terms=("train_pde_loss", "train_ic_loss", "train_bc_loss"),
    default_dataset=lambda: "burgers", resolve_dataset=_pinn_resolve, dataset_info=_pinn_info,
    check_dataset=_pinn_check, dataset_label=lambda name: str(name), models=("fcn",))

FAMILIES = {"molecule": MOLECULE, "pinn": PINN}


def family_of(model: str) -> TaskFamily:
    """The family a model belongs to (molecule unless a family lists it)."""
    for fam in FAMILIES.values():
        if model in fam.models:
            return fam
    return MOLECULE


def family_of_config(config: dict) -> TaskFamily:
    return family_of(str(config.get("model", "")))


def nan_metrics(family: TaskFamily) -> dict:
    return {m.key: math.nan for m in family.metrics}
