"""DCNNCalculator (dcnn/calculator.py): a trial's checkpoint as an ASE calculator — the trainer's own
predictions in ASE's units, forces and stress equal to finite differences, supercells and wrapped cells,
and the file `dcnn-ablate train --checkpoint` writes."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from dcnn.calculator import DCNNCalculator
from dcnn.config import TrainConfig
from dcnn.train import Trainer

CATALYSIS = dict(dataset="catalysis", n_train=40, n_val=10, n_test=10, epochs=1, rescale=True, shift=True,
                 compile="off")


@pytest.fixture(scope="module")
def periodic_checkpoint(tmp_path_factory):
    """A SchNet trained one epoch on the bundled EMT slabs (eV, periodic in x, y), with ES and LR."""
    trainer = Trainer(TrainConfig(model="schnet", activation="irelu", init="lsuv", **CATALYSIS))
    trainer.step()
    path = tmp_path_factory.mktemp("ck") / "trainer.pt"
    trainer.save(path)
    return path, trainer


def test_the_calculator_predicts_what_the_trainer_does(periodic_checkpoint):
    """Energy and forces of a training frame equal the trainer's own inverse-transformed predictions."""
    from dcnn.models import energy_and_forces, prepare

    path, trainer = periodic_checkpoint
    task = trainer.task
    store = task.stores["test"]
    host = np.arange(1)
    b = store.batch(torch.as_tensor(host), host)
    trainer.model.eval()
    e, f = energy_and_forces(trainer.model, prepare(trainer.model, b["graph"]), create_graph=False)
    e_phys = float(task.labels.inverse_energies(e.detach(), b["counts"]))
    f_phys = task.labels.inverse_forces(f.detach()).numpy()
    atoms = task.stores["test"]  # the same frame as ASE Atoms
    frame = task.dataset.subset(np.array([task_test_index(task)])).frame_atoms(0)
    frame.calc = DCNNCalculator(path)
    assert frame.get_potential_energy() == pytest.approx(e_phys, rel=1e-5, abs=1e-4)  # float32 vs float64
    # the bottom layer is fixed in the data (FixAtoms): ASE zeroes its forces unless asked not to
    np.testing.assert_allclose(frame.get_forces(apply_constraint=False), f_phys, rtol=1e-4, atol=1e-4)
    assert atoms is store


def task_test_index(task) -> int:
    """The data-set index of the test split's first frame (the task keeps splits as stores)."""
    from dcnn.atomistic.task import split_frames

    return int(split_frames(len(task.dataset), task.config, task.dataset)[2][0])


def test_forces_and_stress_are_derivatives_and_supercells_scale(periodic_checkpoint):
    from ase.build import bulk

    path, _ = periodic_checkpoint
    calc = DCNNCalculator(path)
    slab = calc_slab()
    slab.calc = calc
    # (one epoch leaves forces of hundreds of eV/Å: a relative tolerance for the central differences)
    np.testing.assert_allclose(slab.get_forces(), calc.calculate_numerical_forces(slab, d=1e-5), rtol=1e-5, atol=1e-3)
    e = slab.get_potential_energy()
    double = slab.repeat((2, 1, 1))
    double.calc = calc
    assert double.get_potential_energy() == pytest.approx(2 * e, rel=1e-9)
    np.testing.assert_allclose(double.get_forces()[:len(slab)], slab.get_forces(), atol=1e-9)
    wrapped = slab.copy()
    wrapped.positions += [1.3, -0.7, 0.0]
    wrapped.wrap()
    wrapped.calc = calc
    assert wrapped.get_potential_energy() == pytest.approx(e, rel=1e-10)
    with pytest.raises(NotImplementedError, match="fully periodic"):
        slab.get_stress()
    crystal = bulk("Pt", "fcc", a=4.0).repeat((2, 2, 2))
    crystal.rattle(0.05, seed=1)
    crystal.calc = calc
    np.testing.assert_allclose(crystal.get_stress(), calc.calculate_numerical_stress(crystal, d=1e-5), atol=1e-5)


def calc_slab():
    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.2, "fcc")
    slab.rattle(0.03, seed=0)
    return slab


def test_a_molecule_model_in_kcal_mol_answers_in_ev(tmp_path, ethanol):
    """`dcnn-ablate train --checkpoint` writes a file the calculator loads; a kcal/mol model's energies and
    forces come out in eV (ASE's units); an element the model never saw is refused."""
    from ase import Atoms

    ck = tmp_path / "ethanol.pt"
    proc = subprocess.run([sys.executable, "-m", "dcnn.cli", "train", "--model", "cgcnn", "--epochs", "1",
                           "--n-train", "40", "--n-val", "20", "--n-test", "20", "--checkpoint", str(ck),
                           "--compile", "off"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    calc = DCNNCalculator(ck)
    frame = Atoms(numbers=ethanol.numbers, positions=ethanol.positions[0])
    frame.calc = calc
    trainer = Trainer(TrainConfig(model="cgcnn", epochs=1, n_train=40, n_val=20, n_test=20, compile="off"))
    trainer.load(ck)
    from conftest import dense_ef

    trainer.model.double().eval()
    e, f = dense_ef(trainer.model, torch.as_tensor(ethanol.positions[:1]), torch.as_tensor(ethanol.numbers))
    ev = 0.0433641
    assert frame.get_potential_energy() == pytest.approx(float(e) * ev, rel=1e-4)
    np.testing.assert_allclose(frame.get_forces(), f[0].numpy() * ev, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match=r"elements \[29\] were not in the model's training data"):
        frame.numbers[0] = 29
        frame.get_potential_energy()
