"""Out-of-distribution splits by composition: hold out every frame that contains an element.

OC20/OC22 report "out-of-distribution" test sets (unseen adsorbates or catalysts) next to in-distribution
ones; the bundled EMT slabs allow the same question — does a model (and its label transform) generalise to
an element it never saw? — by holding out an adsorbate element (N, C, H, O) or a metal (Cu, Pt, Ni).
"""
from __future__ import annotations

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from dcnn.atomistic.dataset import AtomsDataset

__all__ = ["ood_split"]


def ood_split(dataset: AtomsDataset, hold_out: str | int) -> tuple[np.ndarray, np.ndarray]:
    """(train_val, test) frame indices, ascending: test = every frame containing element `hold_out` (a
    symbol such as "N" or an atomic number), train_val = the others, to be split further as usual
    (`dcnn.atomistic.molecules.split_indices` on their count).  Refuses an element that is absent or in every frame."""
    if isinstance(hold_out, str):
        if hold_out not in atomic_numbers:
            raise ValueError(f"hold_out {hold_out!r} is not an element symbol (e.g. 'N', 'Pt')")
        z = atomic_numbers[hold_out]
    else:
        z = int(hold_out)
        if not 1 <= z < len(chemical_symbols):
            raise ValueError(f"hold_out {hold_out!r} is not an atomic number")
    species, counts = dataset.compositions()
    present = {int(s): chemical_symbols[int(s)] for s in species}
    if z not in present:
        raise ValueError(f"{dataset.source or dataset.name}: no frame contains {chemical_symbols[z]} (elements "
                         f"present: {', '.join(present.values())})")
    has = counts[:, int(np.flatnonzero(species == z)[0])] > 0
    if has.all():
        raise ValueError(f"{dataset.source or dataset.name}: every frame contains {chemical_symbols[z]}: holding "
                         f"it out leaves nothing to train on")
    return np.flatnonzero(~has), np.flatnonzero(has)
