"""The atomistic task family (molecules, slabs, crystals): its metrics, objective and data sets.

Defined next to its task (dcnn/atomistic/task.py, which reads it) and below it: the family checks data and
splits without building a task, and dcnn/registry.py pairs it with `AtomisticTask`.
"""
from __future__ import annotations

from pathlib import Path

from dcnn.atomistic.io import ATOMS_DATASETS, load_atoms, load_with_test_set, resolve_atoms_source
from dcnn.atomistic.molecules import DEFAULT_DATASET, SplitSizeError
from dcnn.atomistic.splits import split_frames
from dcnn.config import TrainConfig
from dcnn.families import MetricSpec, TaskFamily
from dcnn.models import MAX_Z

__all__ = ["ATOMISTIC"]


def _atoms_default() -> str:
    return str(DEFAULT_DATASET)


def _atoms_resolve(name, base=None) -> str:
    """An absolute path (trials change directory), keeping a database's `?selection`."""
    path, query = resolve_atoms_source(name, base)
    return str(path) + (f"?{query}" if query else "")


def _atoms_info(path: str) -> dict:
    ds = load_atoms(path)
    out = {"name": ds.name, "theory": ds.theory, "units": [ds.energy_unit, ds.force_unit],
           "frames": len(ds), "periodic": bool(ds.is_periodic), "fixed_size": bool(ds.fixed_size)}
    if ds.has_own_test_set:
        out["official_test_frames"] = int(ds.test_mask.sum())
    if ds.groups is not None:
        out["groups"] = sorted(set(ds.groups.tolist()))
    return out


def _atoms_check(path: str, settings: dict) -> None:
    """The data file (and a test file, `test_dataset`) loads and validates, and the study's split fits it
    (`settings`: TrainConfig keys)."""
    ds = load_with_test_set(path, settings.get("test_dataset") or "")  # DatasetError names the file and problem
    ds.check_numbers(MAX_Z)
    if settings:
        _atoms_check_split(ds, path, settings)


def _atoms_check_split(ds, path: str, settings: dict) -> None:
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
    bundled = {str(p): name for name, p in ATOMS_DATASETS.items()}
    file = str(path).split("?", 1)[0]
    return bundled.get(file, Path(file).stem)


def _atoms_words() -> str:
    return f"atomistic data (a bundled name: {', '.join(ATOMS_DATASETS)}; or a data file)"


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
    check_dataset=_atoms_check, dataset_label=_atoms_label,
    model_words="an interatomic potential",
    data_words=_atoms_words)
