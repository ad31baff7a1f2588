"""A data set's (train, val, test) frames (`split_frames`: seeded counts, or the paper's fractions) and
out-of-distribution splits by composition: hold out every frame that contains an element.

OC20/OC22 report "out-of-distribution" test sets (unseen adsorbates or catalysts) next to in-distribution
ones; the bundled EMT slabs allow the same question — does a model (and its label transform) generalise to
an element it never saw? — by holding out an adsorbate element (N, C, H, O) or a metal (Cu, Pt, Ni).
"""
from __future__ import annotations

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from dcnn.atomistic.dataset import AtomsDataset
from dcnn.atomistic.molecules import SplitSizeError, split_indices
from dcnn.config import TrainConfig

__all__ = ["ood_split", "split_frames", "official_split", "split_origin"]

# the validation share carved from an official training set when n_val is not given (MACE's valid_fraction)
OFFICIAL_VAL_FRACTION = 0.1


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


def split_frames(n: int, config: TrainConfig, dataset: AtomsDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) frame indices: seeded random counts (or the paper's 80/10/10 fractions), or with
    `split = "ood:<element>"` every frame containing the element as the test split and the others split
    into train and validation (OC20/OC22's out-of-distribution test sets).  A data set with a test set of its
    own (`AtomsDataset.test_mask`: a benchmark's official split, or a `test_dataset` file) tests on exactly
    those frames, all of them; validation is carved from the rest (seeded), training is what remains."""
    seed = config.split_seed if config.split_seed is not None else 0
    if dataset.has_own_test_set and config.split == "random":
        return official_split(dataset, seed, config.n_train, config.n_val)
    if config.split.startswith("ood:"):
        rest, test = ood_split(dataset, config.split[4:])
        n_val = config.n_val if config.n_val is not None else int(round(0.1 * len(rest)))
        n_train = config.n_train if config.n_train is not None else len(rest) - n_val
        train, val, _ = split_indices(len(rest), seed, n_train, n_val, 0)
        if config.n_test is not None and config.n_test < len(test):
            test = np.sort(np.random.default_rng(seed).permutation(test)[:config.n_test])
        return rest[train], rest[val], test
    return split_indices(n, seed, config.n_train, config.n_val, config.n_test)


def official_split(dataset: AtomsDataset, seed: int, n_train: int | None,
                   n_val: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) of a data set with its own test set: test = every frame it marks; validation
    `n_val` frames (default 10 %) drawn with `seed` from the others; training `n_train` of the rest (default
    all of them).  Counts that do not fit are refused (SplitSizeError), not trimmed."""
    test = np.flatnonzero(dataset.test_mask)
    rest = np.flatnonzero(~dataset.test_mask)
    given = f"n_train={'all' if n_train is None else n_train}, n_val={'all' if n_val is None else n_val}"
    n_val = n_val if n_val is not None else max(1, int(round(OFFICIAL_VAL_FRACTION * len(rest))))
    n_train = n_train if n_train is not None else len(rest) - n_val
    if n_train + n_val > len(rest) or n_train <= 0 or n_val <= 0:
        raise SplitSizeError(f"{dataset.source or dataset.name} has its own test set ({len(test)} frames) and "
                             f"{len(rest)} frames for training and validation, too few for {given}: use "
                             f"--n-train all --n-val all (in YAML n_train: null, n_val: null) to validate on "
                             f"{OFFICIAL_VAL_FRACTION:.0%} of them and train on the rest")
    train, val, _ = split_indices(len(rest), seed, n_train, n_val, 0)
    return rest[train], rest[val], test


def split_origin(config: TrainConfig, dataset: AtomsDataset) -> str:
    """Where the test frames came from, in words for the report."""
    if config.split.startswith("ood:"):
        return f"every frame holding {config.split[4:]} (out of distribution)"
    if dataset.has_own_test_set:
        what = f"the test file {config.test_dataset}" if config.test_dataset else "the data set's official test split"
        return f"{what} ({int(dataset.test_mask.sum())} frames, all of them)"
    return "drawn at random from the data set (split seed)"
