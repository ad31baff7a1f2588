"""Real DFT (issue 22): the bundled mlearn Mo and Si sets against their raw JSON, official splits (bundled, or a
train file and a test file), per-group test metrics, and the training recipe's pieces (loss shapes, the moving
average of the weights, the best epoch, early stopping), each resume-exact."""
import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from conftest import ROOT
from dcnn.atomistic.io import ATOMS_DATASETS, load_atoms, load_with_test_set, save_atoms_npz
from dcnn.atomistic.mlearn import convert, read_mlearn
from dcnn.atomistic.molecules import DatasetError, SplitSizeError
from dcnn.atomistic.splits import split_frames
from dcnn.atomistic.task import group_key
from dcnn.config import TrainConfig
from dcnn.losses import loss_term
from dcnn.train import Trainer
from dcnn.weights import BestWeights, EMAWeights

RAW = ROOT / "data" / "mlearn"
# frames per group (training, test) in the mlearn files (materialsvirtuallab/mlearn at 10c427a)
GROUPS = {"Mo": ({"AIMD-NVT": 108, "Elastic": 56, "Surface": 9, "Vacancy": 21},
                 {"AIMD-NVT": 12, "Elastic": 6, "Surface": 2, "Vacancy": 3}),
          "Si": ({"AIMD-NVT": 90, "Elastic": 55, "Surface": 12, "Vacancy": 57},
                 {"AIMD-NVT": 10, "Elastic": 6, "Surface": 2, "Vacancy": 7})}


def write_extxyz(ds, frames, path, ref: bool = False):
    """Frames of `ds` as a user's extxyz: the group as `config_type` (MACE's convention), labels as a
    calculator's results or (`ref`) as REF_energy / REF_forces."""
    out = []
    for k in frames:
        s = ds.frame_slice(k)
        a = Atoms(numbers=ds.numbers[s], positions=ds.positions[s], cell=ds.cells[k], pbc=True)
        a.info["config_type"] = str(ds.groups[k])
        if ref:
            a.info["REF_energy"] = float(ds.energies[k])
            a.arrays["REF_forces"] = ds.forces[s]
        else:
            a.calc = SinglePointCalculator(a, energy=float(ds.energies[k]), forces=ds.forces[s])
        out.append(a)
    write(path, out, format="extxyz")
    return path


def counts(groups):
    names, n = np.unique(groups, return_counts=True)
    return dict(zip(names.tolist(), n.tolist()))


@pytest.mark.parametrize("element", ["Mo", "Si"])
def test_bundled_mlearn_is_the_raw_json_converted(element, tmp_path):
    """The bundled npz is what the converter makes from the unchanged JSON (byte for byte: no floating-point
    work is done, so on any CPU), and every frame equals its JSON record; groups and the official split kept."""
    ds = load_atoms(f"mlearn-{element}")
    train, test = GROUPS[element]
    assert counts(ds.groups[~ds.test_mask]) == train and counts(ds.groups[ds.test_mask]) == test
    assert ds.test_mask.tolist() == [False] * sum(train.values()) + [True] * sum(test.values())
    assert ds.energy_unit == "eV" and ds.pbc.all() and "PBE" in ds.theory
    out = tmp_path / "again.npz"
    from dcnn.atomistic.mlearn import CITATION

    save_atoms_npz(out, convert(RAW / f"{element}-training.json", RAW / f"{element}-test.json", f"mlearn-{element}"),
                   extra={"citation": CITATION})
    assert out.read_bytes() == ATOMS_DATASETS[f"mlearn-{element}"].read_bytes()
    records = json.loads((RAW / f"{element}-training.json").read_text()) + \
        json.loads((RAW / f"{element}-test.json").read_text())
    for k in (0, 5, len(records) - 1):  # frames checked against the records, read here without the converter
        r, s = records[k], ds.frame_slice(k)
        np.testing.assert_array_equal(ds.positions[s], [site["xyz"] for site in r["structure"]["sites"]])
        np.testing.assert_array_equal(ds.cells[k], r["structure"]["lattice"]["matrix"])
        np.testing.assert_array_equal(ds.forces[s], r["outputs"]["forces"])
        assert ds.energies[k] == r["outputs"]["energy"] and ds.groups[k] == r["group"]
    # physics the labels must obey: DFT forces of a periodic cell sum to ~0, energies per atom of one element
    # within a few tenths of an eV of each other (bulk to surface)
    net = np.add.reduceat(ds.forces, ds.offsets[:-1], axis=0)
    assert np.abs(net).max() < 0.05
    per_atom = ds.energies / ds.n_atoms
    assert per_atom.max() - per_atom.min() < 1.5


def test_data_readme_has_the_checksums_citation_and_licence():
    readme = (ROOT / "data" / "README.md").read_text()
    section = readme.split("## `mlearn-Mo.npz`", 1)[1].split("\n## ", 1)[0]
    for path in [*sorted(RAW.glob("*.json")), ATOMS_DATASETS["mlearn-Mo"], ATOMS_DATASETS["mlearn-Si"]]:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert re.search(rf"{digest}\s+\S*{re.escape(path.name)}", section), path.name
    assert "10.1021/acs.jpca.9b08723" in section and "BSD" in section and "make data-mlearn" in section
    assert (RAW / "LICENSE").read_text().count("Redistributions") == 2


def test_the_official_split_tests_on_every_test_frame_and_carves_validation_from_training():
    ds = load_atoms("mlearn-Mo")
    train, val, test = split_frames(len(ds), TrainConfig(n_train=None, n_val=None), ds)
    assert test.tolist() == list(range(194, 217))
    assert len(val) == 19 and len(train) == 175 and not set(train) & set(val) and max(val) < 194
    other = split_frames(len(ds), TrainConfig(n_train=None, n_val=None, split_seed=1), ds)
    assert other[2].tolist() == test.tolist() and set(other[1]) != set(val)  # seeded validation, same test
    fewer = split_frames(len(ds), TrainConfig(n_train=50, n_val=20), ds)
    assert len(fewer[0]) == 50 and len(fewer[1]) == 20 and fewer[2].tolist() == test.tolist()
    with pytest.raises(SplitSizeError, match=r"own test set \(23 frames\) and 194 frames for training and validation, too few for n_train=800, n_val=200: use --n-train all --n-val all"):
        split_frames(len(ds), TrainConfig(), ds)  # the molecule defaults do not fit: refused, not trimmed


def test_a_train_file_and_a_test_file_split_like_the_bundled_set(tmp_path):
    """A user's extxyz pair (config_type = the group, as MACE reads it) gives the bundled set's split."""
    ds = load_atoms("mlearn-Mo")
    train = write_extxyz(ds, range(194), tmp_path / "train.xyz")
    test = write_extxyz(ds, range(194, 217), tmp_path / "test.xyz")
    pair = load_with_test_set(train, test)
    assert pair.test_mask.tolist() == ds.test_mask.tolist() and pair.groups.tolist() == ds.groups.tolist()
    np.testing.assert_allclose(pair.energies, ds.energies, rtol=0, atol=1e-9)
    cfg = TrainConfig(n_train=None, n_val=None, test_dataset=str(test))
    assert [x.tolist() for x in split_frames(len(pair), cfg, pair)] == \
        [x.tolist() for x in split_frames(len(ds), cfg, ds)]
    with pytest.raises(DatasetError, match=r"has a test set of its own \(23 frames\).*give one or the other"):
        load_with_test_set("mlearn-Mo", test)
    # the mlearn JSON itself loads; its test file is given as the test set
    raw = load_with_test_set(RAW / "Mo-training.json", RAW / "Mo-test.json")
    assert raw.test_mask.sum() == 23 and np.array_equal(raw.energies, ds.energies)


def test_a_train_and_test_pair_through_the_train_command(tmp_path):
    """`dcnn-ablate train --dataset TRAIN --test-dataset TEST` tests on the test file, and says so."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "--dataset", str(RAW / "Si-training.json"),
                          "--test-dataset", str(RAW / "Si-test.json"), "--n-train", "20", "--n-val", "5", "--epochs", "1",
                          "--preset", "small", "--cutoff", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert "test frames from" in out.stderr
    assert summary["n_test"] == 25 and summary["test_split"].startswith("the test file")
    assert summary["test_group.Surface.frames"] == 2 and summary["test_group.Vacancy.frames"] == 7
    test_copy = tmp_path / "Si-test.json"  # a checkpoint never overwrites the test file, even with --force
    test_copy.write_bytes((RAW / "Si-test.json").read_bytes())
    refused = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "--dataset", str(RAW / "Si-training.json"),
                              "--test-dataset", str(test_copy), "--checkpoint", str(test_copy), "--force"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "is the --test-dataset of this command" in refused.stderr
    assert test_copy.read_bytes() == (RAW / "Si-test.json").read_bytes()


def test_group_keys_and_mlearn_errors_name_the_record(tmp_path):
    assert group_key("Ground state") == "group.Ground_state" and group_key("AIMD-NVT") == "group.AIMD-NVT"
    records = json.loads((RAW / "Mo-test.json").read_text())[:2]
    del records[1]["outputs"]["forces"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=r"bad.json: record 1: missing or malformed field.*forces"):
        read_mlearn(bad)


def test_loss_shapes():
    p, t = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.005, -0.02, 0.1])
    assert loss_term("l1", p, t).item() == pytest.approx((0.005 + 0.02 + 0.1) / 3)
    assert loss_term("mse", p, t).item() == pytest.approx((0.005 ** 2 + 0.02 ** 2 + 0.1 ** 2) / 3)
    # Huber: ½x² within δ, δ(|x| − ½δ) beyond
    expect = (0.5 * 0.005 ** 2 + 0.01 * (0.02 - 0.005) + 0.01 * (0.1 - 0.005)) / 3
    assert loss_term("huber", p, t, delta=0.01).item() == pytest.approx(expect)


def test_moving_average_and_best_weights_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = EMAWeights(model, decay=0.99)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()  # first update: d = min(0.99, 2/11)
    d = 2 / 11
    np.testing.assert_allclose(ema.copy[0].numpy(), (d * w0 + (1 - d) * (w0 + 1)).numpy(), rtol=1e-6)
    live = model.weight.detach().clone()
    with ema.swapped():
        assert torch.equal(model.weight, ema.copy[0])
    assert torch.equal(model.weight, live)  # the live weights back exactly
    best = BestWeights(model)
    assert best.offer(2.0, 1) and not best.offer(3.0, 2) and not best.offer(math.nan, 3)
    with torch.no_grad():
        model.weight.add_(5.0)
    with best.swapped():
        assert torch.equal(model.weight, live)
    assert best.epoch == 1


MO_FAST = dict(dataset="mlearn-Mo", n_train=24, n_val=8, batch_size=8, dtype="float64", preset="small",
               sizes={"cutoff": 4.0, "hidden": 16, "filters": 16, "interactions": 2, "gaussians": 10}, compile="off",
               shift=True, lr=3e-3)


@pytest.mark.parametrize("recipe", [
    dict(loss_fn="mse", energy_term="atom", ema_decay=0.9, evaluate="best", weight_decay=1e-4),
    dict(loss_fn="huber", energy_term="structure", early_stopping=1, lr_schedule="plateau", evaluate="best")])
def test_the_recipe_resumes_exactly(recipe, tmp_path):
    """Moving average, best epoch, early stopping and weight decay are in the checkpoint: 2 + 2 epochs after a
    reload give what 4 straight give, bit for bit (float64), test metrics of the same weights."""
    cfg = TrainConfig(**MO_FAST, epochs=4, **recipe)
    straight = Trainer(cfg)
    while not straight.done:
        straight.run_epoch()
    half = Trainer(cfg)
    for _ in range(2):
        half.run_epoch()
    half.save(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ckpt.pt")
    while not resumed.done:
        resumed.run_epoch()
    strip = lambda h: [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in h]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history)
    assert straight.test() == resumed.test()
    test = straight.test()
    assert test["best_epoch"] >= 1 and test["test_group.Surface.frames"] == 2
    groups = [k for k in test if k.startswith("test_group.") and k.endswith(".frames")]
    assert sum(test[k] for k in groups) == 23
    # the overall per-atom MAE is the frame-weighted mean of the groups'
    mean = sum(test[k] * test[k.replace(".frames", ".energy_per_atom_loss")] for k in groups) / 23
    assert test["test_energy_per_atom_loss"] == pytest.approx(mean, rel=1e-12)


def test_evaluate_best_tests_the_best_validation_epoch_and_early_stopping_stops():
    cfg = TrainConfig(**MO_FAST, epochs=30, lr_schedule="constant", early_stopping=2, evaluate="best")
    trainer = Trainer(cfg)
    while not trainer.done:
        trainer.run_epoch()
    objectives = [m["energy_loss"] + cfg.force_weight * m["force_loss"] for m in trainer.history]
    best = int(np.argmin(objectives)) + 1
    assert trainer.best.epoch == best
    # stopped (lr 3e-3 constant on 24 frames: the validation objective stops improving within a few epochs),
    # two epochs after the best, none better
    assert trainer.stopped_early and trainer.epoch == best + 2 < 30
    with trainer.best.swapped():
        at_best = trainer.task.evaluate("val")
    assert at_best["energy_loss"] + cfg.force_weight * at_best["force_loss"] == pytest.approx(objectives[best - 1])


# -- the report on grouped data with published results ---------------------------------------------------------

def _grouped_study(root):
    """Two arms × 3 seeds on mlearn-like data: per-atom energies, forces and per-group errors with known values."""
    import search_spaces

    arms = [search_spaces.Arm("irelu", True, True), search_spaces.Arm("irelu", False, True)]
    for arm, factor in zip(arms, (1.0, 2.0)):
        for seed in range(3):
            wiggle = 1.0 + 0.01 * (seed - 1)
            cfg = {"model": "schnet", "arm": arm.key, "seed": seed, "dataset": "/d/mlearn-Mo.npz", **arm.as_config()}
            last = {"epoch": 3, "done": True, "diverged": 0, "trial_id": f"{arm.key}-{seed}",
                    "test_energy_loss": 0.2 * factor * wiggle, "test_force_loss": 0.1 * factor * wiggle,
                    "test_energy_per_atom_loss": 0.004 * factor * wiggle, "test_energy_baseline": 5.0,
                    "test_force_baseline": 1.0, "test_energy_per_atom_baseline": 0.1, "test_energy_scale": 500.0,
                    "energy_loss": 0.2, "force_loss": 0.1, "energy_per_atom_loss": 0.004,
                    "test_group.Surface.energy_per_atom_loss": 0.03 * factor * wiggle,
                    "test_group.Surface.force_loss": 0.2 * wiggle, "test_group.Surface.frames": 2,
                    "test_group.AIMD-NVT.energy_per_atom_loss": 0.002 * factor * wiggle,
                    "test_group.AIMD-NVT.force_loss": 0.09 * wiggle, "test_group.AIMD-NVT.frames": 21}
            d = root / f"{arm.key}_{seed}"
            d.mkdir(parents=True)
            (d / "params.json").write_text(json.dumps(cfg))
            (d / "result.json").write_text(json.dumps(last) + "\n")
    (root / "report").mkdir()
    peers = [{"name": "GAP", "data": "mlearn-Mo", "metric": "energy_per_atom_loss", "value": 0.00224,
              "source": "Zuo et al. 2020"},
             {"name": "GAP", "data": "mlearn-Mo", "metric": "force_loss", "value": 0.09, "source": "Zuo et al. 2020"}]
    (root / "report" / "study.json").write_text(json.dumps({
        "study": "mlearn", "reference": arms[0].key, "arms": [a.key for a in arms], "identical": {}, "peers": peers,
        "dataset_info": {"/d/mlearn-Mo.npz": {"label": "mlearn-Mo", "units": ["eV", "eV/Å"]}}}))
    return root


def test_report_on_grouped_data_reads_per_atom_energy_groups_and_published_results(tmp_path):
    from orchestrator.report import build_report

    report = build_report(_grouped_study(tmp_path / "study"))
    md = report["markdown"]
    main = [m.short for m in report["metric_specs"] if m.main]
    assert main == ["E/atom", "F"]  # the energy per atom is the main energy metric on grouped data
    table = md[md.index("## mlearn-Mo · schnet"):md.index("## Per group")]
    assert "| arm | n | diverged | E/atom mean ± std |" in table
    # published rows in the main table: the reference's mean over theirs (0.004 / 0.00224 = 1.79; 0.1 / 0.09)
    assert "| *published: GAP* (Zuo et al. 2020) | | | 0.00224 | | ref ×1.8 | | 0.0900 | | ref ×1.1 | |" in table
    groups = md[md.index("## Per group"):]
    assert "| Surface | 2 | 0.0300 ± 0.00030 | 0.200 ± 0.0020 |" in groups
    assert "| AIMD-NVT | 21 | 0.00200 ± 0.000020 | 0.0900 ± 0.00090 |" in groups
    beside = md[md.index("## Beside published results"):]
    assert "| **irelu+DN+LR** (ref) | ×1.8 | ×1.1 |" in beside and "| irelu+LR | ×3.6 | ×2.2 |" in beside
    # the Findings read the per-atom energy: removing DN doubles it, resolved over the three paired seeds
    assert "- DN removed (irelu+LR): per-atom energy error higher, ×2.00" in report["findings"]


def test_bad_train_and_test_files_get_one_line_before_compute(tmp_path):
    """A test file with an element training never saw, a frame without forces, a group label of the wrong
    type: each refused with the file, the frame and the field, before anything trains."""
    def frame(symbol, energy=-10.0, forces=True, config_type="bulk"):
        a = Atoms(symbol * 2, positions=[[0, 0, 0], [1.4, 1.4, 1.4]], cell=[2.8, 2.8, 2.8], pbc=True)
        a.info["config_type"] = config_type
        a.calc = SinglePointCalculator(a, energy=energy, **({"forces": np.zeros((2, 3))} if forces else {}))
        return a

    train, test = tmp_path / "train.xyz", tmp_path / "test.xyz"
    write(train, [frame("Mo"), frame("Mo", -10.1)], format="extxyz")
    write(test, [frame("Mo"), frame("W")], format="extxyz")
    with pytest.raises(DatasetError, match=r"test.xyz: holds element\(s\) W that no frame of .*train.xyz has"):
        load_with_test_set(train, test)
    write(test, [frame("Mo"), frame("Mo", forces=False)], format="extxyz")
    with pytest.raises(DatasetError, match=r"test.xyz: frame 1 has no forces"):
        load_with_test_set(train, test)
    write(test, [frame("Mo", config_type=3)], format="extxyz")
    with pytest.raises(DatasetError, match=r"test.xyz: frame 0: config_type=3 \(a number or array\) must be a text label"):
        load_with_test_set(train, test)
    records = json.loads((RAW / "Mo-test.json").read_text())[:1]
    records[0]["group"] = ["Surface"]
    (tmp_path / "bad.json").write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=r"bad.json: record 0: .*group=\['Surface'\] must be a text label"):
        read_mlearn(tmp_path / "bad.json")


def test_the_mlearn_studies_declare_the_recipe_and_the_published_results(tmp_path):
    import yaml

    import search_spaces

    study = search_spaces.load_study("mlearn-seed-plan")
    cfg = TrainConfig.from_dict({**study.fixed_for("schnet"), "model": "schnet", "dataset": study.datasets[0]})
    assert (cfg.loss_fn, cfg.energy_term, cfg.evaluate, cfg.n_train, cfg.n_val) == ("mse", "atom", "best", None, None)
    assert [study.dataset_labels()[d] for d in study.datasets] == ["mlearn-Mo", "mlearn-Si"]
    gap = {(p["data"], p["metric"]): p["value"] for p in study.peers if p["name"] == "GAP"}
    assert gap == {("mlearn-Mo", "energy_per_atom_loss"): 0.00224, ("mlearn-Mo", "force_loss"): 0.09,
                   ("mlearn-Si", "energy_per_atom_loss"): 0.00291, ("mlearn-Si", "force_loss"): 0.07}
    assert len(study.trial_configs()) == 36  # SchNet has no BatchNorm: the DN twins run once
    # a --datasets override keeps the published results of the data sets left
    only_mo = study.with_overrides(datasets=[study.datasets[0]])
    assert {p["data"] for p in only_mo.peers} == {"mlearn-Mo"}
    # the angular study extends it: the same recipe and arms, its own model, data, seeds and budget, the
    # published results on its one data set
    angular = search_spaces.load_study("mlearn-angular")
    assert angular.models == ["dimenetpp"] and angular.seeds == [0, 1] and len(angular.trial_configs()) == 12
    own = ("epochs", "size.cutoff")  # its budget and cutoff, measured for DimeNet++
    assert {k: v for k, v in angular.fixed.items() if k not in own} == \
        {k: v for k, v in study.fixed.items() if k not in own}
    assert (angular.fixed["epochs"], study.fixed["epochs"], angular.fixed["batch_size"]) == (250, 150, 5)
    assert angular.fixed["size.cutoff"] == 5.0 and [a.key for a in angular.arms] == [a.key for a in study.arms]
    assert {p["data"] for p in angular.peers} == {"mlearn-Mo"} and len(angular.peers) == 4
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: no-such-study\ndesigns: [{activation: [irelu]}]\n")
    with pytest.raises(ValueError, match=r"loop.yaml: extends 'no-such-study' is not a built-in study"):
        search_spaces.load_study(str(loop))
    # bad peers are refused when the study loads, naming the entry
    data = yaml.safe_load((search_spaces.STUDY_DIR / "mlearn-seed-plan.yaml").read_text())
    first = data["peers"][0]
    for bad, words in [({"metric": "energy_mae"}, r"metric 'energy_mae' is not one of energy_loss"),
                       ({"data": "mlearn-W"}, r"data 'mlearn-W' is not a data set of the study"),
                       ({"value": -1}, r"value -1 must be a positive number")]:
        data["peers"] = [{**first, **bad}]
        data["datasets"] = ["mlearn-Mo"]
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ValueError, match=r"peers\[0\] \(GAP\): " + words):
            search_spaces.load_study(str(path))


def test_a_real_dft_study_on_ray_reports_groups_and_published_results(ray_session, tracking_uri, tmp_path):
    """The mlearn study's own settings and peers, on a slice of Mo (16 training cells, 2 epochs, a tiny SchNet),
    end to end on Ray: every trial tests on the 23 official test cells; the report has the per-atom energy as its
    main energy metric, the reference arm per group, and GAP/MTP beside it."""
    import yaml

    import search_spaces
    from orchestrator.runner import AblateOptions, run_ablation

    data = yaml.safe_load((search_spaces.STUDY_DIR / "mlearn-seed-plan.yaml").read_text())
    data.update(datasets=["mlearn-Mo"], seeds=[0], peers=[p for p in data["peers"] if p["data"] == "mlearn-Mo"],
                designs=[{"activation": ["irelu"], "denorm": [True], "rescale": [True, False], "shift": [True],
                          "init": ["lsuv"]}])
    data["fixed"].update(n_train=16, n_val=4, epochs=2, **{"size.hidden": 16, "size.filters": 16,
                                                            "size.interactions": 1, "size.gaussians": 10})
    path = tmp_path / "mlearn-slice.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    report = run_ablation(AblateOptions(study=str(path), storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                        experiment="mlearn-slice", quiet=True))
    trials, md = report["trials"], report["markdown"]
    assert len(trials) == 2 and trials.finished.all()
    assert (trials["test_group.Surface.frames"] == 2).all() and (trials["test_group.AIMD-NVT.frames"] == 12).all()
    assert "| arm | n | diverged | E/atom mean ± std |" in md
    assert "| *published: GAP* (Zuo et al., J. Phys. Chem. A 124, 731 (2020)) | | | 0.00224 | | ref ×" in md
    groups = md[md.index("## Per group of test frames"):]
    assert all(f"| {g} | {n} |" in groups for g, n in [("Vacancy", 3), ("AIMD-NVT", 12), ("Surface", 2), ("Elastic", 6)])
    assert "MTP" in md[md.index("## Beside published results"):]
    assert "Test frames: the data set's official test split, all 23 of them" in md


def test_the_benchmark_command_on_a_users_own_train_and_test_files(tmp_path):
    """`python -m benchmarks.mlearn --train --test` on extxyz files with REF_energy/REF_forces (a slice of Si):
    the recipe trains, and the last line is the JSON the issue asks for, per group, without peers."""
    import subprocess
    import sys

    ds = load_atoms("mlearn-Si")
    train = write_extxyz(ds, [0, 1, 2, 3, 100, 101, 150, 151, 200, 201, 210, 211], tmp_path / "train.xyz", ref=True)
    test = write_extxyz(ds, [214, 215, 230, 231], tmp_path / "test.xyz", ref=True)
    out = subprocess.run([sys.executable, "-m", "benchmarks.mlearn", "--train", str(train), "--test", str(test),
                          "--epochs", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) >= {"model", "energy_mev_per_atom", "force_ev_per_a", "by_group", "train_s", "peers"}
    assert result["model"] == "schnet" and result["peers"] == {} and result["test_frames"] == 4
    assert sum(g["frames"] for g in result["by_group"].values()) == 4
    assert result["energy_mev_per_atom"] > 0 and "epoch    2/2" in out.stderr
    bad = subprocess.run([sys.executable, "-m", "benchmarks.mlearn", "--train", str(train)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--train and --test go together" in bad.stderr


def test_the_benchmark_trains_each_element_with_its_measured_best():
    """Mo: DimeNet++ with iGELU and LR at 400 epochs unless --model schnet (SchNet at the recipe's sizes); Si: the
    128-wide SchNet; a user's own files: SchNet; a model with no measured arm gets SchNet's levels but none of its
    sizes; every one has the recipe."""
    import argparse

    from benchmarks import mlearn

    def cfg(**kw):
        args = dict(element=None, train=None, test=None, model=None, seed=0, epochs=None, threads=1)
        return mlearn.config_for(argparse.Namespace(**{**args, **kw}))

    mo, si, mo_schnet = cfg(element="Mo"), cfg(element="Si"), cfg(element="Mo", model="schnet")
    assert (mo.model, mo.activation, mo.rescale, mo.rescale_factor, mo.sizes["cutoff"], mo.epochs) == (
        "dimenetpp", "igelu", True, 10.0, 5.0, 400)
    assert (si.model, si.activation, si.rescale, si.sizes["hidden"], si.sizes["filters"], si.epochs) == (
        "schnet", "original", False, 128, 128, 300)
    assert (mo_schnet.model, mo_schnet.activation, mo_schnet.epochs) == ("schnet", "original", 300)
    assert "hidden" not in mo_schnet.sizes
    other = cfg(element="Si", model="cgcnn")
    assert other.activation == "original" and not other.rescale and "hidden" not in other.sizes
    assert cfg(element="Mo", epochs=7).epochs == 7
    for c in (mo, si, mo_schnet, other):  # the measured arms' batches, not the study's (its budget is its own)
        assert c.batch_size == 20
    for c in (mo, si, mo_schnet, other):
        assert (c.loss_fn, c.energy_term, c.force_weight, c.ema_decay, c.evaluate) == ("mse", "atom", 0.1, 0.99, "best")


def test_a_study_recorded_before_the_recipe_keys_resumes(tmp_path):
    """A plan written before loss_fn, energy_term, ... existed lacks them: at their defaults nothing changed,
    so --resume goes on; a recorded value that differs still refuses."""
    from orchestrator import validate
    from orchestrator.runner import AblateOptions

    opts = AblateOptions(study="stabilizers", storage=str(tmp_path / "res"), experiment="old")
    plan = validate.plan_of(opts, opts.validate(), "old", "sqlite:///x.db")
    folder = tmp_path / "res" / "old"
    old = json.loads(json.dumps(plan, default=str))
    for key in ("loss_fn", "energy_term", "ema_decay", "weight_decay", "early_stopping", "evaluate", "test_dataset",
                "huber_delta"):
        del old["fixed"][key]
    validate.write_plan(folder, old)
    validate.check_resume(folder, plan)  # no difference
    validate.write_plan(folder, {**old, "fixed": {**old["fixed"], "force_weight": 10.0}})
    with pytest.raises(ValueError, match=r"differs from the study.*force_weight: 10.0 → 30.0"):
        validate.check_resume(folder, plan)
