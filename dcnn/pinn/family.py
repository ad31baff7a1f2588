"""The PINN task family: its metrics, objective and data sets (the PDE problems of dcnn/pinn/problems.py).

Defined next to its task (dcnn/pinn/task.py, which reads it) and below it; dcnn/registry.py pairs it with
`PINNTask`.
"""
from __future__ import annotations

from dcnn.families import MetricSpec, TaskFamily
from dcnn.pinn.problems import PROBLEM_NAMES, get_problem

__all__ = ["PINN"]


def _pinn_resolve(name, base=None) -> str:
    return get_problem(str(name)).name


def _pinn_info(name: str) -> dict:
    p = get_problem(name)
    return {"name": p.name, "theory": p.title, "units": ["u", "u/t"]}


def _pinn_check(name: str, settings: dict) -> None:
    """The problem exists, and its reference is computed (and cached) now, before any trial starts."""
    get_problem(name).reference()


def _pinn_words() -> str:
    return f"a PDE problem ({', '.join(PROBLEM_NAMES)})"


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
    check_dataset=_pinn_check, dataset_label=lambda name: str(name),
    model_words="a physics-informed network", data_words=_pinn_words)
