import hashlib
import re

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from conftest import REAL_DATA, ROOT
from dcnn.atomistic.molecules import (BUNDLED_DATASETS, DEFAULT_DATASET, DatasetError, MoleculeDataset, load_dataset,
                       resolve_dataset, save_npz, split_indices, to_energy_unit)
from dcnn.atomistic.xtb import generate, xtb_calculator

KCAL_PER_EV = 1 / (units.kcal / units.mol)


def test_bundled_dataset_is_md17_layout_with_units(ethanol):
    assert len(ethanol) == 2000 and ethanol.n_atoms == 9
    assert ethanol.numbers.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    assert ethanol.energy_unit == "kcal/mol" and ethanol.theory.startswith("GFN2-xTB")
    assert -7200 < ethanol.energies.mean() < -7100  # GFN2 ethanol ≈ −11.4 Eh
    with np.load(DEFAULT_DATASET, allow_pickle=False) as f:
        assert set(f.files) >= {"R", "z", "E", "F", "theory", "name", "temperature_K", "seed"}
        t_mean = f["frame_temperature_K"].mean()
    assert abs(t_mean - 500) <= 0.15 * 500


@pytest.mark.parametrize("name", sorted(BUNDLED_DATASETS))
def test_bundled_checksum_matches_data_readme(name):
    """data/README.md has a section per bundled file, headed by its name, with its `sha256  HEX` line."""
    path = BUNDLED_DATASETS[name]
    readme = (ROOT / "data" / "README.md").read_text()
    section = readme.split(f"## `{path.name}`", 1)[1].split("\n## ", 1)[0]
    expected = re.search(r"sha256\s+([0-9a-f]{64})", section).group(1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
    assert f"--out data/{path.name}" in section  # the command that made it


def test_bundled_aspirin_is_gfn2_at_500K_in_kcal_per_mol():
    ds = load_dataset(BUNDLED_DATASETS["aspirin"], max_z=100)
    assert len(ds) >= 1000 and ds.n_atoms == 21 and sorted(set(ds.numbers.tolist())) == [1, 6, 8]
    assert ds.energy_unit == "kcal/mol" and ds.theory.startswith("GFN2-xTB") and ds.name == "aspirin"
    assert -25_500 < ds.energies.mean() < -24_000  # GFN2-xTB aspirin ≈ −39.6 Eh (not the DFT −406,000)
    assert np.abs(ds.forces.sum(axis=1)).max() < 1e-8  # raw forces: no net force
    atoms = Atoms(numbers=ds.numbers, positions=ds.positions[1234])  # a stored frame = a direct GFN2 call
    atoms.calc = xtb_calculator()
    assert ds.energies[1234] == pytest.approx(atoms.get_potential_energy() * KCAL_PER_EV, abs=1e-6)
    np.testing.assert_allclose(ds.forces[1234], atoms.get_forces() * KCAL_PER_EV, atol=1e-2)
    with np.load(BUNDLED_DATASETS["aspirin"], allow_pickle=False) as f:
        assert float(f["temperature_K"]) == 500 and int(f["seed"]) == 0
        assert abs(f["frame_temperature_K"].mean() - 500) <= 0.1 * 500


@pytest.mark.parametrize("name", sorted(BUNDLED_DATASETS))
def test_data_info_reports_theory_and_units(name, capsys):
    import json

    from orchestrator.cli import main

    assert main(["data", "info", str(BUNDLED_DATASETS[name])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == name and info["frames"] == 2000
    assert info["theory"] == "GFN2-xTB (tblite 0.8.0)"
    assert (info["energy_unit"], info["force_unit"], info["length_unit"]) == ("kcal/mol", "kcal/mol/Å", "Å")
    assert float(info["temperature_K"]) == 500 and info["seed"] == "0"


def test_resolve_dataset_names_and_paths(tmp_path, monkeypatch):
    assert resolve_dataset("ethanol") == DEFAULT_DATASET and DEFAULT_DATASET.is_file()
    assert resolve_dataset("aspirin") == BUNDLED_DATASETS["aspirin"]
    f = tmp_path / "sub" / "my.npz"
    f.parent.mkdir()
    f.write_bytes(b"x")
    assert resolve_dataset(str(f)) == f  # absolute paths as given
    assert resolve_dataset("sub/my.npz", base=tmp_path) == f  # relative to base
    monkeypatch.chdir(f.parent)
    assert resolve_dataset("my.npz") == f and resolve_dataset("my.npz").is_absolute()  # default base: CWD
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_dataset("~/sub/my.npz") == f
    for bad in ("benzene", "missing.npz", ""):
        with pytest.raises(DatasetError, match=f"{bad!r} is neither a bundled data set \\(ethanol, aspirin\\)"):
            resolve_dataset(bad)


def test_stored_frame_equals_direct_tblite_call_in_kcal_per_mol(ethanol):
    for k in (0, 1234):
        atoms = Atoms(numbers=ethanol.numbers, positions=ethanol.positions[k])
        atoms.calc = xtb_calculator()
        assert ethanol.energies[k] == pytest.approx(atoms.get_potential_energy() * KCAL_PER_EV, abs=1e-6)
        # MD restarts each SCF from the previous wavefunction: forces agree to SCF tolerance, not 1e-6
        np.testing.assert_allclose(ethanol.forces[k], atoms.get_forces() * KCAL_PER_EV, atol=1e-2)
    assert np.abs(ethanol.forces.sum(axis=1)).max() < 1e-8  # raw forces: no net force on the molecule


def test_generator_is_deterministic_and_thermostatted(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    ds = generate("ethanol", 40, 500, 7, a, equilibration_steps=200, progress=None)
    generate("ethanol", 40, 500, 7, b, equilibration_steps=200, progress=None)
    assert a.read_bytes() == b.read_bytes()  # bit-identical
    generate("ethanol", 40, 500, 8, b, equilibration_steps=200, progress=None, overwrite=True)
    assert a.read_bytes() != b.read_bytes()
    assert np.all(np.diff(ds.energies) != 0)
    with pytest.raises(FileExistsError):
        generate("ethanol", 5, 500, 7, a, progress=None)
    loaded = load_dataset(a)
    np.testing.assert_array_equal(loaded.positions, ds.positions)
    assert float(loaded.metadata["temperature_K"]) == 500 and loaded.metadata["seed"] == "7"


def test_generator_aspirin_start_geometry(tmp_path):
    ds = generate("aspirin", 2, 300, 0, tmp_path / "asp.npz", equilibration_steps=5, progress=None)
    assert ds.n_atoms == 21 and sorted(set(ds.numbers.tolist())) == [1, 6, 8]


def test_real_rmd17_extxyz_loads_in_ev():
    ds = load_dataset(REAL_DATA / "aspirin-rmd17-5.extxyz")
    assert len(ds) == 5 and ds.n_atoms == 21 and ds.energy_unit == "eV"
    # rMD17 aspirin total energies are about −406,000 kcal/mol (PBE/def2-SVP)
    kcal = to_energy_unit(ds.energies, "eV", "kcal/mol")
    assert np.all((kcal > -407_000) & (kcal < -405_000))
    assert 0.1 < np.abs(ds.forces).mean() < 10  # eV/Å


def _frames(ds: MoleculeDataset, ref_keys: bool):
    frames = []
    for k in range(len(ds)):
        a = Atoms(numbers=ds.numbers, positions=ds.positions[k])
        e_ev = to_energy_unit(ds.energies[k], ds.energy_unit, "eV")
        f_ev = to_energy_unit(ds.forces[k], ds.energy_unit, "eV")
        if ref_keys:
            a.info["REF_energy"] = e_ev
            a.arrays["REF_forces"] = f_ev
        else:
            a.calc = SinglePointCalculator(a, energy=e_ev, forces=f_ev)
        frames.append(a)
    return frames


@pytest.mark.parametrize("fmt", ["md17", "rmd17", "extxyz-ref", "extxyz-calc"])
def test_round_trip_every_format(fmt, ethanol, tmp_path):
    small = ethanol.subset(np.arange(6))
    path = tmp_path / ("d.npz" if "md17" in fmt else "d.extxyz")
    if fmt == "md17":
        save_npz(path, small)
    elif fmt == "rmd17":
        np.savez(path, coords=small.positions, nuclear_charges=small.numbers, energies=small.energies,
                 forces=small.forces)
    else:
        write(path, _frames(small, ref_keys=fmt == "extxyz-ref"), format="extxyz")
    back = load_dataset(path)
    atol = 1e-12 if "md17" in fmt else 1e-6  # extxyz is text with 8 decimals
    e = to_energy_unit(back.energies, back.energy_unit, "kcal/mol")
    f = to_energy_unit(back.forces, back.energy_unit, "kcal/mol")
    np.testing.assert_allclose(back.positions, small.positions, rtol=0, atol=atol)
    np.testing.assert_allclose(e, small.energies, rtol=1e-12)
    np.testing.assert_allclose(f, small.forces, rtol=0, atol=atol)
    assert back.numbers.tolist() == small.numbers.tolist()


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD = dict(R=np.zeros((3, 2, 3)) + np.arange(2)[None, :, None], z=np.array([1, 8]),
            E=np.zeros(3), F=np.zeros((3, 2, 3)))


@pytest.mark.parametrize("change,message", [
    (dict(F=None), r"missing keys \['F'\]"),
    (dict(E=np.zeros(4)), r"energies must have shape \[3\]"),
    (dict(F=np.zeros((3, 2, 2))), "forces must have the shape of positions"),
    (dict(R=np.full((3, 2, 3), np.nan)), "positions contain NaN/inf in 3 frame"),
    (dict(E=np.array([0.0, np.inf, 0.0])), "energies contain NaN/inf in 1 frame.*frame 1"),
    (dict(z=np.array([1, 8, 8])), "wrong atom count: 3 atomic numbers but positions have 2"),
    (dict(z=np.array([1.0, 8.5])), "atomic numbers must be integers"),
    (dict(z=np.array([0, 8])), "must lie in 1..118"),
    (dict(R=np.zeros((0, 2, 3)), E=np.zeros(0), F=np.zeros((0, 2, 3))), "no frames"),
    (dict(R=np.zeros((3, 2))), r"positions must have shape \[frames, atoms, 3\]"),
])
def test_bad_npz_named_in_error(change, message, tmp_path):
    arrays = {**GOOD, **change}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("field,value,message", [
    ("R", GOOD["R"] + 0j, r"positions are complex numbers \(dtype complex128, all imaginary parts zero\)"),
    ("R", GOOD["R"] + np.array([0, 0, 1j])[:, None, None],
     r"positions are complex numbers \(dtype complex128, nonzero imaginary parts first at frame 2\)"),
    ("E", np.array([0, 1j, 0]), r"energies are complex.*first at frame 1"),
    ("F", np.zeros((3, 2, 3), dtype=np.complex64), r"forces are complex numbers \(dtype complex64, all imag"),
    ("z", np.array([1, 8], dtype=complex), r"atomic numbers are complex numbers"),
])
def test_complex_arrays_are_refused(field, value, message, tmp_path):
    """Any complex dtype is refused, even with zero imaginary parts (np.asarray(float) used to drop them)."""
    path = _npz(tmp_path / "complex.npz", **{**GOOD, field: value})
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(path)
    assert str(path) in str(err.value)


def _with_positions(frames):
    R = np.array(frames, dtype=float)
    return dict(R=R, z=np.arange(1, R.shape[1] + 1), E=np.zeros(len(R)), F=np.zeros_like(R))


@pytest.mark.parametrize("frames,message", [
    ([[[0, 0, 0], [0, 0, 0], [0, 0, 0]]], r"atoms 0 and 1 \(Z=1, 2\) are 0 Å apart in frame 0"),  # all zero
    ([[[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0, 0, 0], [1, 0, 0], [1.05, 0, 0]], [[0, 0, 0], [0, 0, 0], [3, 0, 0]]],
     r"atoms 1 and 2 \(Z=2, 3\) are 0.05 Å apart in frame 1 \(closer than 0.1 Å.*2 frame\(s\) affected"),
    ([[[0, 0, 0], [1, 0, 0], [1, 0.0999, 0]]], r"atoms 1 and 2 .* frame 0"),
])
def test_coincident_atoms_are_refused(frames, message, tmp_path):
    path = _npz(tmp_path / "overlap.npz", **_with_positions(frames))
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(path)
    assert str(path) in str(err.value) and "positions" in str(err.value)


def test_close_but_distinct_atoms_load(tmp_path):
    # H2 bond 0.74 Å and 0.1 Å exactly: allowed; one atom alone has no pairs
    ds = load_dataset(_npz(tmp_path / "h2.npz", **_with_positions([[[0, 0, 0], [0, 0, 0.74], [0, 0.1, 0.74]]])))
    assert ds.positions.shape == (1, 3, 3)
    ds = load_dataset(_npz(tmp_path / "one.npz", **_with_positions([[[0, 0, 0]], [[0, 0, 0]]])))
    assert ds.positions.shape == (2, 1, 3)


def test_real_and_bundled_data_pass_the_physical_checks(ethanol):
    ds = load_dataset(REAL_DATA / "aspirin-rmd17-5.extxyz", max_z=100)  # real DFT geometries: no false alarm
    assert len(ds) == 5
    ethanol.check_numbers(100)


@pytest.mark.parametrize("z,max_z,message", [
    ([1, 6, 8, 101], 100, r"atomic number 101 at atom 3 exceeds the model's embedding size \(max 99, max_z=100\)"),
    ([1, 100, 8, 6], 100, r"atomic number 100 at atom 1 exceeds"),
    ([1, 6, 8, 9], 9, r"atomic number 9 at atom 3 exceeds the model's embedding size \(max 8"),
])
def test_atomic_numbers_beyond_the_embedding_are_refused(z, max_z, message, tmp_path):
    R = np.arange(12, dtype=float).reshape(1, 4, 3)
    path = _npz(tmp_path / "heavy.npz", R=R, z=np.array(z), E=np.zeros(1), F=np.zeros_like(R))
    ds = load_dataset(path)  # valid elements: loads
    with pytest.raises(DatasetError, match=message) as err:
        ds.check_numbers(max_z)
    assert str(path) in str(err.value)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path, max_z=max_z)
    ds.check_numbers(max(z) + 1)  # fits


def test_bad_files(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty file"):
        load_dataset(empty)
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("not a molecule\n\x00\x01")
    with pytest.raises(DatasetError, match="garbage.xyz: unreadable by ASE"):
        load_dataset(garbage)
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, R=np.zeros((1, 1, 3)), z=np.array([1]), E=np.zeros(1), F=np.zeros((1, 1, 3)),
             evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetError, match="pickled objects are not accepted"):
        load_dataset(pickled)
    no_energy = tmp_path / "noe.extxyz"
    write(no_energy, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])], format="extxyz")
    with pytest.raises(DatasetError, match="frame 0 has no energy"):
        load_dataset(no_energy)
    mixed = tmp_path / "mixed.extxyz"
    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), Atoms("HO", positions=[[0, 0, 0], [0, 0, 0.9]])]
    for a in frames:
        a.calc = SinglePointCalculator(a, energy=0.0, forces=np.zeros((2, 3)))
    write(mixed, frames, format="extxyz")
    with pytest.raises(DatasetError, match="frame 1 has atoms HO"):
        load_dataset(mixed)


def test_splits_seeded_disjoint_and_sized():
    tr, va, te = split_indices(100, seed=3)
    assert (len(tr), len(va), len(te)) == (80, 10, 10)
    assert len(set(tr) | set(va) | set(te)) == 100
    tr2, _, _ = split_indices(100, seed=3)
    assert np.array_equal(tr, tr2) and not np.array_equal(tr, split_indices(100, seed=4)[0])
    tr, va, te = split_indices(100, seed=0, n_train=50, n_val=5, n_test=7)
    assert (len(tr), len(va), len(te)) == (50, 5, 7)
    with pytest.raises(ValueError, match="need 120 frames but the data set has 100"):
        split_indices(100, 0, n_train=100, n_val=10, n_test=10)
