"""Bad inputs across every subcommand and the study YAML schema (issue 8).

Each case runs `dcnn-ablate` in-process and asserts: a non-zero exit, one message naming the offender
(flag, file, field or value), no traceback, nothing created or changed in the working folder, and that
neither Ray, training nor the MD started.  A few cases run as real processes to prove the exit code
end to end.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

BUNDLED = ROOT / "data" / "ethanol-gfn2-500K.npz"
GOOD_STUDY = """designs: [{activation: [irelu], denorm: [true], rescale: [true]}]
models: [schnet]
seeds: [0]
fixed: {n_train: 20, n_val: 10, n_test: 10, epochs: 1}
"""
DESIGN = "designs: [{activation: [irelu], denorm: [true], rescale: [true]}]\n"
TINY_SET = ["--set", "n_train=20", "--set", "n_val=10", "--set", "n_test=10"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_inputs(d: Path) -> None:
    """The files the cases point at (made before the snapshot)."""
    from dcnn.atomistic.molecules import load_dataset, save_npz

    ds = load_dataset(BUNDLED).subset(np.arange(60))
    save_npz(d / "small.npz", ds)
    (d / "empty.npz").write_bytes(b"")
    (d / "garbage.dat").write_bytes(b"\x00\x01 not a data set \xff" * 10)
    np.savez(d / "missing_keys.npz", R=ds.positions, z=ds.numbers)
    E = ds.energies.copy()
    E[3] = np.nan
    np.savez(d / "nan_labels.npz", R=ds.positions, z=ds.numbers, E=E, F=ds.forces)
    np.savez(d / "bad_shape.npz", R=ds.positions, z=ds.numbers, E=ds.energies, F=ds.forces[:, :4])
    np.savez(d / "pickled.npz", R=np.array([{"a": 1}], dtype=object), z=ds.numbers, E=ds.energies,
             F=ds.forces)
    good = (d / "small.npz").read_bytes()  # a member cut off (a copy that stopped): a damaged file, not a pickle
    import zipfile

    with zipfile.ZipFile(d / "small.npz") as src, zipfile.ZipFile(d / "cut_member.npz", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[: len(data) // 2] if item.filename == "F.npy" else data)
    assert (d / "small.npz").read_bytes() == good
    (d / "folder").mkdir()
    (d / "notes.txt").write_text("my notes, not a checkpoint\n")
    (d / "malformed.xyz").write_text("3\ncomment\nC 0 0\nO 1.2 0 0 0\n")
    (d / "coincident.xyz").write_text("2\n\nO 0 0 0\nH 0 0 0.01\n")
    (d / "mol.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")
    (d / "exists.npz").write_bytes(b"someone's file")
    (d / "text.npz").write_text("R,z,E,F\n1,2,3,4\n")  # a text file given the npz name
    np.savez(d / "empty_unit.npz", R=ds.positions, z=ds.numbers, E=ds.energies, F=ds.forces,
             energy_unit=np.array([], dtype=str))
    (d / "cfg_list.yaml").write_text("- lr\n- 1e-3\n")
    (d / "cfg_unknown.yaml").write_text("learning_rate: 0.1\n")
    (d / "cfg_good.yaml").write_text(f"lr: 0.001\ndataset: {d / 'small.npz'}\n")
    import torch

    torch.save({"model": {}, "optimizer": {}, "epoch": 1,
                "config": {"model": "cgcnn", "preset": "small", "dataset": str(d / "small.npz")}},
               d / "cgcnn.pt")
    torch.save({"weights": [1, 2, 3]}, d / "foreign.pt")
    studies = {
        "s_seeds_scalar": DESIGN + "seeds: 5\n",
        "s_models_scalar": DESIGN + "models: schnet\n",
        "s_reference_scalar": DESIGN + "reference: irelu\n",
        "s_seeds_float": DESIGN + "seeds: [0.5, 1.7]\n",
        "s_seeds_empty": DESIGN + "seeds: []\n",
        "s_models_empty": DESIGN + "models: []\n",
        "s_seeds_dup": DESIGN + "seeds: [1, 1]\n",
        "s_seeds_negative": DESIGN + "seeds: [-1]\n",
        "s_fixed_scalar": DESIGN + "fixed: 3\n",
        "s_designs_empty": "designs: []\n",
        "s_design_scalar": "designs: [irelu]\n",
        "s_activation": "designs: [{activation: [relu2], denorm: [true], rescale: [true]}]\n",
        "s_denorm": "designs: [{activation: [irelu], denorm: [maybe], rescale: [true]}]\n",
        "s_levels_empty": "designs: [{activation: [], denorm: [true], rescale: [true]}]\n",
        "s_factor": "designs: [{activation: [irelu], dropout: [0.1], denorm: [true], rescale: [true]}]\n",
        "s_fixed_axis": DESIGN + "fixed: {seed: 1}\n",
        "s_fixed_unknown": DESIGN + "fixed: {learning_rate: 1}\n",
        "s_fixed_negative": DESIGN + "fixed: {lr: -1}\n",
        "s_description": DESIGN + "description: [a, b]\n",
        "s_model_unknown": DESIGN + "models: [painn]\n",
        "s_top_list": "- designs\n",
        "s_unknown_key": DESIGN + "arms: []\n",
        "s_syntax": "designs: [\n",
        "s_reference_missing": "designs: [{activation: [isilu], denorm: [true], rescale: [true]}]\n",
        "s_split": DESIGN + "fixed: {n_train: 5000}\n",
        "s_empty": "",
    }
    for name, text in studies.items():
        (d / f"{name}.yaml").write_text(text)
    (d / "s_latin1.yaml").write_bytes("description: caf\xe9\n".encode("latin-1") + DESIGN.encode())
    (d / "good.yaml").write_text(GOOD_STUDY)
    # report inputs
    (d / "rep_empty").mkdir()
    t = d / "rep_parent" / "study1" / "trial_0"
    t.mkdir(parents=True)
    (t / "params.json").write_text("{}")
    t = d / "rep_bad" / "trial_0"
    t.mkdir(parents=True)
    (t / "params.json").write_text("")
    t = d / "rep_list" / "trial_0"
    t.mkdir(parents=True)
    (t / "params.json").write_text("[1, 2]")
    t = d / "rep_noresults" / "trial_0"
    t.mkdir(parents=True)
    (t / "params.json").write_text(json.dumps({"model": "schnet", "arm": "irelu"}))
    # a study that was started: its record (report/study.json), as written when a study starts
    from orchestrator import tracking, validate
    from orchestrator.runner import AblateOptions

    opts = AblateOptions(study=str(d / "good.yaml"), storage=str(d / "res"), experiment="started")
    study = opts.validate()
    plan = validate.plan_of(opts, study, "started", tracking.default_tracking_uri(d / "res"))
    validate.write_plan(d / "res" / "started", plan)


RESUME = ["ablate", "--study", "{d}/good.yaml", "--storage", "{d}/res", "--experiment", "started", "--resume"]

# (id, argv, what the message must name)
CASES = [
    # ---- ablate: flags ----
    ("seeds-empty", ["ablate", "--seeds", ""], "argument --seeds: empty list"),
    ("models-empty", ["ablate", "--models", ""], "argument --models: empty list"),
    ("seeds-float", ["ablate", "--seeds", "0.5,1"], "argument --seeds"),
    ("seeds-repeated", ["ablate", "--seeds", "1,1"], "repeated value(s) [1]"),
    ("seeds-negative", ["ablate", "--seeds", "-1"], "argument --seeds: seeds must be non-negative"),
    ("seeds-empty-item", ["ablate", "--seeds", "0,,1"], "argument --seeds: empty item"),
    ("models-unknown", ["ablate", "--models", "schnet,painn"], "unknown model 'painn'"),
    ("models-repeated", ["ablate", "--models", "schnet,schnet"], "argument --models: repeated"),
    ("experiment-path", ["ablate", "--experiment", "../../x"], "--experiment '../../x'"),
    ("experiment-slash", ["ablate", "--experiment", "a/b"], "--experiment 'a/b'"),
    ("experiment-empty", ["ablate", "--experiment", ""], "--experiment ''"),
    ("experiment-dotdot", ["ablate", "--experiment", ".."], "--experiment '..'"),
    ("address-closed", ["ablate", "--address", "127.0.0.1:{port}", *TINY_SET], "--address 127.0.0.1:{port}"),
    ("address-format", ["ablate", "--address", "headnode", *TINY_SET], "--address 'headnode'"),
    ("cpus-nan", ["ablate", "--cpus-per-trial", "nan"], "--cpus-per-trial must be a finite number, got nan"),
    ("cpus-inf", ["ablate", "--cpus-per-trial", "inf"], "--cpus-per-trial must be a finite number"),
    ("cpus-zero", ["ablate", "--cpus-per-trial", "0"], "--cpus-per-trial must be positive"),
    ("cpus-negative", ["ablate", "--cpus-per-trial", "-1"], "--cpus-per-trial must be positive, got -1"),
    ("cpus-word", ["ablate", "--cpus-per-trial", "two"], "argument --cpus-per-trial: invalid float value: 'two'"),
    ("gpus-negative", ["ablate", "--gpus-per-trial", "-0.5"], "--gpus-per-trial must be non-negative"),
    ("gpus-fraction", ["ablate", "--gpus-per-trial", "1.5"], "--gpus-per-trial above 1 must be a whole number"),
    ("gpus-nan", ["ablate", "--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number"),
    ("max-concurrent", ["ablate", "--max-concurrent", "0"], "--max-concurrent must be at least 1"),
    ("epochs-zero", ["ablate", "--epochs", "0"], "--epochs must be positive"),
    ("epochs-float", ["ablate", "--epochs", "2.5"], "argument --epochs: invalid int value: '2.5'"),
    ("preset", ["ablate", "--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    ("scheduler", ["ablate", "--scheduler", "pbt"], "argument --scheduler: invalid choice: 'pbt'"),
    ("tune-hparams", ["ablate", "--tune-hparams", "-1"], "--tune-hparams must be non-negative"),
    ("tuning-space", ["ablate", "--tune-hparams", "2", "--tuning-space", "nope"], "unknown tuning space 'nope'"),
    ("set-bad-float", ["ablate", "--set", "lr=fast"], "--set lr='fast': lr='fast' is not a valid float"),
    ("set-dataset", ["ablate", "--set", "dataset={d}/small.npz"], "--set dataset="),
    ("set-seed", ["ablate", "--set", "seed=3"], "--set seed=3: seed has its own flag, use --seeds"),
    ("set-model", ["ablate", "--set", "model=cgcnn"], "--set model='cgcnn'"),
    ("set-factor", ["ablate", "--set", "activation=isilu"], "--set activation='isilu': activation is a factor"),
    ("set-unknown", ["ablate", "--set", "learning_rate=1"], "--set learning_rate=1: unknown key 'learning_rate'"),
    ("set-negative", ["ablate", "--set", "lr=-1"], "--set lr=-1: lr=-1.0 must be positive"),
    ("set-no-equals", ["ablate", "--set", "lr"], "argument --set: expected KEY=VALUE, got 'lr'"),
    ("set-no-key", ["ablate", "--set", "=3"], "argument --set: expected KEY=VALUE, got '=3' (no key)"),
    ("set-no-value", ["ablate", "--set", "lr="], "--set lr=: no value given"),
    ("set-bad-yaml", ["ablate", "--set", "lr=[1"], "argument --set: 'lr=[1'"),
    ("set-contradicts-flag", ["ablate", "--epochs", "5", "--set", "epochs=3"], "--set epochs=3 contradicts --epochs 5"),
    ("set-split-too-big", ["ablate", "--set", "n_train=5000"], "too small for the split"),
    ("dataset-missing", ["ablate", "--dataset", "{d}/nope.npz"], "data set '{d}/nope.npz' is neither a bundled data set"),
    ("dataset-folder", ["ablate", "--dataset", "{d}/folder"], "{d}/folder: is a directory"),
    ("dataset-empty", ["ablate", "--dataset", "{d}/empty.npz"], "{d}/empty.npz: empty file"),
    ("dataset-garbage", ["ablate", "--dataset", "{d}/garbage.dat"], "{d}/garbage.dat: unreadable by ASE"),
    ("dataset-keys", ["ablate", "--dataset", "{d}/missing_keys.npz"], "{d}/missing_keys.npz: missing keys"),
    ("dataset-text-named-npz", ["ablate", "--dataset", "{d}/text.npz"],
     "{d}/text.npz: not an npz archive (an npz is a zip file of arrays: R, z, E, F as MD17's, or R, z, N, E, F for frames of different sizes); this is a file starting with b'R,z,E,F\\n'"),
    ("dataset-empty-unit", ["data", "info", "{d}/empty_unit.npz"], "{d}/empty_unit.npz: field 'energy_unit' is an empty array"),
    ("dataset-nan", ["ablate", "--dataset", "{d}/nan_labels.npz"], "{d}/nan_labels.npz: energies contain NaN"),
    ("dataset-too-small", ["ablate", "--dataset", "{d}/small.npz"], "{d}/small.npz: too small for the split"),
    # issue 27: refusals whose words fit their cause (not another check's advice wrapped around it)
    ("dataset-cut-member", ["data", "info", "{d}/cut_member.npz"], "{d}/cut_member.npz: unreadable npz (a damaged or cut-off array)"),
    ("pinn-model-on-molecules", ["ablate", "--models", "fcn", "--dataset", "{d}/small.npz"],
     "data set '{d}/small.npz' is atomistic data (a bundled name: ethanol, aspirin, catalysis, mlearn-Mo, mlearn-Si; or a data file), but "
     "model 'fcn' is a physics-informed network, which trains on a PDE problem"),
    ("potential-on-pde", ["train", "--model", "schnet", "--dataset", "burgers"],
     "data set 'burgers' is a PDE problem (advection, reaction_diffusion, burgers, diffusion_reaction), but model "
     "'schnet' is an interatomic potential"),
    ("split-ood-absent-element", ["ablate", "--set", "split=ood:Pt"],
     "split=ood:Pt (n_train=800, n_val=200, n_test=400): "),
    ("set-size-of-another-model", ["ablate", "--models", "fcn", "--datasets", "burgers", "--set", "filters=64"],
     "settings every arm shares (fixed, model_sizes, --set, --epochs, --preset) on fcn: size field(s) ['filters'] do not apply"),
    ("storage-relative", ["ablate", "--storage", "relative/dir"], "--storage must be an absolute path"),
    ("storage-uri-credentials", ["ablate", "--storage", "s3://AKIDEXAMPLE:wJalrEXAMPLEKEY@bucket/x"], "--storage: the URI carries credentials; refusing it"),
    ("storage-uri-secret-query", ["ablate", "--storage", "s3://bucket/x?secret_key=wJalrEXAMPLEKEY"], "--storage: the URI carries credentials"),
    ("storage-uri-scheme", ["ablate", "--storage", "nosuch://bucket/x"], "--storage 'nosuch://bucket/x': unknown storage scheme 'nosuch'"),
    ("storage-uri-no-tracking", ["ablate", "--storage", "s3://bucket/x"], "--storage s3://bucket/x: the default MLflow store (sqlite in the storage folder) cannot live in an object store"),
    ("report-uri-credentials", ["report", "s3://AKIDEXAMPLE:wJalrEXAMPLEKEY@bucket/x"], "report: the URI carries credentials"),
    ("storage-file", ["ablate", "--storage", "{d}/notes.txt", *TINY_SET], "{d}/notes.txt is a file, not a folder"),
    ("storage-under-file", ["ablate", "--storage", "{d}/notes.txt/x", *TINY_SET], "{d}/notes.txt is a file"),
    ("tracking-not-uri", ["ablate", "--tracking-uri", "mlflow.db"], "--tracking-uri 'mlflow.db': expected http(s)"),
    ("tracking-unreachable", ["ablate", "--tracking-uri", "http://127.0.0.1:{port}"], "--tracking-uri http://127.0.0.1:{port}: MLflow server not reachable"),
    ("tracking-not-sqlite", ["ablate", "--tracking-uri", "sqlite:///{d}/small.npz", *TINY_SET], "{d}/small.npz exists and is not an SQLite database"),
    ("tracking-folder", ["ablate", "--tracking-uri", "sqlite:///{d}/folder", *TINY_SET], "{d}/folder is a folder"),
    ("tracking-no-folder", ["ablate", "--tracking-uri", "sqlite:///{d}/nope/m.db", *TINY_SET], "the folder {d}/nope does not exist"),
    ("resume-nothing", ["ablate", "--storage", "{d}/res", "--experiment", "never", "--resume"], "--resume: {d}/res/never does not exist"),
    ("resume-other-seeds", RESUME + ["--seeds", "0,1"], "seeds: [0] → [0, 1]"),
    ("resume-other-epochs", RESUME + ["--epochs", "5"], "epochs: 1 → 5"),
    ("resume-other-dataset", RESUME + ["--dataset", "{d}/small.npz"], "datasets: "),
    ("resume-other-study", ["ablate", "--study", "stabilizers", "--storage", "{d}/res", "--experiment", "started", "--resume", *TINY_SET], "--resume: this command differs from the study"),
    ("resume-other-set", RESUME + ["--set", "lr=0.01"], "lr: 0.001 → 0.01"),
    ("no-resume-existing", ["ablate", "--study", "{d}/good.yaml", "--storage", "{d}/res", "--experiment", "started"], "already holds a study; pass --resume"),
    ("study-unknown", ["ablate", "--study", "nope"], "unknown study 'nope'"),
    ("study-folder", ["ablate", "--study", "{d}/folder"], "--study {d}/folder: is a folder"),
    ("study-missing", ["ablate", "--study", "{d}/nope.yaml"], "{d}/nope.yaml: no such study file"),
    # ---- study YAML schema ----
    ("yaml-seeds-scalar", ["ablate", "--study", "{d}/s_seeds_scalar.yaml"], "s_seeds_scalar.yaml: seeds must be a list"),
    ("yaml-models-scalar", ["ablate", "--study", "{d}/s_models_scalar.yaml"], "s_models_scalar.yaml: models must be a list"),
    ("yaml-reference-scalar", ["ablate", "--study", "{d}/s_reference_scalar.yaml"], "reference must be a mapping"),
    ("yaml-seeds-float", ["ablate", "--study", "{d}/s_seeds_float.yaml"], "seeds must be non-negative integers, got [0.5, 1.7]"),
    ("yaml-seeds-empty", ["ablate", "--study", "{d}/s_seeds_empty.yaml"], "seeds is an empty list"),
    ("yaml-models-empty", ["ablate", "--study", "{d}/s_models_empty.yaml"], "models is an empty list"),
    ("yaml-seeds-dup", ["ablate", "--study", "{d}/s_seeds_dup.yaml"], "seeds lists [1] more than once"),
    ("yaml-seeds-negative", ["ablate", "--study", "{d}/s_seeds_negative.yaml"], "seeds must be non-negative integers, got [-1]"),
    ("yaml-fixed-scalar", ["ablate", "--study", "{d}/s_fixed_scalar.yaml"], "fixed must be a mapping"),
    ("yaml-designs-empty", ["ablate", "--study", "{d}/s_designs_empty.yaml"], "'designs' must be a non-empty list"),
    ("yaml-design-scalar", ["ablate", "--study", "{d}/s_design_scalar.yaml"], "designs[0] must map factors"),
    ("yaml-activation", ["ablate", "--study", "{d}/s_activation.yaml"], "activation 'relu2' is not one of"),
    ("yaml-denorm", ["ablate", "--study", "{d}/s_denorm.yaml"], "denorm must be true or false, got 'maybe'"),
    ("yaml-levels-empty", ["ablate", "--study", "{d}/s_levels_empty.yaml"], "designs[0].activation is an empty list"),
    ("yaml-factor", ["ablate", "--study", "{d}/s_factor.yaml"], "unknown factor(s) ['dropout']"),
    ("yaml-fixed-axis", ["ablate", "--study", "{d}/s_fixed_axis.yaml"], "fixed must not set the study's axes ['seed']"),
    ("yaml-fixed-unknown", ["ablate", "--study", "{d}/s_fixed_unknown.yaml"], "unknown config key(s) ['learning_rate']"),
    ("yaml-fixed-negative", ["ablate", "--study", "{d}/s_fixed_negative.yaml"], "lr=-1.0 must be positive"),
    ("yaml-description", ["ablate", "--study", "{d}/s_description.yaml"], "description must be text"),
    ("yaml-model-unknown", ["ablate", "--study", "{d}/s_model_unknown.yaml"], "unknown model 'painn'"),
    ("yaml-top-list", ["ablate", "--study", "{d}/s_top_list.yaml"], "s_top_list.yaml: a study is a mapping"),
    ("yaml-unknown-key", ["ablate", "--study", "{d}/s_unknown_key.yaml"], "unknown key(s) ['arms']"),
    ("yaml-syntax", ["ablate", "--study", "{d}/s_syntax.yaml"], "s_syntax.yaml: not valid YAML"),
    ("yaml-reference-missing", ["ablate", "--study", "{d}/s_reference_missing.yaml"], "reference arm irelu+DN+LR is not among"),
    ("yaml-split", ["ablate", "--study", "{d}/s_split.yaml"], "too small for the split"),
    ("yaml-empty", ["ablate", "--study", "{d}/s_empty.yaml"], "s_empty.yaml: empty study file"),
    ("yaml-latin1", ["ablate", "--study", "{d}/s_latin1.yaml"], "s_latin1.yaml: not UTF-8"),
    # ---- report ----
    ("report-missing", ["report", "{d}/nope"], "report {d}/nope: no such folder"),
    ("report-file", ["report", "{d}/notes.txt"], "report {d}/notes.txt: is a file"),
    ("report-empty", ["report", "{d}/rep_empty"], "report {d}/rep_empty: holds no trials"),
    ("report-parent", ["report", "{d}/rep_parent"], "did you mean {d}/rep_parent/study1"),
    ("report-empty-params", ["report", "{d}/rep_bad"], "trial_0: params.json empty and no checkpoint records the trial: its config is lost"),
    ("report-params-list", ["report", "{d}/rep_list"], "trial_0: params.json holds a list, not a trial's config mapping and no checkpoint records"),
    ("report-no-results", ["report", "{d}/rep_noresults"], "no finished trials to report"),
    # ---- train ----
    ("train-lr-negative", ["train", "--lr", "-1e-3"], "lr=-0.001 must be positive"),
    ("train-lr-nan", ["train", "--lr", "nan"], "lr=nan must be positive"),
    ("train-cutoff-inf", ["train", "--cutoff", "inf"], "cutoff=inf must be positive"),
    ("train-epochs-zero", ["train", "--epochs", "0"], "epochs=0 must be positive"),
    ("train-batch-float", ["train", "--batch-size", "2.5"], "argument --batch-size: invalid int value"),
    ("train-model", ["train", "--model", "painn"], "model='painn' is not allowed; choose one of: schnet, cgcnn"),
    ("train-device", ["train", "--device", "cuda:x"], "device='cuda:x' is not allowed"),
    ("train-size-foreign", ["train", "--model", "schnet", "--embedding", "8"], "size field(s) ['embedding'] do not apply"),
    ("train-split", ["train", "--dataset", "{d}/small.npz", "--n-train", "100"], "{d}/small.npz: too small"),
    ("train-dataset-nan", ["train", "--dataset", "{d}/nan_labels.npz"], "{d}/nan_labels.npz: energies contain NaN"),
    ("train-resume-missing", ["train", "--resume", "{d}/nope.pt"], "--resume {d}/nope.pt: no such file"),
    ("train-resume-text", ["train", "--resume", "{d}/notes.txt"], "--resume {d}/notes.txt: not a checkpoint"),
    ("train-resume-npz", ["train", "--resume", "{d}/small.npz"], "--resume {d}/small.npz: not a checkpoint"),
    ("train-resume-folder", ["train", "--resume", "{d}/folder"], "--resume {d}/folder: is a folder"),
    ("train-resume-foreign", ["train", "--resume", "{d}/foreign.pt"], "--resume {d}/foreign.pt: a torch file but not"),
    ("train-resume-other-run", ["train", "--dataset", "{d}/small.npz", "--resume", "{d}/cgcnn.pt"], "model: 'cgcnn' → 'schnet'"),
    ("train-checkpoint-over-dataset", ["train", "--dataset", "{d}/small.npz", "--checkpoint", "{d}/small.npz"], "--checkpoint {d}/small.npz: is the --dataset"),
    ("train-checkpoint-over-dataset-force", ["train", "--dataset", "{d}/small.npz", "--checkpoint", "{d}/small.npz", "--force"], "refusing to write over an input"),
    ("train-checkpoint-over-config", ["train", "--config", "{d}/cfg_good.yaml", "--checkpoint", "{d}/cfg_good.yaml"], "--checkpoint {d}/cfg_good.yaml: is the --config"),
    ("train-checkpoint-exists", ["train", "--dataset", "{d}/small.npz", "--checkpoint", "{d}/exists.npz"], "--checkpoint {d}/exists.npz: the file exists"),
    ("train-checkpoint-no-folder", ["train", "--dataset", "{d}/small.npz", "--checkpoint", "{d}/nope/ck.pt"], "the folder {d}/nope does not exist"),
    ("train-checkpoint-folder", ["train", "--dataset", "{d}/small.npz", "--checkpoint", "{d}/folder"], "--checkpoint {d}/folder: is a folder"),
    ("train-config-missing", ["train", "--config", "{d}/nope.yaml"], "{d}/nope.yaml: cannot read config"),
    ("train-config-list", ["train", "--config", "{d}/cfg_list.yaml"], "{d}/cfg_list.yaml: expected a mapping"),
    ("train-config-unknown", ["train", "--config", "{d}/cfg_unknown.yaml"], "--config {d}/cfg_unknown.yaml: unknown config key(s) ['learning_rate']"),
    # ---- data info ----
    ("info-missing", ["data", "info", "{d}/nope.npz"], "data set '{d}/nope.npz' is neither a bundled data set"),
    ("info-folder", ["data", "info", "{d}/folder"], "{d}/folder: is a directory"),
    ("info-empty", ["data", "info", "{d}/empty.npz"], "{d}/empty.npz: empty file"),
    ("info-pickled", ["data", "info", "{d}/pickled.npz"], "{d}/pickled.npz: unreadable npz (pickled objects"),
    ("info-nan", ["data", "info", "{d}/nan_labels.npz"], "energies contain NaN/inf in 1 frame(s), first at frame 3"),
    ("info-shape", ["data", "info", "{d}/bad_shape.npz"], "{d}/bad_shape.npz: forces must have the shape"),
    ("info-garbage", ["data", "info", "{d}/garbage.dat"], "{d}/garbage.dat: unreadable by ASE"),
    ("info-keys", ["data", "info", "{d}/missing_keys.npz"], "missing keys ['E', 'F']"),
    # ---- data generate ----
    ("gen-temperature-nan", ["data", "generate", "--molecule", "ethanol", "--frames", "5", "--temperature", "nan", "--out", "{d}/g.npz"], "--temperature must be a positive finite number (K), got nan"),
    ("gen-temperature-negative", ["data", "generate", "--molecule", "ethanol", "--frames", "5", "--temperature", "-5", "--out", "{d}/g.npz"], "--temperature must be a positive finite number (K), got -5"),
    ("gen-frames-zero", ["data", "generate", "--molecule", "ethanol", "--frames", "0", "--out", "{d}/g.npz"], "--frames must be a positive integer, got 0"),
    ("gen-frames-negative", ["data", "generate", "--molecule", "ethanol", "--frames", "-3", "--out", "{d}/g.npz"], "--frames must be a positive integer, got -3"),
    ("gen-interval", ["data", "generate", "--molecule", "ethanol", "--frames", "5", "--interval", "0", "--out", "{d}/g.npz"], "--interval must be a positive integer"),
    ("gen-timestep", ["data", "generate", "--molecule", "ethanol", "--frames", "5", "--timestep", "100", "--out", "{d}/g.npz"], "--timestep 100.0 fs: too long"),
    ("gen-seed", ["data", "generate", "--molecule", "ethanol", "--frames", "5", "--seed", "-1", "--out", "{d}/g.npz"], "--seed must be a non-negative integer"),
    ("gen-out-no-folder", ["data", "generate", "--molecule", "ethanol", "--frames", "5", "--out", "{d}/nope/g.npz"], "--out {d}/nope/g.npz: the folder {d}/nope does not exist"),
    ("gen-out-folder", ["data", "generate", "--molecule", "ethanol", "--frames", "5", "--out", "{d}/folder"], "--out {d}/folder: is a folder"),
    ("gen-out-exists", ["data", "generate", "--molecule", "ethanol", "--frames", "5", "--out", "{d}/exists.npz"], "--out {d}/exists.npz: the file exists"),
    ("gen-out-is-input", ["data", "generate", "--molecule", "{d}/mol.xyz", "--frames", "5", "--out", "{d}/mol.xyz", "--force"], "--out {d}/mol.xyz: is the --molecule of this command"),
    ("gen-molecule-malformed", ["data", "generate", "--molecule", "{d}/malformed.xyz", "--frames", "5", "--out", "{d}/g.npz"], "--molecule {d}/malformed.xyz: not a structure file ASE can read"),
    ("gen-molecule-coincident", ["data", "generate", "--molecule", "{d}/coincident.xyz", "--frames", "5", "--out", "{d}/g.npz"], "coincident atoms"),
    ("gen-molecule-missing", ["data", "generate", "--molecule", "benzene", "--frames", "5", "--out", "{d}/g.npz"], "--molecule 'benzene': not 'ethanol', 'aspirin' or an existing"),
    ("gen-molecule-folder", ["data", "generate", "--molecule", "{d}/folder", "--frames", "5", "--out", "{d}/g.npz"], "--molecule {d}/folder: is a folder"),
    ("gen-frames-word", ["data", "generate", "--molecule", "ethanol", "--frames", "many", "--out", "{d}/g.npz"], "argument --frames: invalid int value: 'many'"),
]


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.join(dirpath, name)] = "dir"
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[p] = (st.st_size, st.st_mtime_ns, hashlib.sha1(Path(p).read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    make_inputs(d)
    return d


@pytest.fixture
def inputs(input_dir, tmp_path, monkeypatch):
    work = tmp_path / "cwd"  # the default --storage (./results) would appear here
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def no(what):
        def refuse(*a, **k):
            raise AssertionError(f"{what} started although the input is bad")
        return refuse

    import dcnn.atomistic.xtb
    import dcnn.train
    import orchestrator.runner

    monkeypatch.setattr(orchestrator.runner, "_init_ray", no("Ray"))
    monkeypatch.setattr(dcnn.train, "train", no("training"))
    monkeypatch.setattr(dcnn.atomistic.xtb, "xtb_calculator", no("the MD"))
    return work, input_dir


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_compute(argv, message, inputs, capsys):
    from orchestrator.cli import main

    work, d = inputs
    port = _closed_port()
    argv = [a.format(d=d, port=port) for a in argv]
    message = message.format(d=d, port=port)
    before = snapshot(work), snapshot(d)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc != 0, out + err
    assert message in err, err
    assert "Traceback" not in out + err and "wJalrEXAMPLEKEY" not in out + err  # never echo a secret
    assert len([line for line in err.strip().splitlines() if "error" in line]) == 1, err  # one message
    assert (snapshot(work), snapshot(d)) == before, "a refused command created or changed files"


def test_case_count():
    assert len(CASES) >= 60
    commands = {c[1][0] if c[1][0] != "data" else " ".join(c[1][:2]) for c in CASES}
    assert commands == {"ablate", "report", "train", "data info", "data generate"}


@pytest.mark.parametrize("argv,message", [
    (["ablate", "--seeds", ""], "argument --seeds: empty list"),
    (["train", "--dataset", "{d}/small.npz", "--checkpoint", "{d}/small.npz"], "is the --dataset"),
], ids=["argparse", "train-overwrite"])
def test_exit_code_end_to_end(argv, message, tmp_path):
    """As a user runs it: a real process, exit status 2, one line, no traceback, nothing written."""
    d = tmp_path / "in"
    d.mkdir()
    from dcnn.atomistic.molecules import load_dataset, save_npz

    save_npz(d / "small.npz", load_dataset(BUNDLED).subset(np.arange(60)))
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", *[a.format(d=d) for a in argv]],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert message.format(d=d) in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert snapshot(tmp_path) == before


def test_checkpoint_may_continue_the_checkpoint_it_resumes(tmp_path):
    """--resume X --checkpoint X is the way to continue a run in place: allowed (only inputs of other
    kinds and foreign files are protected)."""
    from dcnn import cli as dcnn_cli

    args = dcnn_cli.build_parser().parse_args(
        ["train", "--resume", str(tmp_path / "ck.pt"), "--checkpoint", str(tmp_path / "ck.pt")])
    dcnn_cli.check_output("--checkpoint", args.checkpoint, {"--dataset": BUNDLED}, force=True)
