import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from dcnn.config import TrainConfig
from dcnn.atomistic.dataset import AtomsDataset
from dcnn.atomistic.task import AtomisticTask
from dcnn.train import Trainer, train

FAST = dict(n_train=60, n_val=20, n_test=20, batch_size=20)


def test_config_validation_names_field_and_choices():
    """A TrainConfig validates its own fields; names and files (model, preset, sizes, data set) are resolved
    by `resolve_config`, which imports the model's spec and touches the file system (a TrainConfig never does)."""
    from dcnn.registry import resolve_config

    with pytest.raises(ValueError, match=r"model='painn' is not allowed; choose one of: schnet, cgcnn"):
        resolve_config(TrainConfig(model="painn"))
    assert TrainConfig(model="painn").model == "painn"  # a record: nothing imported, nothing read
    with pytest.raises(ValueError, match=r"activation='swish'.*irelu, ielu, igelu, isilu"):
        TrainConfig(activation="swish")
    for field, bad in [("lr", 0.0), ("rescale_factor", -10.0), ("epochs", 0), ("batch_size", -1)]:
        with pytest.raises(ValueError, match=f"{field}=.* must be positive"):
            TrainConfig(**{field: bad})
    with pytest.raises(ValueError, match=r"lr='fast' is not a valid float"):
        TrainConfig(lr="fast")
    with pytest.raises(ValueError, match=r"epochs=2.5 is not a valid int"):
        TrainConfig(epochs=2.5)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"do not apply to model 'schnet'"):
        resolve_config(TrainConfig(model="schnet", sizes={"fc_layers": 2}))
    with pytest.raises(ValueError, match=r"split='by-size' is not allowed; choose random, or ood:ELEMENT"):
        TrainConfig(split="by-size")
    resolved = resolve_config(TrainConfig(model="fcn"))
    assert resolved.dataset == "burgers" and resolve_config(resolved) is resolved  # its family's default; idempotent
    assert resolve_config(TrainConfig()).dataset.endswith("data/ethanol-gfn2-500K.npz")
    cfg = TrainConfig.from_dict({"lr": "1e-3", "epochs": 3.0, "denorm": "true", "seed": np.int64(4)})
    assert (cfg.lr, cfg.epochs, cfg.denorm, cfg.seed) == (1e-3, 3, True, 4)


@pytest.mark.parametrize("rescale,shift", [(False, False), (True, False), (False, True), (True, True)])
def test_metrics_are_in_physical_units_with_and_without_rescaling(rescale, shift, ethanol):
    """A model that predicts zero scores, in kcal/mol whatever C is: mean|E| without the shift, the
    error of predicting the shift (≈ the training mean) with it; mean|F| always."""
    cfg = TrainConfig(rescale=rescale, rescale_factor=1e4, shift=shift, dtype="float64", **FAST)
    task = AtomisticTask(cfg, torch.device("cpu"), dataset=AtomsDataset.from_molecule(ethanol))
    with torch.no_grad():
        for p in task.model.parameters():
            p.zero_()
    m = task.evaluate("val")
    val = task.stores["val"]
    e, f, e_label, f_label = val.energies, val.forces, val.energy_labels, val.force_labels
    scale = 1e4 if rescale else 1.0
    offset = task.labels.offsets(val.counts)  # Σ_S c_S e_S per frame (one composition: the same for all)
    assert m["energy_loss"] == pytest.approx(float((e - offset).abs().mean()), rel=1e-12)
    assert m["force_loss"] == pytest.approx(float(f.abs().mean()), rel=1e-12)
    assert torch.allclose(e_label * scale + offset, e) and torch.allclose(f_label * scale, f)
    if shift:  # the fitted offset is the training split's mean energy (one composition: rank one)
        train_e = task.stores["train"].energies
        assert float(offset[0]) == pytest.approx(float(train_e.mean()), rel=1e-12)
        assert m["energy_loss"] == pytest.approx(task.baselines["val"]["energy"], rel=1e-9)
        assert m["energy_loss"] < 10
    else:
        assert 7000 < m["energy_loss"] < 7300
    assert 10 < m["force_loss"] < 25  # kcal/mol/Å
    loss, terms = task.loss((torch.arange(20), np.arange(20)))
    assert (float(terms["train_energy_loss"]) > 7000) != shift  # train terms too are in physical units
    assert float(loss.detach()) == pytest.approx((float(terms["train_energy_loss"]) + 30 * float(terms["train_force_loss"])) / scale)


def test_resume_is_exact_in_float64(tmp_path):
    cfg = TrainConfig(model="cgcnn", epochs=4, dtype="float64", lr=1e-3, rescale=True,
                      rescale_factor=1e4, **FAST)
    straight = Trainer(cfg)
    for _ in range(4):
        straight.run_epoch()
    first = Trainer(cfg)
    for _ in range(2):
        first.run_epoch()
    first.save(tmp_path / "ckpt.pt")
    torch.manual_seed(12345)  # resume must not depend on the process's global RNG state
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ckpt.pt")
    while not resumed.done:
        resumed.run_epoch()
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    drop = ("epoch_time_s",)
    strip = lambda h: [{k: v for k, v in m.items() if k not in drop} for m in h]
    assert strip(straight.history) == strip(resumed.history)
    assert straight.test() == resumed.test()
    assert strip(straight.history)[1] != strip(straight.history)[3]


def test_small_schnet_learns_forces(ethanol):
    """Validation force MAE below half the predict-zero baseline (mean |F|) within a few epochs."""
    cfg = TrainConfig(model="schnet", activation="irelu", rescale=True, rescale_factor=1e4, lr=1e-3,
                      epochs=6, n_train=500, n_val=200, n_test=200)
    baseline = float(np.abs(ethanol.forces).mean())
    history = []
    out = train(cfg, on_epoch=lambda m, t: history.append(m))
    assert len(history) == 6 and out["diverged"] == 0
    assert history[-1]["force_loss"] < 0.5 * baseline, (history[-1]["force_loss"], baseline)
    assert history[-1]["force_loss"] < history[0]["force_loss"]
    assert out["test_force_loss"] < 0.5 * baseline


def test_divergence_ends_cleanly():
    cfg = TrainConfig(model="schnet", lr=1e8, epochs=5, **FAST)
    out = train(cfg)
    assert out["diverged"] == 1 and 1 <= out["diverged_epoch"] <= 5
    assert out["epochs_completed"] == out["diverged_epoch"]
    assert math.isnan(out["test_energy_loss"]) and math.isnan(out["test_force_loss"])


def test_a_finite_blow_up_is_diverged_by_the_one_rule(tmp_path):
    """Finite but absurd errors (C = 1e9 makes every prediction ≈ 1e9 × the net's O(1) output, and lr 1e-12
    keeps it there) count as diverged in the trainer's summary, in `dcnn-ablate train`'s JSON and exit
    status, and by the same family rule the report applies to a result row."""
    from dcnn.atomistic.family import ATOMISTIC
    from dcnn.families import BLOWUP_FACTOR

    cfg = dict(model="schnet", rescale=True, rescale_factor=1e9, lr=1e-12, lr_schedule="constant", epochs=1, **FAST)
    out = train(TrainConfig(**cfg))
    assert math.isfinite(out["test_energy_loss"]) and math.isfinite(out["test_force_loss"])
    assert out["test_energy_loss"] > BLOWUP_FACTOR * out["test_energy_scale"]
    assert out["diverged"] == 1 and out["blew_up"] == 1 and out["diverged_epoch"] is None
    assert ATOMISTIC.diverged(out) and ATOMISTIC.blown_up(out)
    # a sane run is not: the same rule, no false alarm
    sane = train(TrainConfig(model="schnet", rescale=True, epochs=1, **FAST))
    assert sane["diverged"] == 0 and not ATOMISTIC.diverged(sane)
    proc = subprocess.run([sys.executable, "-m", "dcnn.cli", "train", "--model", "schnet", "--rescale",
                           "--rescale-factor", "1e9", "--lr", "1e-12", "--lr-schedule", "constant", "--epochs", "1",
                           "--n-train", "40",
                           "--n-val", "20", "--n-test", "20"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "DIVERGED" in proc.stderr
    assert json.loads(proc.stdout)["diverged"] == 1


def test_training_flushes_denormals_on_the_thread_that_trains(ethanol):
    """The trainer sets FTZ/DAZ (dcnn/numerics.py) on the thread that runs each epoch, also when the
    trainer was built on another thread (a Ray actor, a user's pool); `flush_denormals=False` leaves
    denormals alone; results differ only at float32 rounding level."""
    import threading

    from dcnn.numerics import denormals_flushed

    torch.set_flush_denormal(False)
    trainer = Trainer(TrainConfig(model="cgcnn", epochs=1, **FAST))
    assert denormals_flushed() and trainer.denormals_flushed
    torch.set_flush_denormal(False)
    seen = {}

    def epoch():
        seen["before"] = denormals_flushed()
        seen["metrics"] = trainer.run_epoch()
        seen["after"] = denormals_flushed()

    worker = threading.Thread(target=epoch)
    worker.start(), worker.join()
    assert seen["before"] is False and seen["after"] is True and seen["metrics"]["denormals_flushed"] == 1
    kept = Trainer(TrainConfig(model="cgcnn", epochs=1, flush_denormals=False, **FAST))
    assert not denormals_flushed() and not kept.denormals_flushed
    m_kept = kept.run_epoch()
    assert m_kept["denormals_flushed"] == 0
    # same seed, same batches: only values below 1.2e-38 were flushed, so the metrics agree closely
    for key in ("energy_loss", "force_loss"):
        assert seen["metrics"][key] == pytest.approx(m_kept[key], rel=1e-3), key
    torch.set_flush_denormal(True)


def test_denorm_and_activation_reported():
    out = train(TrainConfig(model="cgcnn", activation="isilu", denorm=True, epochs=1, **FAST))
    assert out["batchnorm_removed"] == 3 and out["activations_replaced"] == 3
    assert out["activation_used"] == "isilu" and out["energy_unit"] == "kcal/mol"
    assert set(out) >= {"energy_loss", "force_loss", "train_energy_loss", "train_force_loss",
                        "test_energy_loss", "test_force_loss", "diverged"}


def test_same_seed_same_result_different_seed_differs():
    a = train(TrainConfig(epochs=1, seed=3, **FAST))
    b = train(TrainConfig(epochs=1, seed=3, **FAST))
    c = train(TrainConfig(epochs=1, seed=4, **FAST))
    assert a["force_loss"] == b["force_loss"] and a["force_loss"] != c["force_loss"]


def test_cli_train_prints_progress_and_json(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: cgcnn\nn_train: 40\nn_val: 20\nn_test: 20\nepochs: 5\n")
    proc = subprocess.run([sys.executable, "-m", "dcnn.cli", "train", "--config", str(cfg), "--epochs", "2",
                           "--activation", "isilu", "--no-denorm", "--rescale", "--checkpoint",
                           str(tmp_path / "ck.pt")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("epoch ") == 2 and "kcal/mol/Å" in proc.stderr  # flags beat the YAML
    summary = json.loads(proc.stdout)
    assert summary["epochs_completed"] == 2 and summary["activation_used"] == "isilu"
    assert (tmp_path / "ck.pt").exists()


def test_cli_bad_input_fails_before_training(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dcnn.cli", "train", "--lr", "-1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "lr=-1.0 must be positive" in proc.stderr
    bad = tmp_path / "bad.npz"
    np.savez(bad, R=np.zeros((2, 1, 3)), z=np.array([1]), E=np.zeros(2))
    proc = subprocess.run([sys.executable, "-m", "dcnn.cli", "train", "--dataset", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "missing keys ['F']" in proc.stderr and "epoch" not in proc.stderr


def test_lr_schedules():
    from dcnn.schedules import LRSchedule

    cos = LRSchedule("cosine", 1e-3, epochs=10, steps_per_epoch=5, lr_min=1e-6)
    lrs = [cos.lr_at(e, s) for e in range(10) for s in range(5)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay, per step
    assert lrs[25] == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + math.cos(math.pi * 25 / 49)))
    warm = LRSchedule("cosine", 1e-3, epochs=10, steps_per_epoch=5, lr_min=0.0, warmup_epochs=2)
    assert [warm.lr_at(0, s) for s in range(3)] == pytest.approx([1e-4, 2e-4, 3e-4])
    assert warm.lr_at(2, 0) == pytest.approx(1e-3) and warm.lr_at(9, 4) == pytest.approx(0.0)
    assert LRSchedule("constant", 1e-4, 10, 5).lr_at(7, 3) == 1e-4
    plateau = LRSchedule("plateau", 1e-3, 10, 5, plateau_factor=0.5, plateau_patience=1)
    for loss in (10.0, 9.0, 9.0, 9.0):  # two epochs without improvement > patience 1: halve
        plateau.end_epoch(loss)
    assert plateau.lr_at(4, 0) == pytest.approx(5e-4)
    restored = LRSchedule("plateau", 1e-3, 10, 5)
    restored.load_state_dict(plateau.state_dict())
    assert restored.lr_at(5, 0) == plateau.lr_at(5, 0)
    with pytest.raises(ValueError, match="lr_schedule='step' is not allowed"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="lr_min=0.1 must not exceed lr"):
        TrainConfig(lr_min=0.1)


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_scheduled_lr_is_logged_and_resume_exact(schedule, tmp_path):
    cfg = TrainConfig(epochs=4, dtype="float64", lr_schedule=schedule, plateau_patience=0, **FAST)
    straight = Trainer(cfg)
    for _ in range(4):
        straight.run_epoch()
    lrs = [m["lr"] for m in straight.history]
    if schedule == "cosine":
        assert lrs[-1] == pytest.approx(cfg.lr_min) and lrs[0] < cfg.lr and lrs == sorted(lrs, reverse=True)
    first = Trainer(cfg)
    for _ in range(2):
        first.run_epoch()
    first.save(tmp_path / "ckpt.pt")
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ckpt.pt")
    while not resumed.done:
        resumed.run_epoch()
    assert [m["lr"] for m in resumed.history] == lrs
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_checkpoint_restores_on_a_device_other_than_where_it_was_saved(tmp_path):
    """RNG states must be restored from CPU byte tensors whatever the trainer's device is (loading with
    map_location=<trainer device> moved them off the CPU and set_rng_state refused them). The meta
    device stands in for 'another device' on a machine without a GPU."""
    cfg = TrainConfig(epochs=2, **FAST)
    trainer = Trainer(cfg)
    trainer.run_epoch()
    trainer.save(tmp_path / "ckpt.pt")
    other = Trainer(cfg)
    other.device = torch.device("meta")
    other.load(tmp_path / "ckpt.pt")
    assert other.epoch == 1 and torch.equal(other.shuffle.get_state(), trainer.shuffle.get_state())


def test_denormalization_is_a_no_op_exactly_where_the_built_model_has_no_batchnorm():
    """Why the study runs SchNet's DN / no-DN arms once: the same training, bit for bit; CGCNN differs."""
    from dcnn.models import has_normalization

    assert not has_normalization("schnet") and has_normalization("cgcnn")
    for model, identical in (("schnet", True), ("cgcnn", False)):
        runs = []
        for denorm in (True, False):
            t = Trainer(TrainConfig(model=model, denorm=denorm, epochs=1, activation="irelu", **FAST))
            runs.append((t.run_epoch(), t.model.state_dict()))
        (m1, w1), (m2, w2) = runs
        same = m1["force_loss"] == m2["force_loss"] and all(torch.equal(w1[k], w2[k]) for k in w1 if k in w2)
        assert same == identical, model


def test_energies_are_learned_below_the_predict_mean_baseline(ethanol):
    """The default schedule learns energies, not only forces (the report's first question)."""
    cfg = TrainConfig(activation="irelu", denorm=True, rescale=True, epochs=8, n_train=400, n_val=100, n_test=200)
    summary = train(cfg)
    assert summary["test_energy_loss"] < 0.8 * summary["test_energy_baseline"], summary
    assert summary["test_force_loss"] < 0.4 * summary["test_force_baseline"], summary


def test_library_commands_do_not_import_ray():
    """`dcnn-ablate train` and `data` are the PyTorch library's commands: Ray is loaded by `ablate` only."""
    code = ("import sys\nfrom orchestrator.cli import main\n"
            "assert main(['data', 'info', 'ethanol']) == 0\n"
            "assert main(['train', '--epochs', '1', '--n-train', '20', '--n-val', '10', '--n-test', '10']) == 0\n"
            "print('ray loaded:', 'ray' in sys.modules)\n"
            "print('optional models loaded:', [m for m in ('mace', 'e3nn') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ray loaded: False" in proc.stdout
    assert "optional models loaded: []" in proc.stdout  # mace/e3nn load only when `mace` is asked for


def test_atomic_reference_energies_by_least_squares():
    """Several compositions: the exact per-element energies come back; one composition: the min-norm fit
    whose molecular sum is the mean energy (what the shift subtracts from a one-molecule data set)."""
    from legacy_dense.labels import LabelTransform, fit_atomic_energies

    refs = {1: -13.6, 6: -1029.8, 8: -2041.3}
    molecules = np.array([[6, 1, 1, 1, 1], [8, 1, 1, 0, 0], [6, 8, 8, 0, 0], [6, 6, 1, 1, 1]])
    energies = np.array([sum(refs.get(int(z), 0.0) for z in m) for m in molecules])
    fitted = fit_atomic_energies(molecules, energies)
    assert {z: fitted[z] for z in refs} == pytest.approx(refs, rel=1e-10)
    one = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    e = np.array([-7100.0, -7102.0, -7099.0])
    t = LabelTransform.fit(one, e, shift=True, scale=1e4)
    assert t.offset == pytest.approx(e.mean(), rel=1e-12)
    assert t.inverse_energies(t.energies(e)) == pytest.approx(e, rel=1e-12)
    assert LabelTransform.fit(one, e, shift=False, scale=10.0).energies(e) == pytest.approx(e / 10)


def test_train_help_groups_flags_by_what_they_set_and_sizes_by_model():
    """`dcnn-ablate train --help`: every TrainConfig key once, in a group; a model's own sizes under its
    name (with its small preset's values), sizes several models share in one group, with `--size NAME=VALUE`
    for any size (a plug-in's own too)."""
    from dataclasses import fields

    from dcnn.cli import build_parser
    from dcnn.config import LEGACY_SIZE_NAMES

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    groups = {g.title: [a.dest for a in g._group_actions] for g in train._action_groups}
    assert "size.filters" in groups["schnet sizes"] and "size.emb_trip" in groups["gemnet_t sizes"]
    assert "size.int_emb" in groups["dimenetpp sizes"] and "size.cutoff" in groups["sizes shared by several models"]
    assert "size_values" in groups["sizes shared by several models"]  # --size NAME=VALUE
    assert "init" in groups["what to train"] and "flush_denormals" in groups["where and how it runs"]
    placed = [d for title, dests in groups.items() if title not in ("options", "positional arguments")
              for d in dests]
    keys = [f.name for f in fields(TrainConfig) if f.name != "sizes"] + [f"size.{n}" for n in LEGACY_SIZE_NAMES]
    assert sorted(placed) == sorted(keys + ["size_values"])  # each key exactly once
    text = train.format_help()
    assert "small preset: --hidden 64, --filters 64, --interactions 3" in text


def _leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """Every leaf tensor the loss's autograd graph reaches (its AccumulateGrad nodes)."""
    seen, stack, leaves = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def test_a_training_step_differentiates_for_the_parameters_only():
    """The loss reaches the positions (a leaf that requires grad, for the forces); the trainer's backward
    leaves them without a gradient (a plain `loss.backward()` made one, through the second derivatives of
    the geometry, and threw it away) and gives the parameters exactly the gradients a plain backward gives."""
    trainer = Trainer(TrainConfig(model="schnet", epochs=1, dtype="float64", compile="off", **FAST))
    index = next(iter(trainer.task.batches(torch.Generator().manual_seed(0), 20)))
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    plain, _ = trainer.task.loss(index)
    others = [t for t in _leaves(plain) if not any(t is p for p in params)]
    assert others and all(t.shape[-1] == 3 for t in others)  # the positions, and nothing else
    trainer.optimizer.zero_grad(set_to_none=True)
    plain.backward()
    assert all(t.grad is not None for t in others)  # what the trainer avoids
    expected = [p.grad.clone() for p in params]

    loss, _ = trainer.task.loss(index)
    positions = [t for t in _leaves(loss) if not any(t is p for p in params)]
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer._backward(loss)
    assert positions and all(t.grad is None for t in positions)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
