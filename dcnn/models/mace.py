"""MACE (Batatia et al. 2022, `mace-torch`) as an energy model E(graph), through the plug-in API.

An optional built-in: `pip install 'dcnn-ablate[mace]'`, then `--models mace`. Nothing imports this module
(or mace/e3nn) unless the model is asked for by name.

The adapter feeds MACE the graph layout (`dcnn.atomistic.graph.AtomicGraph`) as it is: the graph's own
edges as MACE's `edge_index` (sender = our source j, receiver = our target i), its periodic images as
Cartesian `shifts` = −S·cell computed from `cell_shifts` and `cells` at use time (MACE's edge vector
x_receiver − x_sender + shift is −r_ij; differentiable w.r.t. positions and cells), `unit_shifts`, `cell`,
`node_attrs` one-hot over the data set's elements, `batch`/`ptr` of the B structures.  Molecules
(complete graph), slabs and crystals alike.  A complete graph is restricted to MACE's r_max by
`prepare_graph` (outside the differentiable step, via `dcnn.models.prepare`): MACE's radial MLP of a
zeroed basis is not zero for every activation, so pairs past r_max are dropped, as MACE's own neighbour
list never has them.  MACE is called with `compute_force=False`: forces are −∂E/∂positions by our
`energy_and_forces`, like every other model.
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

import dataclasses
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
from dcnn.atomistic.graph import AtomicGraph
from dcnn.models.common import pair_distances
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
    """E(graph) -> [B] by `mace.modules.MACE` on the graph's edges within r_max (periodic images included)."""

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

    # -- the graph layout ---------------------------------------------------------------------------------
    @property
    def _prepared_key(self) -> str:
        return f"mace_within_{self.cutoff!r}"

    @torch.no_grad()
    def prepare_graph(self, graph: AtomicGraph) -> AtomicGraph:
        """`graph` restricted to the pairs closer than r_max (outside the differentiable step; called by
        `dcnn.models.prepare`, and by `forward` for a graph that has not been through it).

        A complete graph of a molecule has pairs beyond r_max.  MACE's radial embedding is zero there
        (the polynomial envelope is masked by d < r_max), but the radial MLP of a zero basis is φ(0)-driven
        and not zero for every activation (softplus: log 2), so those edges would still carry messages:
        they are dropped, as MACE's own neighbour list never has them.  Pairs are kept or dropped together
        (edge m and m + P have the same distance), so the result is paired like its input.  Also checks
        the data's elements against the model's, once per graph.  Idempotent: marked in `extras`."""
        if self._prepared_key in graph.extras:
            return graph
        self._check_elements(graph.numbers)
        keep = (pair_distances(graph) < self.cutoff).nonzero().squeeze(1)
        p = graph.n_pairs
        extras = {**graph.extras, self._prepared_key: torch.tensor(p - keep.numel(), device=keep.device)}
        if keep.numel() == p:
            return dataclasses.replace(graph, extras=extras)
        edges = torch.cat([keep, keep + p])
        return dataclasses.replace(graph, edge_index=graph.edge_index[:, edges],
                                   cell_shifts=graph.cell_shifts[edges], extras=extras)

    def _check_elements(self, numbers: torch.Tensor) -> None:
        z = numbers.to(self.element_index.device)
        n_index = self.element_index.numel()
        bad = (z < 0) | (z >= n_index)
        bad = bad | (self.element_index[z.clamp(0, n_index - 1)] < 0)
        if bool(bad.any()):
            missing = sorted(set(z[bad].tolist()))
            raise ValueError(f"MACE was built for elements {list(self.elements)}; the data has {missing}")

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """graph (positions Å) → energies [B]."""
        return self.mace(self.mace_inputs(graph), training=self.training, compute_force=False)["energy"]

    def mace_inputs(self, graph: AtomicGraph) -> dict:
        """MACE's input dict of `graph` (prepared here if it was not): its own edges and periodic images.

        Our edge e goes from source j = edge_index[0, e] to target i = edge_index[1, e] (messages j → i)
        with r_ij = x_j − x_i + S·cell: the neighbour is j's image x_j + S·cell.  MACE's messages go from
        sender = edge_index[0] to receiver = edge_index[1] (scatter into receivers) along its vector
        x_receiver − x_sender + shift, from the sender's image to the receiver.  So the edge index is ours
        as it is (sender j, receiver i) and MACE's shift is −S·cell (its vector is −r_ij); the graph is
        closed under reversal, so this is the same set of directed edges MACE's own neighbour list gives.
        Cartesian shifts are computed here from `cell_shifts` and `cells`, so E stays differentiable
        w.r.t. the cells (the strain path).  The positions are the graph's (MACE reads edge vectors from
        them); a tensor that does not require grad is passed detached, since MACE calls requires_grad_()
        on it."""
        graph = self.prepare_graph(graph)
        source, target = graph.edge_index
        positions = graph.positions if graph.positions.requires_grad else graph.positions.detach()
        shifts = -torch.einsum("ek,ekl->el", graph.cell_shifts, graph.cells[graph.batch[target]])
        ptr = torch.cat([graph.n_atoms.new_zeros(1), torch.cumsum(graph.n_atoms, 0)])
        return {
            "positions": positions,
            "node_attrs": nn.functional.one_hot(self.element_index[graph.numbers], len(self.elements))
            .to(positions.dtype),
            "edge_index": graph.edge_index,
            "shifts": shifts,
            "unit_shifts": -graph.cell_shifts,
            "cell": graph.cells,
            "batch": graph.batch,
            "ptr": ptr,
        }


spec = ModelSpec(
    build=MACEPotential, presets=MACE_PRESETS, original_activation="silu",
    paper_placement=("mace.interactions.*.conv_tp_weights",), data_args=("elements", "n_atoms"),
    description="MACE (mace-torch) on the graph's edges within r_max; radial MLPs in paper scope")
