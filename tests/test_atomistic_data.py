"""The atomistic data layer: loaders (molecule npz, rMD17, extxyz, ASE databases, the variable-size npz),
validation of bad inputs, the composition label transform, metrics (EFwT), OOD splits, the bundled EMT set."""
import hashlib
import re
import sqlite3
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io import write

from conftest import REAL_DATA, ROOT
from dcnn.atomistic.dataset import AtomsDataset, concat_ranges
from dcnn.atomistic.io import ATOMS_DATASETS, load_atoms, save_atoms_npz
from dcnn.atomistic.labels import AtomsLabelTransform, baselines, fit_species_energies
from dcnn.atomistic.metrics import atomistic_metrics, efwt, energy_mae_per_atom, force_mae
from dcnn.atomistic.splits import ood_split
from dcnn.atomistic.molecules import DatasetError, load_dataset

CATALYSIS = ATOMS_DATASETS["catalysis"]


def emt_slab(metal, size, adsorbates=("O",), rattle_seed=0, shift=(0.0, 0.0, 0.0)):
    """A labelled EMT slab: fcc111 + adsorbates, bottom layer fixed, rattled, raw forces in the calculator."""
    slab = fcc111(metal, size=size, vacuum=7.0)
    for n, el in enumerate(adsorbates):
        add_adsorbate(slab, el, 1.3, "fcc", offset=(n, n))
    slab.info.pop("adsorbate_info", None)
    slab.rattle(0.05, seed=rattle_seed)
    slab.positions += shift
    slab.set_constraint(FixAtoms(indices=np.flatnonzero(slab.get_tags() == size[2])))
    slab.calc = EMT()
    e, f = slab.get_potential_energy(), slab.get_forces(apply_constraint=False)
    slab.calc = SinglePointCalculator(slab, energy=e, forces=f)
    return slab


@pytest.fixture(scope="module")
def slabs():
    """Six EMT slabs of two sizes and three compositions (13, 13, 28, 28, 14, 14 atoms)."""
    return [emt_slab("Cu", (2, 2, 3), ("O",), 0), emt_slab("Cu", (2, 2, 3), ("O",), 1),
            emt_slab("Pt", (3, 3, 3), ("H",), 2), emt_slab("Pt", (3, 3, 3), ("H",), 3, shift=(7.0, -3.0, 0.0)),
            emt_slab("Ni", (2, 2, 3), ("C", "O"), 4), emt_slab("Ni", (2, 2, 3), ("C", "O"), 5)]


def check_matches_frames(ds: AtomsDataset, frames, atol=1e-7):
    assert len(ds) == len(frames)
    assert ds.n_atoms.tolist() == [len(a) for a in frames]
    for k, a in enumerate(frames):
        s = ds.frame_slice(k)
        np.testing.assert_allclose(ds.positions[s], a.positions, atol=atol)
        assert ds.numbers[s].tolist() == a.numbers.tolist()
        np.testing.assert_allclose(ds.cells[k], a.cell.array, atol=atol)
        assert ds.pbc[k].tolist() == a.pbc.tolist()
        assert ds.energies[k] == pytest.approx(a.calc.results["energy"], abs=atol)
        np.testing.assert_allclose(ds.forces[s], a.calc.results["forces"], atol=atol)
        fixed = np.zeros(len(a), bool)
        fixed[a.constraints[0].index] = True
        assert ds.fixed[s].tolist() == fixed.tolist()


# ------------------------------------------------------------------------------------------- loaders


def test_bundled_molecule_npz_is_the_molecule_loaders_data(ethanol):
    ds = load_atoms("ethanol")
    n, n_atoms = ethanol.positions.shape[:2]
    assert len(ds) == n and ds.n_atoms.tolist() == [n_atoms] * n and ds.offsets[-1] == n * n_atoms
    np.testing.assert_array_equal(ds.positions.reshape(n, n_atoms, 3), ethanol.positions)
    np.testing.assert_array_equal(ds.forces.reshape(n, n_atoms, 3), ethanol.forces)
    np.testing.assert_array_equal(ds.energies, ethanol.energies)
    np.testing.assert_array_equal(ds.numbers[n_atoms:2 * n_atoms], ethanol.numbers)
    assert ds.energy_unit == "kcal/mol" and ds.theory == ethanol.theory and ds.name == "ethanol"
    assert ds.fixed_size and not ds.is_periodic and not ds.cells.any() and not ds.fixed.any()
    species, counts = ds.compositions()
    assert species.tolist() == [1, 6, 8] and (counts == [6, 2, 1]).all()
    back = ds.to_molecule()
    np.testing.assert_array_equal(back.positions, ethanol.positions)
    sub = ds.subset([7, 3])
    np.testing.assert_array_equal(sub.positions, np.concatenate([ethanol.positions[7], ethanol.positions[3]]))
    assert sub.offsets.tolist() == [0, n_atoms, 2 * n_atoms]
    atoms = ds.frame_atoms(5)  # the calculator holds eV, ASE's unit
    assert atoms.get_potential_energy() == pytest.approx(ethanol.energies[5] * 0.0433641, rel=1e-5)


def test_every_bundled_molecule_loads():
    mol = load_dataset("aspirin")
    ds = load_atoms("aspirin")
    assert ds.fixed_size and ds.n_atoms[0] == 21 and ds.formulas()[0] == "C9H8O4"
    np.testing.assert_array_equal(ds.to_molecule().forces, mol.forces)


def test_rmd17_frames_load_as_extxyz_and_as_rmd17_npz(tmp_path):
    """Real rMD17 DFT frames: the extxyz and the rMD17 npz layout give the molecule loader's numbers."""
    path = REAL_DATA / "aspirin-rmd17-5.extxyz"
    mol = load_dataset(path)
    ds = load_atoms(path)
    assert len(ds) == 5 and ds.n_atoms.tolist() == [21] * 5 and ds.energy_unit == "eV"
    np.testing.assert_array_equal(ds.positions.reshape(5, 21, 3), mol.positions)
    np.testing.assert_array_equal(ds.energies, mol.energies)
    np.testing.assert_array_equal(ds.forces.reshape(5, 21, 3), mol.forces)
    npz = tmp_path / "aspirin-rmd17.npz"
    np.savez(npz, coords=mol.positions, nuclear_charges=mol.numbers, energies=mol.energies / 0.0433641,
             forces=mol.forces / 0.0433641)  # rMD17 files are in kcal/mol
    ds2 = load_atoms(npz)
    assert ds2.energy_unit == "kcal/mol" and ds2.fixed_size
    np.testing.assert_allclose(ds2.energies * 0.0433641, ds.energies, rtol=1e-12)
    np.testing.assert_array_equal(ds2.positions, ds.positions)


@pytest.mark.parametrize("labels", ["calculator", "REF"])
def test_extxyz_of_emt_slabs_of_two_sizes(tmp_path, slabs, labels):
    frames = [a.copy() for a in slabs]
    for a, src in zip(frames, slabs):
        if labels == "REF":  # the labels as data, the calculator (if any) ignored
            a.info["REF_energy"] = src.calc.results["energy"]
            a.arrays["REF_forces"] = src.calc.results["forces"].copy()
            a.calc = None
        else:
            a.calc = SinglePointCalculator(a, **src.calc.results)
    path = tmp_path / "slabs.extxyz"
    write(path, frames)
    ds = load_atoms(path)
    check_matches_frames(ds, slabs)
    assert ds.energy_unit == "eV" and ds.is_periodic and not ds.fixed_size
    assert ds.pbc.tolist() == [[True, True, False]] * 6
    assert ds.formulas() == ["Cu12O"] * 2 + ["HPt27"] * 2 + ["CNi12O"] * 2
    species, counts = ds.compositions()
    assert species.tolist() == [1, 6, 8, 28, 29, 78] and counts.sum(1).tolist() == ds.n_atoms.tolist()
    back = ds.frame_atoms(2)
    assert back.get_potential_energy() == pytest.approx(slabs[2].calc.results["energy"])
    assert back.constraints[0].index.tolist() == slabs[2].constraints[0].index.tolist()


def test_variable_size_npz_round_trip_is_byte_reproducible(tmp_path, slabs):
    write(tmp_path / "s.extxyz", slabs)
    ds = load_atoms(tmp_path / "s.extxyz")
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_atoms_npz(a, ds, extra={"seed": 3})
    save_atoms_npz(b, ds, extra={"seed": 3})
    assert a.read_bytes() == b.read_bytes()
    back = load_atoms(a)
    for f in ("positions", "numbers", "offsets", "cells", "pbc", "energies", "forces", "fixed"):
        np.testing.assert_array_equal(getattr(back, f), getattr(ds, f))
    assert back.metadata["seed"] == 3 and back.energy_unit == "eV"
    with np.load(a, allow_pickle=False) as f:
        assert {"R", "z", "N", "E", "F", "cell", "pbc", "energy_unit", "theory", "name"} <= set(f.files)
        assert f["R"].shape == (ds.total_atoms, 3) and f["N"].tolist() == ds.n_atoms.tolist()
    sub = back.subset(np.array([False, False, True, False, True, False]))
    check_matches_frames(sub, [slabs[2], slabs[4]])


def test_concat_ranges():
    assert concat_ranges([0, 10, 4], [2, 3, 0]).tolist() == [0, 1, 10, 11, 12]
    assert concat_ranges([], []).tolist() == []


@pytest.mark.parametrize("suffix", [".db", ".json"])
def test_ase_database_with_selection_query(tmp_path, slabs, suffix):
    import ase.db

    path = tmp_path / f"slabs{suffix}"
    with ase.db.connect(path) as db:
        for a in slabs:
            db.write(a)
        mol = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        mol.calc = SinglePointCalculator(mol, energy=5.0, forces=np.zeros((3, 3)))
        # REF_ labels in row.data win over the calculator's
        db.write(mol, data={"REF_energy": -2.5, "REF_forces": np.ones((3, 3))})
    every = load_atoms(path)
    assert len(every) == 7 and every.energies[-1] == -2.5 and (every.forces[-3:] == 1).all()
    assert not every.pbc[-1].any() and every.pbc[:6].all(axis=0).tolist() == [True, True, False]
    small = load_atoms(f"{path}?natoms<20,pbc=TTF")
    check_matches_frames(small, [slabs[0], slabs[1], slabs[4], slabs[5]])
    assert small.metadata["selection"] == "natoms<20,pbc=TTF"
    assert load_atoms(f"{path}?Pt").formulas() == ["HPt27"] * 2
    water = load_atoms(f"{path}?natoms=3,pbc=FFF")  # REF_ data kept through the selection
    assert len(water) == 1 and water.energies[0] == -2.5 and (water.forces == 1).all()


# ------------------------------------------------------------------------------------------ bad inputs


def _npz_layout(tmp_path, slabs, name="bad.npz", **override):
    write(tmp_path / "ok.extxyz", slabs)
    ds = load_atoms(tmp_path / "ok.extxyz")
    arrays = {"R": ds.positions, "z": ds.numbers, "N": ds.n_atoms, "E": ds.energies, "F": ds.forces,
              "cell": ds.cells, "pbc": ds.pbc, "energy_unit": np.array("eV")}
    arrays.update(override)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path, ds


def assert_one_line_error(source, *fragments):
    with pytest.raises(DatasetError) as e:
        load_atoms(source)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert re.search(f, msg), (f, msg)
    return msg


def test_coincident_atoms_across_a_periodic_boundary_are_refused(tmp_path):
    cell = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 20.0]])
    # x = 0.02 and x = 4.97: 4.95 Å apart in space, 0.05 Å by minimum image across the x boundary
    atoms = Atoms("Cu2", positions=[[0.02, 1, 5], [4.97, 1, 5]], cell=cell, pbc=(True, True, False))
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((2, 3)))
    ok = atoms.copy()
    ok.positions[1, 0] = 2.5
    ok.calc = SinglePointCalculator(ok, energy=0.0, forces=np.zeros((2, 3)))
    write(tmp_path / "mic.extxyz", [ok, atoms])
    assert_one_line_error(tmp_path / "mic.extxyz", r"mic\.extxyz", r"atoms 0 and 1", r"0\.05 Å apart",
                    "minimum image", r"frame 1\b", r"cell shift \(-?1, 0, 0\)")
    atoms.pbc = False  # without periodicity the same positions are fine
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((2, 3)))
    write(tmp_path / "open.extxyz", atoms)
    assert len(load_atoms(tmp_path / "open.extxyz")) == 1


def test_an_atom_on_its_own_image_in_a_tiny_cell_is_refused(tmp_path):
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=[[0.05, 0, 0], [0, 4, 0], [0, 0, 4]], pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((1, 3)))
    write(tmp_path / "tiny.extxyz", atoms)
    assert_one_line_error(tmp_path / "tiny.extxyz", "atom 0 and its own periodic image", "frame 0")


def test_nan_forces_in_frame_k_name_the_frame(tmp_path, slabs):
    forces = load_atoms_from(tmp_path, slabs).forces.copy()
    forces[13 + 13 + 5, 1] = np.nan  # frame 2, atom 5
    path, _ = _npz_layout(tmp_path, slabs, F=forces)
    assert_one_line_error(path, r"bad\.npz", "forces contain NaN/inf in 1 frame", r"first at frame 2 \(atom 5\)")


def load_atoms_from(tmp_path, frames):
    write(tmp_path / "frames.extxyz", frames)
    return load_atoms(tmp_path / "frames.extxyz")


def test_degenerate_periodic_cell_is_refused(tmp_path, slabs):
    path, ds = _npz_layout(tmp_path, slabs)
    cells = ds.cells.copy()
    cells[3, 1] = cells[3, 0] * 2  # a, b parallel: the periodic plane has zero area
    path, _ = _npz_layout(tmp_path, slabs, cell=cells)
    assert_one_line_error(path, r"degenerate cell in frame 3", "periodic along xy", "area")
    cells = np.repeat(np.eye(3)[None] * 5, 6, 0)
    cells[0, 2] = 0
    path, _ = _npz_layout(tmp_path, slabs, cell=cells, pbc=np.ones((6, 3), bool))
    assert_one_line_error(path, r"degenerate cell in frame 0", "periodic along xyz", r"volume \|det\|")


def test_text_file_named_npz_and_pickles_are_refused(tmp_path, slabs):
    (tmp_path / "text.npz").write_text("R z N E F\n1 2 3\n")
    assert_one_line_error(tmp_path / "text.npz", r"text\.npz", "not an npz archive", "starting with")
    path, _ = _npz_layout(tmp_path, slabs, name="pickled.npz", theory=np.array([{"a": 1}], dtype=object))
    assert_one_line_error(path, r"pickled\.npz", "pickled objects are not accepted")


def test_empty_database_selection_and_non_databases_are_refused(tmp_path, slabs):
    import ase.db

    path = tmp_path / "slabs.db"
    with ase.db.connect(path) as db:
        for a in slabs:
            db.write(a)
    assert_one_line_error(f"{path}?natoms>100", r"slabs\.db\?natoms>100", "matched no rows", r"database has 6")
    (tmp_path / "text.db").write_text("not a database")
    assert_one_line_error(tmp_path / "text.db", r"text\.db", "not an ASE database")
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE measurements (x REAL)")
    con.commit()
    con.close()
    before = other.read_bytes()
    assert_one_line_error(other, "not an ASE database", "measurements")
    assert other.read_bytes() == before  # never touched (ase.db.connect would add its tables)
    (tmp_path / "bad.json").write_text('{"not": "a database"')
    assert_one_line_error(tmp_path / "bad.json", r"bad\.json", "not an ASE database")
    assert_one_line_error(f"{tmp_path / 'missing.db'}?natoms<3", "nor an existing file", "missing.db")
    write(tmp_path / "s.extxyz", slabs)
    assert_one_line_error(f"{tmp_path / 's.extxyz'}?natoms<3", "applies to ASE databases")


@pytest.mark.parametrize("override, fragments", [
    ({"z": "out_of_range"}, [r"atomic number 130 at atom 2 of frame 1 is outside 1\.\.118"]),
    ({"E": "complex"}, ["energies are complex numbers"]),
    ({"N": "short"}, [r"positions must have shape \[atoms, 3\]"]),
    ({"energy_unit": None}, ["missing field 'energy_unit'"]),
    ({"energy_unit": np.array("hartree")}, ["energy unit 'hartree' is not one of"]),
    ({"E": "nan"}, [r"energies contain NaN/inf in 1 frame\(s\), first at frame 4"]),
    ({"N": None}, [r"missing keys \['N'\]", "MD17 R, z, E, F"]),
    ({"pbc": None}, ["has cell without pbc"]),
])
def test_bad_npz_fields_each_give_one_line(tmp_path, slabs, override, fragments):
    ds = load_atoms_from(tmp_path, slabs)
    value = next(iter(override.values()))
    key = next(iter(override))
    if isinstance(value, str):
        value = {"out_of_range": lambda: np.where(np.arange(ds.total_atoms) == 15, 130, ds.numbers),
                 "complex": lambda: ds.energies + 1j,
                 "short": lambda: ds.n_atoms - np.eye(6, dtype=np.int64)[0],
                 "nan": lambda: np.where(np.arange(6) == 4, np.nan, ds.energies)}[value]()
    path, _ = _npz_layout(tmp_path, slabs, **{key: value})
    assert_one_line_error(path, r"bad\.npz", *fragments)


def test_extxyz_frame_without_labels_names_the_frame(tmp_path, slabs):
    frames = [a.copy() for a in slabs[:3]]
    for a, src in zip(frames, slabs):
        a.calc = SinglePointCalculator(a, **src.calc.results)
    frames[1].calc = SinglePointCalculator(frames[1], energy=1.0)  # no forces
    write(tmp_path / "noforces.extxyz", frames)
    assert_one_line_error(tmp_path / "noforces.extxyz", r"noforces\.extxyz", "frame 1 has no forces")
    frames[1].calc = None
    write(tmp_path / "nolabels.extxyz", frames)
    assert_one_line_error(tmp_path / "nolabels.extxyz", "frame 1 has no energy")


def test_unknown_bundled_name_and_max_z(tmp_path):
    assert_one_line_error("no-such-set", "nor an existing file", "catalysis")
    with pytest.raises(DatasetError, match=r"atomic number 8 at atom 2 of frame 0 exceeds"):
        load_atoms("ethanol", max_z=8)


# ------------------------------------------------------------------------------------------ labels


def test_species_energies_recovered_exactly_from_compositions():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 30, size=(200, 5))
    e_true = np.array([-0.5, -13.6, -1030.0, -2045.2, -8.1])
    energies = counts @ e_true
    np.testing.assert_allclose(fit_species_energies(counts, energies), e_true, atol=1e-10)
    noisy = energies + rng.normal(0, 0.05, len(energies))
    np.testing.assert_allclose(fit_species_energies(counts, noisy), e_true, atol=0.01)


def test_one_composition_gives_the_mean_like_todays_transform(ethanol):
    from legacy_dense.labels import LabelTransform

    ds = load_atoms("ethanol")
    species, counts = ds.compositions()
    train = np.arange(0, 1600)
    t = AtomsLabelTransform.fit(species, counts[train], ds.energies[train], shift=True, scale=1e3)
    offsets = t.offsets(counts)
    np.testing.assert_allclose(offsets, ds.energies[train].mean(), rtol=1e-13)
    old = LabelTransform.fit(ethanol.numbers, ethanol.energies[train], shift=True, scale=1e3)
    np.testing.assert_allclose(t.energies(ds.energies, counts), old.energies(ethanol.energies), atol=1e-9)
    # exact inverse, numpy and torch alike
    np.testing.assert_allclose(t.inverse_energies(t.energies(ds.energies, counts), counts), ds.energies, rtol=1e-14)
    np.testing.assert_allclose(t.inverse_forces(t.forces(ds.forces)), ds.forces, rtol=1e-14)
    import torch

    e = torch.tensor(ds.energies[:20])
    c = torch.tensor(counts[:20])
    back = t.inverse_energies(t.energies(e, c), c)
    assert isinstance(back, torch.Tensor) and torch.allclose(back, e, rtol=1e-14)
    d = t.to_dict()
    assert d["scale"] == 1e3 and set(d["atomic_energies"]) == {"1", "6", "8"}
    again = AtomsLabelTransform.from_dict(d)
    np.testing.assert_allclose(again.offsets(counts), offsets)


def test_transform_on_many_compositions_and_an_unseen_species():
    rng = np.random.default_rng(1)
    species = np.array([1, 8, 29, 78])
    counts = rng.integers(1, 20, size=(100, 4))
    counts[80:, 0] = 0  # species 1 ...
    counts[:80, 3] = 0  # ... and 78 seen only by some frames
    e_true = np.array([-3.4, -7.9, -4.1, -6.0])
    energies = counts @ e_true
    train = np.arange(80)  # no Pt (78) in training
    t = AtomsLabelTransform.fit(species, counts[train], energies[train], shift=True, scale=10.0)
    assert t.unfitted_species == (78,)
    np.testing.assert_allclose(t.species_energies[:3], e_true[:3], atol=1e-10)
    assert t.species_energies[3] == 0.0
    np.testing.assert_allclose(t.energies(energies[train], counts[train]), 0.0, atol=1e-10)
    plain = AtomsLabelTransform.fit(species, counts[train], energies[train], shift=False, scale=10.0)
    np.testing.assert_allclose(plain.energies(energies, counts), energies / 10)


def test_baselines_per_structure_and_per_atom():
    train_e, train_n = np.array([-10.0, -20.0]), np.array([10, 20])  # both −1 eV per atom
    e, n = np.array([-12.0, -40.0]), np.array([12, 40])
    forces = np.array([[1.0, -2.0, 3.0], [0.0, 0.0, -6.0]])
    b = baselines(train_e, train_n, e, n, forces)
    assert b["energy"] == pytest.approx((3 + 25) / 2)  # mean −15
    assert b["energy_per_atom"] == pytest.approx(0.0)  # N × (−1) is exact
    assert b["force"] == pytest.approx(2.0) and b["energy_scale"] == pytest.approx(26.0)
    counts_train, counts = np.array([[10], [20]]), np.array([[12], [40]])
    b = baselines(train_e, train_n, e, n, forces, counts_train, counts)
    assert b["energy_composition"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(baselines(train_e, train_n, e[:0], n[:0], forces[:0])["energy"])


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_and_efwt_on_hand_made_numbers():
    n_atoms = np.array([2, 1, 3])
    true_e = np.array([1.0, 2.0, 3.0])
    pred_e = np.array([1.01, 2.05, 3.0])  # |ΔE| 0.01 ok, 0.05 too big, 0 ok
    true_f = np.zeros((6, 3))
    pred_f = np.zeros((6, 3))
    pred_f[0, 2] = 0.025  # structure 0: within 0.03
    pred_f[4, 1] = -0.04  # structure 2: one component beyond 0.03
    assert efwt(pred_e, true_e, pred_f, true_f, n_atoms, "eV") == pytest.approx(1 / 3)
    free = np.array([True, True, True, True, False, True])  # the bad atom of structure 2 is fixed
    assert efwt(pred_e, true_e, pred_f, true_f, n_atoms, "eV", free=free) == pytest.approx(2 / 3)
    m = atomistic_metrics(pred_e, true_e, pred_f, true_f, n_atoms, "eV")
    assert m["energy"] == pytest.approx(0.02) and m["efwt"] == pytest.approx(1 / 3)
    assert m["energy_per_atom"] == pytest.approx((0.01 / 2 + 0.05) / 3)
    assert m["force"] == pytest.approx(0.065 / 18)
    assert force_mae(pred_f, true_f, free) == pytest.approx(0.025 / 15)
    assert energy_mae_per_atom([2.0], [0.0], [4]) == 0.5
    with pytest.warns(UserWarning, match="EFwT is defined in eV"):
        assert np.isnan(efwt(pred_e, true_e, pred_f, true_f, n_atoms, "kcal/mol"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = atomistic_metrics(pred_e, true_e, pred_f, true_f, n_atoms, "kcal/mol")
    assert np.isnan(m["efwt"]) and "kcal/mol" in m["efwt_note"]


# ------------------------------------------------------------------------------------------ bundled EMT set


@pytest.fixture(scope="module")
def catalysis():
    return load_atoms("catalysis")


def test_bundled_catalysis_set(catalysis):
    ds = catalysis
    assert ds.energy_unit == "eV" and ds.theory.startswith("EMT") and ds.name == "catalysis-emt"
    assert 1500 <= len(ds) <= 2500 and ds.is_periodic and not ds.fixed_size
    assert ds.pbc.tolist() == [[True, True, False]] * len(ds)
    formulas = sorted(set(ds.formulas()))
    assert len(formulas) >= 12 and {"HCu12", "NPt27", "CNi12O"} <= set(formulas)
    assert set(ds.n_atoms.tolist()) == {13, 14, 28, 29}
    assert ds.fixed.sum() == np.where(ds.n_atoms < 20, 4, 9).sum()  # the bottom layer of 2×2 and 3×3 slabs
    z = ds.positions[:, 2]
    assert (ds.cells[:, 2, 2] - np.maximum.reduceat(z, ds.offsets[:-1]) >= 6.5).all()  # 7.5 Å vacuum at the start
    metal = ds.numbers > 10
    top = np.maximum.reduceat(np.where(metal, z, -np.inf), ds.offsets[:-1])
    highest_adsorbate = np.maximum.reduceat(np.where(metal, -np.inf, z), ds.offsets[:-1])
    assert (highest_adsorbate - top).max() < 3.0  # every adsorbate stays on the surface (none desorbed)
    with np.load(CATALYSIS, allow_pickle=False) as f:
        assert float(f["temperature_K"]) == 600 and int(f["seed"]) == 0
        assert abs(f["frame_temperature_K"].mean() - 600) < 0.15 * 600
    assert CATALYSIS.stat().st_size < 5e6


def test_bundled_catalysis_checksum_and_command_in_data_readme():
    readme = (ROOT / "data" / "README.md").read_text()
    section = readme.split(f"## `{CATALYSIS.name}`", 1)[1].split("\n## ", 1)[0]
    expected = re.search(r"sha256\s+([0-9a-f]{64})", section).group(1)
    assert hashlib.sha256(CATALYSIS.read_bytes()).hexdigest() == expected
    assert "generate_catalysis(" in section and "not the DFT" in section


def test_bundled_catalysis_frames_are_what_the_generator_makes(tmp_path, catalysis):
    """Every system's MD has its own seeded generator, so a shorter run reproduces the first frames of the
    bundled file (the full run, ≈ 2.5 min, is `make data`): bit for bit on the CPU that made it, within
    rounding on another one (an Intel Xeon's positions differ from the AMD-made file by up to 4.2e-13 Å after
    30 MD steps: issue 27).  The tolerances are 1e4× that and far below any physical change (a different seed,
    step or temperature moves positions by ≥ 1e-3 Å); run twice here, the bytes must still agree."""
    from dcnn.atomistic.generate import CATALYSIS_SYSTEMS, generate_catalysis

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    ds, formulas = generate_catalysis(a, frames_per_system=3, systems=CATALYSIS_SYSTEMS[:2], progress=None)
    generate_catalysis(b, frames_per_system=3, systems=CATALYSIS_SYSTEMS[:2], progress=None)
    assert a.read_bytes() == b.read_bytes() and formulas == ["Cu12O", "HCu12"]
    per_system = len(catalysis) // len(CATALYSIS_SYSTEMS)
    bundled = catalysis.subset([0, 1, 2, per_system, per_system + 1, per_system + 2])
    for f in ("numbers", "offsets", "cells", "fixed"):  # set up, not computed: exact
        np.testing.assert_array_equal(getattr(ds, f), getattr(bundled, f))
    np.testing.assert_allclose(ds.positions, bundled.positions, rtol=0, atol=1e-8)  # Å
    np.testing.assert_allclose(ds.energies, bundled.energies, rtol=0, atol=1e-8)  # eV
    np.testing.assert_allclose(ds.forces, bundled.forces, rtol=0, atol=1e-7)  # eV/Å


def test_ood_split_holds_out_every_frame_with_an_element(catalysis):
    formulas = np.array(catalysis.formulas())
    for element in ("N", "C", "Pt"):
        train_val, test = ood_split(catalysis, element)
        assert len(train_val) + len(test) == len(catalysis) and not set(train_val) & set(test)
        assert all(element in re.findall(r"[A-Z][a-z]?", f) for f in formulas[test])
        assert not any(element in re.findall(r"[A-Z][a-z]?", f) for f in formulas[train_val])
    assert len(ood_split(catalysis, 6)[1]) == len(ood_split(catalysis, "C")[1]) > 0
    with pytest.raises(ValueError, match="no frame contains Au"):
        ood_split(catalysis, "Au")
    with pytest.raises(ValueError, match="not an element symbol"):
        ood_split(catalysis, "Xx")
    ethanol = load_atoms("ethanol")
    with pytest.raises(ValueError, match="every frame contains C"):
        ood_split(ethanol, "C")
