"""The atomistic task: energy + force training of an interatomic potential on any atomistic data set
(one molecule's frames, molecules of many sizes, periodic slabs and crystals), on the graph layout.

loss = L(E') + β·L(F') on labels made by an `AtomsLabelTransform` (per-species shift fitted over the
training split's compositions and/or division by C); every reported number is computed on inverse-
transformed predictions, so it is in the data set's physical units: energy MAE per structure and per atom,
force MAE per component, and EFwT where the units are eV.  L is the paper's L1 by default, or MSE / Huber
(`loss_fn`, dcnn/losses.py); E' is the structure's energy or, with `energy_term=atom`, the energy per atom.
Frames with a group label (mlearn's Surface, Vacancy, ...) also get their test errors per group.

Graphs: a data set of one molecule (one atom count and composition, no cell) trains on the complete graph
of every frame — every batch has the same shapes (the compiled step needs that) and the models' smooth
cutoffs switch far pairs off exactly as the dense layout did; anything else trains on radius graphs at the
model's cutoff with periodic images (vesin), computed once per data set and cached (`DatasetNeighbors`).
Each split lives on the training device (`GraphStore`) and batches are cut there.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from dcnn.activations import replace_activations
from dcnn.atomistic.dataset import AtomsDataset
from dcnn.atomistic.family import ATOMISTIC
from dcnn.atomistic.graph import GraphStore
from dcnn.atomistic.io import load_with_test_set
from dcnn.atomistic.labels import AtomsLabelTransform, baselines
from dcnn.atomistic.metrics import EFWT_ENERGY_EV, EFWT_FORCE_EV_PER_A
from dcnn.atomistic.neighbors import DatasetNeighbors
from dcnn.atomistic.splits import split_frames
from dcnn.atomistic.splits import split_origin
from dcnn.compiled import make_energy_forces
from dcnn.config import TrainConfig
from dcnn.init import INIT_BATCHES, initialise_
from dcnn.losses import loss_term
from dcnn.models import MAX_Z, build_model, default_activation, denormalize, prepare

__all__ = ["AtomisticTask", "group_key", "neighbors_for", "split_frames"]  # split_frames from dcnn.atomistic.splits

SPLITS = ("train", "val", "test")


def neighbors_for(dataset: AtomsDataset, model: nn.Module) -> DatasetNeighbors:
    """The graph a data set trains on with a model: the complete graph for one molecule's frames (static
    shapes, exactly the dense layout's pairs), else radius graphs at the model's `cutoff` (Å)."""
    if dataset.fixed_size and not dataset.is_periodic:
        return DatasetNeighbors.complete(dataset)
    if getattr(model, "dense_layout", False):
        raise ValueError(f"{dataset.source or dataset.name}: frames of different sizes or periodic cells, but the "
                         f"model takes the dense layout of one molecule (forward(positions [B, N, 3], numbers [N])); "
                         f"write its forward as forward(graph) on dcnn.atomistic.graph.AtomicGraph to train on these")
    cutoff = getattr(model, "cutoff", None)
    if not (isinstance(cutoff, (int, float)) and cutoff > 0):
        raise ValueError(f"{type(model).__name__} has no `cutoff` (Å): a data set of many sizes or periodic "
                         f"cells needs one for its radius graph")
    return DatasetNeighbors.get(dataset, float(cutoff), disk=True)


class AtomisticTask:
    """Energy + force training of an interatomic potential (the `atomistic` task family)."""

    def __init__(self, config: TrainConfig, device: torch.device, dataset: AtomsDataset | None = None):
        self.family = ATOMISTIC
        self.config = config
        self.device = device
        ds = dataset if dataset is not None else load_with_test_set(config.dataset, config.test_dataset)
        ds.check_numbers(MAX_Z)
        self.dataset = ds
        idx = dict(zip(SPLITS, split_frames(len(ds), config, ds)))
        dtype = getattr(torch, config.dtype)
        self.dtype = dtype
        self.force_weight = config.force_weight
        self.per_atom = config.energy_term == "atom"
        scale = config.rescale_factor if config.rescale else 1.0
        # Huber's switch in the training labels' units (divided by C like the labels)
        self.delta = config.huber_delta / scale
        species, counts = ds.compositions()
        self.labels = AtomsLabelTransform.fit(species, counts[idx["train"]], ds.energies[idx["train"]],
                                              shift=config.shift,
                                              scale=config.rescale_factor if config.rescale else 1.0)
        n_atoms = ds.n_atoms
        self.baselines = {name: baselines(ds.energies[idx["train"]], n_atoms[idx["train"]], ds.energies[i],
                                          n_atoms[i], ds.forces[ds.atom_index(i)])
                          for name, i in idx.items()}

        data = {"elements": tuple(int(z) for z in species), "n_atoms": int(n_atoms.max())}
        self.model_data = data
        model = build_model(config.model, config.preset, data, **config.model_sizes())
        activation = default_activation(config.model) if config.activation == "original" else config.activation
        replaced = 0
        if config.activation != "original":
            replaced = replace_activations(model, config.activation, config.scope).replaced_activations
        removed = denormalize(model) if config.denorm else 0
        self.model = model.to(device=device, dtype=dtype)
        neighbors = neighbors_for(ds, self.model)
        self.static_shapes = neighbors.cutoff is None  # complete graphs of one molecule: every batch alike
        self.stores = {}
        for name, i in idx.items():
            sub = ds.subset(i)
            _, sub_counts = sub.compositions()
            aligned = _align_counts(sub, species)
            self.stores[name] = GraphStore(sub, neighbors.subset(i), device, dtype,
                                           self.labels.energies(sub.energies, aligned),
                                           self.labels.forces(sub.forces), aligned)
        self.n_train = len(idx["train"])
        self.init_info = initialise_(self.model, config.init, self._init_forwards(config.seed, config.batch_size))
        steps = config.epochs * math.ceil(self.n_train / config.batch_size)
        self.energy_and_forces = make_energy_forces(self.model, config.compile, config.model, total_steps=steps,
                                                    preset=config.preset, static_shapes=self.static_shapes)
        self.info = {
            "energy_unit": ds.energy_unit, "force_unit": ds.force_unit, "theory": ds.theory,
            "dataset_name": ds.name, "n_atoms": int(n_atoms.max()), "periodic": int(ds.is_periodic),
            "n_train": len(idx["train"]), "n_val": len(idx["val"]), "n_test": len(idx["test"]),
            "activation_used": activation, "activations_replaced": replaced, "batchnorm_removed": removed,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "energy_shift": float(np.mean(self.labels.offsets(counts[idx["train"]]))) if len(idx["train"]) else 0.0,
            "init_layers_scaled": self.init_info.get("lsuv_layers", 0),
            "init_scale_factors_fitted": len(self.init_info.get("fitted_scale_factors", {})),
            "graph": "complete" if self.static_shapes else f"radius {neighbors.cutoff:g} Å",
            "test_split": split_origin(config, ds),
        }
        # the test frames' groups (mlearn's Surface, Vacancy, ...), in first-seen order: per-group test errors
        test_groups = ds.groups[idx["test"]] if ds.groups is not None else None
        self.test_groups = test_groups
        self.group_names = list(dict.fromkeys(test_groups.tolist())) if test_groups is not None else []

    def inference_info(self) -> dict:
        """What a checkpoint must hold to predict with the model elsewhere (dcnn.calculator): the elements the
        model was built for, the label transform (C and per-species energies: predictions are E' = (E −
        shift)/C), the energy unit, and the graph rule (the model's cutoff)."""
        return {"family": "atomistic", "elements": list(self.model_data["elements"]),
                "n_atoms": self.model_data["n_atoms"], "labels": self.labels.to_dict(),
                "energy_unit": self.dataset.energy_unit, "cutoff": getattr(self.model, "cutoff", None)}

    # -- the trainer's protocol -----------------------------------------------------------------------
    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_train / batch_size)

    def batches(self, generator: torch.Generator, batch_size: int):
        """A random permutation of the training frames in batches (drawn on the CPU: same on any device)."""
        perm = torch.randperm(self.n_train, generator=generator)
        for start in range(0, self.n_train, batch_size):
            host = perm[start:start + batch_size]
            yield host.to(self.device), host.numpy()

    def objective(self, metrics: dict) -> float:
        """The validation objective with the run's own force weight (physical units), on the energy the loss
        compares (per structure, or per atom with energy_term=atom)."""
        energy = metrics["energy_per_atom_loss"] if self.per_atom else metrics["energy_loss"]
        return energy + self.force_weight * metrics["force_loss"]

    def test_references(self) -> dict:
        base = self.baselines.get("test", {})
        return {"test_energy_baseline": base.get("energy", math.nan), "test_force_baseline": base.get("force", math.nan),
                "test_energy_per_atom_baseline": base.get("energy_per_atom", math.nan),
                "test_energy_scale": base.get("energy_scale", math.nan)}

    def compile_stats(self) -> dict:
        """Compile time so far (s), whether training steps run compiled (1/0), and why not if it fell back."""
        ef = self.energy_and_forces
        auto = getattr(ef, "auto", None)
        compiled = hasattr(ef, "graphs") and ef.failed is None and (auto is None or auto.decision is True)
        out = {"compile_s": float(getattr(ef, "compile_time_s", 0.0)), "compiled": int(compiled)}
        if getattr(ef, "warm_cache", None) is not None:  # compiled a graph this machine had compiled before
            out["compile_warm_cache"] = int(ef.warm_cache)
        if getattr(ef, "failed", None):
            out["compile_fallback"] = ef.failed
        return out

    def loss(self, index):
        device_index, host_index = index
        b = self.stores["train"].batch(device_index, host_index)
        graph = prepare(self.model, b["graph"])
        e_pred, f_pred = self.energy_and_forces(graph, create_graph=True)
        e_label = b["energy_labels"]
        if self.per_atom:
            n = b["n_atoms"].to(e_pred.dtype)
            e_pred, e_label = e_pred / n, e_label / n
        kind = self.config.loss_fn
        loss = (loss_term(kind, e_pred, e_label, self.delta)
                + self.force_weight * loss_term(kind, f_pred, b["force_labels"], self.delta))
        if self.per_atom:
            e_pred = e_pred * n
        with torch.no_grad():  # the same terms in physical units, for the record
            e_mae = (self.labels.inverse_energies(e_pred, b["counts"]) - b["energies"]).abs().mean()
            f_mae = (self.labels.inverse_forces(f_pred) - b["forces"]).abs().mean()
        return loss, {"train_energy_loss": e_mae, "train_force_loss": f_mae}

    def evaluate(self, split: str) -> dict[str, float]:
        """Energy MAE per structure and per atom, force MAE per component, and EFwT (eV data only); on the
        test split of grouped data also each group's (`group.NAME.<metric>`, NAME as `group_key` writes it)."""
        store = self.stores[split]
        n = len(store)
        nan = {"energy_loss": math.nan, "force_loss": math.nan, "energy_per_atom_loss": math.nan}
        if n == 0:
            return nan
        was_training = self.model.training
        self.model.eval()
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        within = zero.clone()
        e_frames, e_atom_frames, f_frames = [], [], []  # per frame: |ΔE|, |ΔE|/N, Σ|ΔF| (3N components)
        ev = _ev_per_unit(self.dataset.energy_unit)
        for start in range(0, n, self.config.eval_batch_size):
            host = np.arange(start, min(n, start + self.config.eval_batch_size))
            b = store.batch(torch.as_tensor(host, device=self.device), host)
            graph = prepare(self.model, b["graph"])
            e_pred, f_pred = self.energy_and_forces(graph, create_graph=False)
            de = (self.labels.inverse_energies(e_pred.detach(), b["counts"]) - b["energies"]).abs()
            df = (self.labels.inverse_forces(f_pred.detach()) - b["forces"]).abs()
            e_frames.append(de)
            e_atom_frames.append(de / b["n_atoms"].to(de.dtype))
            f_frames.append(torch.zeros_like(de).index_add_(0, graph.batch, df.sum(dim=1)))
            if ev is not None:  # OC20's EFwT: |ΔE| ≤ 0.02 eV and max |ΔF| ≤ 0.03 eV/Å in a structure
                worst = torch.zeros_like(de).scatter_reduce_(0, graph.batch, df.max(dim=1).values, "amax",
                                                             include_self=False)
                within += ((de * ev <= EFWT_ENERGY_EV) & (worst * ev <= EFWT_FORCE_EV_PER_A)).sum()
        self.model.train(was_training)
        e, e_atom, f = (torch.cat(x).double().cpu().numpy() for x in (e_frames, e_atom_frames, f_frames))
        components = 3 * store.n_atoms_host
        out = {"energy_loss": float(e.mean()), "force_loss": float(f.sum() / max(components.sum(), 1)),
               "energy_per_atom_loss": float(e_atom.mean())}
        if ev is not None:  # EFwT only where it is defined (eV): absent, not NaN, elsewhere
            out["efwt"] = float(within) / n
        if split == "test" and self.group_names:
            for name in self.group_names:
                rows = self.test_groups == name
                key = group_key(name)
                out.update({f"{key}.energy_per_atom_loss": float(e_atom[rows].mean()),
                            f"{key}.energy_loss": float(e[rows].mean()),
                            f"{key}.force_loss": float(f[rows].sum() / components[rows].sum()),
                            f"{key}.frames": int(rows.sum())})
        return out

    # -- initialisation ------------------------------------------------------------------------------
    def _init_forwards(self, seed: int, batch_size: int) -> list:
        """Forward passes on training batches for the initialisation (dcnn/init.py): a permutation drawn from
        a generator of its own (seeded by the trial seed), so the training order and the global RNG are the
        same whatever `init` is."""
        order = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(seed))
        store = self.stores["train"]
        out = []
        for k in range(0, self.n_train, batch_size):
            host = order[k:k + batch_size].numpy()
            graph = prepare(self.model, store.batch(torch.as_tensor(host, device=self.device), host)["graph"])
            out.append(lambda graph=graph: self.model(graph))
            if len(out) == INIT_BATCHES:
                break
        return out


def group_key(name: str) -> str:
    """A group's metric prefix: `group.` and its name with characters other than letters, digits, - and _ as
    _ (MLflow's and Tune's keys take those), e.g. "Ground state" → group.Ground_state."""
    return "group." + ("".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "_")


def _ev_per_unit(unit: str) -> float | None:
    """eV per energy unit for EFwT's thresholds, or None: EFwT is defined in eV, and only eV data get it
    (kcal/mol data would need converted thresholds the OC benchmarks never used)."""
    return 1.0 if unit == "eV" else None


def _align_counts(dataset: AtomsDataset, species: np.ndarray) -> np.ndarray:
    """Composition counts [n, S] of `dataset` in the columns `species` (the whole data set's)."""
    own, counts = dataset.compositions()
    out = np.zeros((len(dataset), len(species)), dtype=np.float64)
    for k, z in enumerate(own):
        out[:, int(np.flatnonzero(species == z)[0])] = counts[:, k]
    return out
