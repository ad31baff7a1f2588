"""Any atomistic data set: frames of any size, composition and cell (molecules, slabs, bulk) on one layout.

dataset.py holds the concatenated frames (`AtomsDataset`); io.py loads and validates files (MD17/rMD17
npz, the variable-size npz, extxyz and whatever ASE reads, ASE databases); neighbors.py builds periodic
neighbour lists with vesin; graph.py turns frames into the one batch every model takes (`AtomicGraph`);
labels.py fits per-species reference energies over compositions; metrics.py measures energy/force errors
and EFwT; splits.py makes out-of-distribution splits by element; generate.py makes the bundled EMT slabs.
Import from the submodules (this package imports nothing heavy on its own).
"""
