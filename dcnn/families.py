"""Task families: what a kind of training run measures and what its "data set" is, declared once so the
trainer, the trainables, MLflow logging and the report need no per-domain branches.

A family names its models, its data sets (files for molecules, PDE problems for PINNs), the metrics its
task's `evaluate()` returns (name, unit, label, lower-is-better, the baseline a model must beat, the
scale above which a result counts as blown up) and the fixed-weight validation objective `val_loss`.
Light on imports: the task classes live in dcnn.atomistic.task and dcnn.pinn.task; a family builds its own
(`make_task`), and `dcnn.models.ModelSpec.family` says which family a model belongs to, so this module is
the one place that dispatches on the kind of task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

__all__ = ["MetricSpec", "TaskFamily", "FAMILIES", "ATOMISTIC", "PINN", "family_of", "family_of_config",
           "BLOWUP_FACTOR"]

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
    make_task: Callable = field(default=None)  # (TrainConfig, device) -> the family's Task
    model_words: str = ""  # what its models are, and what data they take (a refusal's words)
    data_words: Callable[[], str] = field(default=lambda: "")

    def resolve(self, name, base=None, model: str = "") -> str:
        """`resolve_dataset`, refusing another family's data by name: a molecule file given to a PINN model,
        or a PDE problem to an interatomic potential, is the wrong kind of data, not a misspelt name."""
        try:
            return self.resolve_dataset(name, base)
        except ValueError:
            for other in FAMILIES.values():
                if other is self:
                    continue
                try:
                    other.resolve_dataset(name, base)
                except ValueError:
                    continue
                raise ValueError(
                    f"data set {str(name)!r} is {other.data_words()}, but model {model!r} is {self.model_words}, "
                    f"which trains on {self.data_words()}; give it such data, or a model of the other kind "
                    f"({', '.join(models_of(other))})") from None
            raise

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


# -- atomistic systems (molecules, slabs, crystals) --------------------------------------------------
def _atoms_default() -> str:
    from dcnn.atomistic.molecules import DEFAULT_DATASET

    return str(DEFAULT_DATASET)


def _atoms_resolve(name, base=None) -> str:
    """An absolute path (trials change directory), keeping a database's `?selection`."""
    from dcnn.atomistic.io import resolve_atoms_source

    path, query = resolve_atoms_source(name, base)
    return str(path) + (f"?{query}" if query else "")


def _atoms_info(path: str) -> dict:
    from dcnn.atomistic.io import load_atoms

    ds = load_atoms(path)
    return {"name": ds.name, "theory": ds.theory, "units": [ds.energy_unit, ds.force_unit],
            "frames": len(ds), "periodic": bool(ds.is_periodic), "fixed_size": bool(ds.fixed_size)}


def _atoms_check(path: str, settings: dict) -> None:
    """The data file loads and validates, and the study's split fits it (`settings`: TrainConfig keys)."""
    from dcnn.atomistic.io import load_atoms
    from dcnn.models import MAX_Z

    ds = load_atoms(path, max_z=MAX_Z)  # DatasetError names the file and the problem
    if settings:
        _atoms_check_split(ds, path, settings)


def _atoms_check_split(ds, path: str, settings: dict) -> None:
    from dcnn.atomistic.molecules import SplitSizeError
    from dcnn.atomistic.task import split_frames
    from dcnn.config import TrainConfig

    cfg = TrainConfig.from_dict({k: v for k, v in settings.items() if k in TrainConfig.field_names()})
    try:
        split_frames(len(ds), cfg, ds)
    except SplitSizeError as e:  # only a size problem gets the size advice
        raise ValueError(f"{path}: too small for the split (n_train={cfg.n_train}, n_val={cfg.n_val}, "
                         f"n_test={cfg.n_test}, split={cfg.split}): {e}; lower n_train/n_val/n_test "
                         f"or use a larger data set") from None
    except ValueError as e:  # a held-out element that is absent, everywhere or no element; sizes below zero
        raise ValueError(f"split={cfg.split} (n_train={cfg.n_train}, n_val={cfg.n_val}, n_test={cfg.n_test}): "
                         f"{e}") from None


def _atoms_label(path: str) -> str:
    from dcnn.atomistic.io import ATOMS_DATASETS

    bundled = {str(p): name for name, p in ATOMS_DATASETS.items()}
    file = str(path).split("?", 1)[0]
    return bundled.get(file, Path(file).stem)


def _atoms_words() -> str:
    from dcnn.atomistic.io import ATOMS_DATASETS

    return f"atomistic data (a bundled name: {', '.join(ATOMS_DATASETS)}; or a data file)"


def _atoms_task(config, device):
    from dcnn.atomistic.task import AtomisticTask

    return AtomisticTask(config, device)


ATOMISTIC = TaskFamily(
    name="atomistic",
    metrics=(MetricSpec("energy_loss", "energy", "E", "energy", "MAE", unit_index=0, baseline="test_energy_baseline",
                        baseline_label="predict-mean", baseline_row="mean E", blowup_scale="test_energy_scale"),
             MetricSpec("force_loss", "force", "F", "force", "MAE", unit_index=1, baseline="test_force_baseline",
                        baseline_label="predict-zero", baseline_row="zero F", blowup_scale="test_force_baseline"),
             # per atom: the MAE the field quotes for data of many sizes; for one molecule E / N
             MetricSpec("energy_per_atom_loss", "energy_per_atom", "E/atom", "energy per atom", "MAE", unit_index=0,
                        baseline="test_energy_per_atom_baseline", baseline_label="predict-mean per atom",
                        baseline_row="mean E/atom", error_words="per-atom energy error", main=False),
             # OC20/OC22's energy and forces within threshold (eV data only: NaN otherwise)
             MetricSpec("efwt", "efwt", "EFwT", "EFwT", unit="", error_words="EFwT", lower_is_better=False,
                        main=False)),
    # the paper's β = 30, fixed: comparable across trials even when force_weight itself is tuned
    objective={"energy_loss": 1.0, "force_loss": 30.0},
    train_terms=("train_energy_loss", "train_force_loss"),
    default_dataset=_atoms_default, resolve_dataset=_atoms_resolve, dataset_info=_atoms_info,
    check_dataset=_atoms_check, dataset_label=_atoms_label, make_task=_atoms_task,
    model_words="an interatomic potential",
    data_words=_atoms_words)


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


def _pinn_words() -> str:
    from dcnn.pinn.problems import PROBLEM_NAMES

    return f"a PDE problem ({', '.join(PROBLEM_NAMES)})"


def _pinn_task(config, device):
    from dcnn.pinn.task import PINNTask

    return PINNTask(config, device)


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
    check_dataset=_pinn_check, dataset_label=lambda name: str(name), make_task=_pinn_task,
    model_words="a physics-informed network", data_words=_pinn_words)

FAMILIES = {"atomistic": ATOMISTIC, "pinn": PINN}  # by `ModelSpec.family`


def models_of(family: TaskFamily) -> list[str]:
    """The built-in models of a family."""
    from dcnn.models import MODELS, get_spec

    return [m for m in MODELS if FAMILIES[get_spec(m).family] is family]


def family_of(model: str) -> TaskFamily:
    """The family a model belongs to: its ModelSpec says (`family`; built-ins, plug-ins alike); a name that
    does not resolve (an empty study, a typo reported elsewhere) is atomistic, the default."""
    from dcnn.models import get_spec
    from dcnn.models.plugins import ModelPluginError

    try:
        return FAMILIES[get_spec(model).family]
    except ModelPluginError:
        return ATOMISTIC


def family_of_config(config: dict) -> TaskFamily:
    return family_of(str(config.get("model", "")))
