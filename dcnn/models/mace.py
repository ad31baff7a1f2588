"""MACE (Batatia et al. 2022, `mace-torch`) as an energy model E(positions, numbers), through the plug-in API.

An optional built-in: `pip install 'dcnn-ablate[mace]'`, then `--models mace`. Nothing imports this module
(or mace/e3nn) unless the model is asked for by name.

The adapter turns our dense batch (positions [B, N, 3], numbers [N], one molecule) into MACE's graph
dict: a radius graph in plain torch (every ordered pair i≠j closer than r_max, no periodic shifts),
`node_attrs` one-hot over the data set's elements, `batch`/`ptr` for B frames. The positions the trainer
passes stay in the graph (MACE reads edge vectors from them), and MACE is called with
`compute_force=False`: forces are −∂E/∂positions by our `energy_and_forces`, like every other model.
No E0s and no scale/shift inside the model (plain `MACE`, atomic energies zero): the study's LR and ES
factors do label rescaling and the per-element shift, as for the other models.

Activations. MACE's nonlinearities are e3nn's moment-normalised SiLU (`normalize2mom`: φ(x)·c with
c = E[φ(z)²]^−½, z ~ N(0, 1)) as plain functions, which a module swap cannot see. The adapter replaces
each by `MomentNormalized(get_activation("silu"))`, the same function (same constant, computed by e3nn's
own seeded estimator), whose inner activation is a swappable module; c is recomputed for whatever
activation is swapped in, so the e3nn normalisation (unit second moment) is kept for IReLU etc.
* scope "paper": the radial MLPs, `mace.interactions.*.conv_tp_weights` (len(radial_MLP) activations
  per interaction: the distance → tensor-product-weight networks, MACE's counterpart of SchNet's
  filter networks, through which every force passes);
* scope "all": those plus the gate of the nonlinear readout, `mace.readouts.<last>.non_linearity`.
MACE has no BatchNorm, so DN arms are identical by construction (run once, reported as twins).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn


def _import_mace():
    """mace's __init__ sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the whole process (so e3nn 0.4.4 can
    torch.load its constants at import); restore the variable after the import so no later torch.load
    here, or in Ray workers that inherit the environment, loses its weights_only default."""
    before = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    try:
        with warnings.catch_warnings():  # e3nn's torch.load of its own constants, under mace's variable
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
            from mace import modules
    finally:
        if before is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = before
    return modules


mace_modules = _import_mace()
from e3nn import o3  # noqa: E402 (after mace: it loads e3nn's constants)
from e3nn.math import moment, normalize2mom  # noqa: E402

from dcnn.activations import get_activation
from dcnn.models.plugins import ModelSpec

MACE_PRESETS = {
    # seconds per epoch on CPU: 2 interactions, 16 channels of l ≤ 1, correlation 2, radial MLP [16, 16]
    "small": dict(hidden=16, interactions=2, cutoff=5.0, radial=8, max_ell=1, correlation=2,
                  radial_mlp=16, radial_layers=2, mlp=16, avg_neighbors=0.0),
    # MACE-paper-like sizes (128x0e+128x1o, l ≤ 3, correlation 3, radial MLP [64]*3)
    "paper": dict(hidden=128, interactions=2, cutoff=5.0, radial=8, max_ell=3, correlation=3,
                  radial_mlp=64, radial_layers=3, mlp=16, avg_neighbors=0.0),
}
DEFAULT_ELEMENTS = (1, 6, 7, 8)  # H C N O: when built without a data set (e.g. to inspect the model)


class MomentNormalized(nn.Module):
    """φ(x)·c with c = E[φ(z)²]^−½ (e3nn's normalize2mom), φ a swappable activation module."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.act = act
        self._scale_for: str | None = None
        self._scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = getattr(self.act, "name", type(self.act).__name__)
        if name != self._scale_for:  # once per activation (re-done after a swap)
            with torch.no_grad():
                self._scale = float(moment(self.act, 2, dtype=torch.float64, device="cpu").pow(-0.5))
            self._scale_for = name
        return self.act(x) * self._scale


def _wrap_silu(module: nn.Module) -> int:
    """Replace every e3nn normalize2mom(silu) in `module` by MomentNormalized(Activation('silu'))."""
    count = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, normalize2mom):
                if child.f is not torch.nn.functional.silu:
                    raise ValueError(f"MACE adapter: unexpected activation {child.f!r} at {child_name}")
                setattr(parent, child_name, MomentNormalized(get_activation("silu")))
                count += 1
    return count


class MACEPotential(nn.Module):
    """E(positions [B, N, 3], numbers [N]) -> [B] by `mace.modules.MACE` on an all-pairs-within-r_max graph."""

    def __init__(self, hidden=16, interactions=2, cutoff=5.0, radial=8, max_ell=1, correlation=2,
                 radial_mlp=16, radial_layers=2, mlp=16, avg_neighbors=0.0, elements=DEFAULT_ELEMENTS,
                 n_atoms=None):
        super().__init__()
        elements = tuple(sorted(int(z) for z in elements))
        self.cutoff = float(cutoff)
        # MACE divides messages by the mean neighbour count; 0 = estimate it as all other atoms (an upper
        # bound for a molecule within r_max; the bundled molecules are mostly within 5 Å)
        avg = float(avg_neighbors) if avg_neighbors else float(max(1, (n_atoms or 9) - 1))
        self.mace = self._build(elements, avg, cutoff, radial, max_ell, interactions, hidden, mlp, correlation,
                                radial_mlp, radial_layers)
        self.n_wrapped = _wrap_silu(self.mace)
        index = torch.full((max(elements) + 1,), -1, dtype=torch.long)
        index[list(elements)] = torch.arange(len(elements))
        self.register_buffer("element_index", index, persistent=False)
        self.elements = elements
        self._checked: tuple | None = None

    def _build(self, elements, avg, cutoff, radial, max_ell, interactions, hidden, mlp, correlation, radial_mlp,
               radial_layers) -> nn.Module:
        """Upstream MACE with e3nn's own activations (the adapter wraps them afterwards)."""
        with warnings.catch_warnings():  # e3nn's TorchScript codegen notes (we run eagerly)
            warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
            return self._make(elements, avg, cutoff, radial, max_ell, interactions, hidden, mlp, correlation,
                              radial_mlp, radial_layers)

    @staticmethod
    def _make(elements, avg, cutoff, radial, max_ell, interactions, hidden, mlp, correlation, radial_mlp,
              radial_layers) -> nn.Module:
        return mace_modules.MACE(
            r_max=float(cutoff), num_bessel=int(radial), num_polynomial_cutoff=5, max_ell=int(max_ell),
            interaction_cls=mace_modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=mace_modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=int(interactions), num_elements=len(elements),
            hidden_irreps=o3.Irreps(f"{int(hidden)}x0e + {int(hidden)}x1o"),
            MLP_irreps=o3.Irreps(f"{int(mlp)}x0e"), atomic_energies=np.zeros(len(elements)),
            avg_num_neighbors=avg, atomic_numbers=list(elements), correlation=int(correlation),
            gate=torch.nn.functional.silu, radial_MLP=[int(radial_mlp)] * int(radial_layers))

    def _node_attrs(self, numbers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = (numbers.data_ptr(), numbers.numel(), numbers.device)
        if key != self._checked:  # once per molecule: elements the model was not built for
            z = numbers.to(self.element_index.device)
            n_index = self.element_index.numel()
            bad = (z >= n_index) | (self.element_index[z.clamp(max=n_index - 1)] < 0)
            missing = sorted(set(z[bad].tolist()))
            if missing:
                raise ValueError(f"MACE was built for elements {list(self.elements)}; the data has {missing}")
            self._checked = key
        return nn.functional.one_hot(self.element_index[numbers], len(self.elements)).to(dtype)

    def forward(self, positions: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """positions [B, N, 3] (Å), numbers [N] → energies [B]."""
        return self.mace(self.graph(positions, numbers), training=self.training, compute_force=False)["energy"]

    def graph(self, positions: torch.Tensor, numbers: torch.Tensor) -> dict:
        """MACE's input dict for B frames of one molecule; its positions are a view of `positions`."""
        b, n, _ = positions.shape
        with torch.no_grad():  # which pairs: not differentiated (MACE's cutoff is smooth at r_max)
            d = torch.cdist(positions, positions)
            d.diagonal(dim1=1, dim2=2).fill_(float("inf"))
            frame, i, j = (d < self.cutoff).nonzero(as_tuple=True)
        sender, receiver = frame * n + j, frame * n + i
        device, dtype = positions.device, positions.dtype
        flat = positions.reshape(b * n, 3)
        if not flat.requires_grad:  # MACE calls requires_grad_() on it: give it a leaf (no gradient wanted)
            flat = flat.detach()
        return {
            "positions": flat,
            "node_attrs": self._node_attrs(numbers, dtype).repeat(b, 1),
            "edge_index": torch.stack([sender, receiver]),
            "shifts": torch.zeros(sender.numel(), 3, dtype=dtype, device=device),
            "unit_shifts": torch.zeros(sender.numel(), 3, dtype=dtype, device=device),
            "cell": torch.zeros(b, 3, 3, dtype=dtype, device=device),
            "batch": torch.arange(b, device=device).repeat_interleave(n),
            "ptr": torch.arange(b + 1, device=device) * n,
        }


spec = ModelSpec(
    build=MACEPotential, presets=MACE_PRESETS, original_activation="silu",
    paper_placement=("mace.interactions.*.conv_tp_weights",), data_args=("elements", "n_atoms"),
    description="MACE (mace-torch) on an all-pairs-within-cutoff graph; radial MLPs in paper scope")
