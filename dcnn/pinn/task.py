"""The PINN task: train the FCN on a PDE residual plus initial- and boundary-condition terms (MSE each,
weights 1, as DeepXDE does), and measure it against the problem's reference solution.

Collocation points are drawn once per seed with a scrambled Sobol sequence (scipy.stats.qmc) and kept
fixed, as DeepXDE's `PDE(num_domain=...)` and PDEBench's PINN runs do by default; `resample=True` redraws
the interior points every epoch (seeded from the trainer's generator, so resuming is exact).
All points of a step go through the network in one batch, as in DeepXDE, so BatchNorm (the DN factor)
sees one batch statistic for the residual and the conditions.

Label rescaling (LR) for PINNs: the network predicts v = u/C and u = C·v enters the physics unchanged;
every loss term is the physical residual divided by C (the residual of v's own, rescaled equation: for
linear PDEs the same equation, for Burgers v_t + C·v v_x − ν v_xx, for FitzHugh–Nagumo the cubic term
gets C² and k becomes k/C). All metrics use u = C·v, so they are in u's units whatever C is.
"""
from __future__ import annotations

import numpy as np
import torch

from dcnn.activations import replace_activations
from dcnn.config import TrainConfig
from dcnn.init import initialise_
from dcnn.models import denormalize, get_spec
from dcnn.models.fcn import FCN
from dcnn.pinn.family import PINN
from dcnn.pinn.problems import Problem, get_problem, grad


def sobol(n: int, lower, upper, seed: int) -> np.ndarray:
    """n scrambled-Sobol points in the box (reproducible per seed; n need not be a power of two)."""
    from scipy.stats import qmc

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "balance properties" for n not a power of 2
        s = qmc.Sobol(d=len(lower), scramble=True, seed=seed).random(n)
    return qmc.scale(s, lower, upper)


class PINNTask:
    family = PINN

    def __init__(self, config: TrainConfig, device: torch.device, problem: Problem | None = None):
        self.config = config
        self.device = device
        self.dtype = getattr(torch, config.dtype)
        self.problem = p = problem if problem is not None else get_problem(config.dataset)
        self.scale = float(config.rescale_factor) if config.rescale else 1.0
        lo, hi = np.array(p.lower), np.array(p.upper)
        t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=device)  # noqa: E731
        self._t = t
        seed = config.seed
        self.interior = t(sobol(config.n_collocation, lo, hi, seed))
        x0 = sobol(config.n_initial, lo[:-1], hi[:-1], seed + 1)
        self.initial_points = t(np.concatenate([x0, np.zeros((len(x0), 1))], 1))
        self.initial_values = p.initial(self.initial_points[:, :-1])
        # boundary pairs: for each spatial dimension j, points on its lower and upper face (same other coords)
        n_space = p.dim - 1
        m = max(1, config.n_boundary // (2 * n_space))
        faces_lo, faces_hi, self.face_dim = [], [], []
        for j in range(n_space):
            z = sobol(m, lo, hi, seed + 2 + j)
            a, b = z.copy(), z.copy()
            a[:, j], b[:, j] = lo[j], hi[j]
            faces_lo.append(a), faces_hi.append(b)
            self.face_dim += [j] * m
        self.bc_lo, self.bc_hi = t(np.concatenate(faces_lo)), t(np.concatenate(faces_hi))
        self.face_dim = torch.as_tensor(self.face_dim, device=device)
        self.n_train = config.n_collocation
        self._resample_seed = seed

        ref = p.reference()
        grid, values, nt = ref.points, ref.values, ref.n_times
        per = len(grid) // nt
        val_slices = np.arange(0, nt, 2)  # every other time slice for the per-epoch validation
        keep = (val_slices[:, None] * per + np.arange(per)[None, :]).ravel()
        self.splits = {"val": (t(grid[keep]), t(values[keep]), len(val_slices)),
                       "test": (t(grid), t(values), nt), "train": (t(grid[keep]), t(values[keep]), len(val_slices))}
        self.residual_points = {"val": t(sobol(500, lo, hi, seed + 1000)), "train": t(sobol(500, lo, hi, seed + 1000)),
                                "test": t(sobol(2000, lo, hi, 12345))}  # one test set for every seed

        sizes = get_spec(config.model).sizes(config.preset, config.sizes)  # the preset's, with the config's
        model = FCN(**sizes, in_dim=p.dim, out_dim=p.n_fields, lower=p.lower, upper=p.upper)
        replaced = 0
        if config.activation != "original":
            replaced = replace_activations(model, config.activation, config.scope).replaced_activations
        removed = denormalize(model) if config.denorm else 0
        self.model = model.to(device=device, dtype=self.dtype)
        # LSUV (init=lsuv) on the training points: interior, initial and boundary, as one step sees them
        points = torch.cat([self.interior, self.initial_points, self.bc_lo, self.bc_hi])
        self.init_info = initialise_(self.model, config.init, [lambda: self.model(points)])
        self.info = {"dataset_name": p.name, "theory": p.title, "reference": ref.kind,
                     "n_collocation": config.n_collocation, "n_initial": len(x0), "n_boundary": 2 * len(self.face_dim),
                     "activation_used": "tanh" if config.activation == "original" else config.activation,
                     "activations_replaced": replaced, "batchnorm_removed": removed,
                     "n_parameters": sum(q.numel() for q in model.parameters()), "label_scale": self.scale,
                     "init_layers_scaled": self.init_info.get("lsuv_layers", 0)}

    # -- the trainer's protocol -------------------------------------------------------------------
    def steps_per_epoch(self, batch_size: int) -> int:
        return self.config.steps_per_epoch

    def batches(self, generator: torch.Generator, batch_size: int):
        """`steps_per_epoch` steps on the collocation points: all of them (collocation_batch None) or a
        random subset each step; with `resample`, new interior points first."""
        cfg = self.config
        if cfg.resample:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            p = self.problem
            self.interior = self._t(sobol(cfg.n_collocation, np.array(p.lower), np.array(p.upper), seed))
        for _ in range(cfg.steps_per_epoch):
            if cfg.collocation_batch is None or cfg.collocation_batch >= self.n_train:
                yield None
            else:
                yield torch.randperm(self.n_train, generator=generator)[:cfg.collocation_batch].to(self.device)

    def objective(self, metrics: dict) -> float:
        return self.family.val_loss(metrics)

    def test_references(self) -> dict:
        """The predict-zero model's errors: relative L2 and nRMSE are 1 by definition."""
        return {"test_rel_l2_baseline": 1.0, "test_nrmse_baseline": 1.0}

    def u(self, X: torch.Tensor) -> torch.Tensor:
        """The solution in physical units: C · network."""
        return self.scale * self.model(X)

    def terms(self, index=None) -> dict[str, torch.Tensor]:
        """Residual, IC and BC errors (physical units, per point) from one forward pass over all points."""
        p = self.problem
        interior = self.interior if index is None else self.interior[index]
        parts = [interior, self.initial_points, self.bc_lo, self.bc_hi]
        X = torch.cat(parts).requires_grad_(True)
        u = self.u(X)
        n0, n1, n2 = len(interior), len(self.initial_points), len(self.bc_lo)
        res = p.residual(u, X)[:n0]  # computed on all rows (they share one graph), kept for the interior
        ic = u[n0:n0 + n1] - self.initial_values
        u_lo, u_hi = u[n0 + n1:n0 + n1 + n2], u[n0 + n1 + n2:]
        if p.boundary == "dirichlet":
            bc = torch.cat([u_lo, u_hi])  # homogeneous: u = 0 on both ends
        else:
            # ∂u/∂x_j on the face's own dimension j, for every field
            d = torch.stack([grad(u[:, f], X) for f in range(p.n_fields)], 2)  # [N, dim, fields]
            rows = torch.arange(n2, device=X.device)
            d_lo = d[n0 + n1:n0 + n1 + n2][rows, self.face_dim]
            d_hi = d[n0 + n1 + n2:][rows, self.face_dim]
            if p.boundary == "periodic":
                bc = torch.cat([u_lo - u_hi] + ([d_lo - d_hi] if p.order >= 2 else []))
            else:  # neumann: no flux through either face
                bc = torch.cat([d_lo, d_hi])
        return {"pde": res, "ic": ic, "bc": bc}

    def loss(self, index):
        t = self.terms(index)
        c2 = self.scale ** 2
        mse = {k: (v ** 2).mean() for k, v in t.items()}
        loss = (mse["pde"] + mse["ic"] + mse["bc"]) / c2  # the loss of v = u/C (LR), physics unchanged
        return loss, {f"train_{k}_loss": v.detach() for k, v in mse.items()}

    def evaluate(self, split: str) -> dict[str, float]:
        X, ref, nt = self.splits[split]
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            pred = torch.cat([self.u(X[i:i + 8192]) for i in range(0, len(X), 8192)])
        err = pred - ref
        rel_l2 = float(err.norm() / ref.norm())
        per = len(X) // nt
        e_t = err.reshape(nt, per, -1).pow(2).mean(1).sqrt()  # [T, fields]
        r_t = ref.reshape(nt, per, -1).pow(2).mean(1).sqrt()
        nrmse = float((e_t / r_t).mean())  # PDEBench: per time step and field, then averaged
        rmse_last = float(err.reshape(nt, per, -1)[-1].pow(2).mean().sqrt())
        Xr = self.residual_points[split].clone().requires_grad_(True)
        with torch.enable_grad():
            res = self.problem.residual(self.u(Xr), Xr).detach()
        self.model.train(was_training)
        return {"rel_l2": rel_l2, "nrmse": nrmse, "rmse_last": rmse_last,
                "residual": float(res.pow(2).mean().sqrt())}
