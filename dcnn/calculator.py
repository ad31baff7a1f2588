"""An ASE calculator of any trained potential: `DCNNCalculator(checkpoint_path, device="cpu")`.

Every MLIP package ships one (MACE, NequIP, SchNetPack, fairchem): it is how a user runs molecular
dynamics, relaxes a structure or spot-checks a trained model with ASE.  The checkpoint is any trial's
`trainer.pt` (in a study folder: `TRIAL/checkpoint_*/trainer.pt`, named per trial in the report's
trials.csv) or the file `dcnn-ablate train --checkpoint` writes; it holds the weights, the config (model,
preset, sizes, activation and placement, DN) and what the task knew (elements, label transform, units).

Predictions go through the same path as training: the structure becomes an AtomicGraph (radius graph at
the model's cutoff with periodic images, vesin), E' = model(graph), E = C·E' + Σ_S c_S e_S (the label
transform inverted), F = −∂E/∂x by autograd.  For fully periodic cells the stress is the strain derivative:
positions and cell are both multiplied by (1 + ε), σ = (1/V) ∂E/∂ε at ε = 0 (ASE's sign: positive when the
crystal wants to contract), in Voigt order.  Results are in ASE's units, eV and eV/Å (a kcal/mol model's
outputs are converted), float64 throughout.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from dcnn.activations import replace_activations
from dcnn.atomistic.dataset import AtomsDataset, offsets_from_counts
from dcnn.atomistic.graph import collate
from dcnn.atomistic.labels import AtomsLabelTransform
from dcnn.atomistic.neighbors import DatasetNeighbors
from dcnn.atomistic.molecules import to_energy_unit
from dcnn.config import TrainConfig
from dcnn.models import build_model, denormalize, prepare
from dcnn.registry import resolve_config

__all__ = ["DCNNCalculator", "load_potential"]


def load_potential(checkpoint_path: str | os.PathLike, device: str = "cpu"):
    """(model in eval mode, label transform, energy unit, cutoff) rebuilt from a trainer checkpoint."""
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    for key in ("model", "config"):
        if key not in state:
            raise ValueError(f"{checkpoint_path}: not a dcnn-ablate trainer checkpoint (no {key!r}; expected the "
                             f"trainer.pt of a trial, or the file `dcnn-ablate train --checkpoint` writes)")
    info = state.get("inference")
    if not info or info.get("family") != "atomistic":
        raise ValueError(f"{checkpoint_path}: holds no interatomic potential (written by another task family, "
                         f"or by a version without the calculator's inference record)")
    # the stored config's flat form; a checkpoint written before sizes were one mapping holds them as bare keys
    # (hidden, cutoff, ...), which from_dict reads as sizes
    config = TrainConfig.from_dict({**state["config"], "dataset": "", "device": str(device)})
    config = resolve_config(dataclasses.replace(config, dataset=""))  # the model's spec; no data file needed
    data = {"elements": tuple(info["elements"]), "n_atoms": info.get("n_atoms")}
    model = build_model(config.model, config.preset, data, **config.model_sizes())
    if config.activation != "original":
        replace_activations(model, config.activation, config.scope)
    if config.denorm:
        denormalize(model)
    model.load_state_dict(state["model"])
    model = model.to(device=device, dtype=torch.float64).eval()
    labels = AtomsLabelTransform.from_dict(info["labels"])
    return model, labels, info["energy_unit"], info.get("cutoff") or getattr(model, "cutoff", None)


class DCNNCalculator(Calculator):
    """ASE calculator of a trained dcnn-ablate potential: energy, forces, and stress for fully periodic cells."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, checkpoint_path: str | os.PathLike, device: str = "cpu", **kwargs):
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.model, self.labels, self.energy_unit, self.cutoff = load_potential(checkpoint_path, self.device)
        if not (isinstance(self.cutoff, (int, float)) and self.cutoff > 0):
            raise ValueError(f"{checkpoint_path}: the model has no cutoff to build a structure's neighbour list")
        self.elements = tuple(int(z) for z in self.labels.species) or None
        self.to_ev = float(to_energy_unit(1.0, self.energy_unit, "eV"))

    def _graph(self, atoms):
        ds = AtomsDataset(positions=np.asarray(atoms.positions, dtype=np.float64),
                          numbers=np.asarray(atoms.numbers, dtype=np.int64), offsets=offsets_from_counts([len(atoms)]),
                          cells=np.asarray(atoms.cell.array, dtype=np.float64)[None],
                          pbc=np.asarray(atoms.pbc, dtype=bool)[None], energies=np.zeros(1),
                          forces=np.zeros((len(atoms), 3)))
        graph, _, _ = collate(ds, DatasetNeighbors.compute(ds, float(self.cutoff)), np.arange(1),
                              device=self.device, dtype=torch.float64)
        return graph, ds

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        unknown = sorted(set(atoms.numbers.tolist()) - set(self.elements or atoms.numbers.tolist()))
        if unknown:
            raise ValueError(f"DCNNCalculator: elements {unknown} were not in the model's training data "
                             f"(it knows {list(self.elements)})")
        graph, ds = self._graph(atoms)
        graph = prepare(self.model, graph)
        want_stress = "stress" in properties and bool(np.all(atoms.pbc))
        with torch.enable_grad():
            strain = torch.zeros(3, 3, dtype=torch.float64, device=self.device, requires_grad=want_stress)
            deform = torch.eye(3, dtype=torch.float64, device=self.device) + strain
            positions = graph.positions.detach().requires_grad_(True)
            strained = dataclasses.replace(graph, positions=positions @ deform, cells=graph.cells @ deform)
            e_label = self.model(strained)
            species, own = ds.compositions()
            aligned = np.zeros((1, len(self.labels.species)))
            for k, z in enumerate(species):
                match = np.flatnonzero(self.labels.species == z)
                if match.size:
                    aligned[0, int(match[0])] = own[0, k]
            energy = self.labels.inverse_energies(e_label, torch.as_tensor(aligned, dtype=torch.float64,
                                                                           device=self.device))
            wrt = [positions] + ([strain] if want_stress else [])
            grads = torch.autograd.grad(energy.sum(), wrt)
        e_ev = float(energy.detach().sum()) * self.to_ev
        self.results["energy"] = self.results["free_energy"] = e_ev
        self.results["forces"] = (-grads[0]).detach().cpu().numpy() * self.to_ev
        if want_stress:
            sigma = grads[1].detach().cpu().numpy() * self.to_ev / atoms.get_volume()
            sigma = 0.5 * (sigma + sigma.T)
            self.results["stress"] = sigma.flat[[0, 4, 8, 5, 2, 1]]
        elif "stress" in properties:
            raise NotImplementedError("stress is defined for fully periodic cells only (pbc all True)")
