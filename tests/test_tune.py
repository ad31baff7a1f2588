"""The Ray Tune layer against real Ray (in-process) and real MLflow (sqlite)."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, TINY, write_study
from orchestrator import tracking
from orchestrator.runner import AblateOptions, run_ablation

REF = {"activation": "irelu", "denorm": True, "rescale": True}
TWO_ARMS = [{"activation": ["irelu", "isilu"], "denorm": [True], "rescale": [True]}]


def trial_runs(uri, experiment):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return [r for r in c.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("dcnn.role") == "trial"]


def test_search_spaces_are_the_designs(tmp_path):
    import search_spaces

    plan = search_spaces.load_study("seed-plan")
    keys = [a.key for a in plan.arms]
    # every arm from LSUV (issue 16); the shared arm once
    assert keys == [k + "+LSUV" for k in ("irelu+DN+LR", "ielu+DN+LR", "igelu+DN+LR", "isilu+DN+LR",
                                          "original+DN+LR", "irelu+DN", "irelu+LR", "irelu")]
    # SchNet has no BatchNorm: its DN-removed arms are the DN arms' computation, run once
    assert plan.identical_arms() == {"schnet": {"irelu+LR+LSUV": "irelu+DN+LR+LSUV", "irelu+LSUV": "irelu+DN+LSUV"}}
    assert len(plan.trial_configs()) == (8 + 6) * 3
    assert len(search_spaces.load_study("factorial").arms) == 20
    # PINNs: the seed plan fits ≈ 10 min on 2 cores, both problems, the paper's Adam; pinn-full adds three arms
    pinn = [a.key for a in search_spaces.load_study("pinn-seed-plan").arms]
    assert pinn == ["tanh+DN", "irelu+DN", "irelu+DN+LSUV", "tanh+DN+LR"], pinn
    for name in ("pinn-seed-plan", "pinn-full"):
        study = search_spaces.load_study(name)
        assert study.setting("optimizer") == "adam" and study.setting("lr") == 1e-3 and len(study.datasets) == 2
    assert [a.key for a in search_spaces.load_study("pinn-full").arms] == [
        "tanh+DN", "tanh+DN+LSUV", "irelu+DN", "irelu+DN+LSUV", "isilu+DN+LSUV", "tanh", "tanh+DN+LR"]
    assert len(search_spaces.load_study("stabilizers").arms) == 4
    pre = search_spaces.load_study("preprocessing")
    assert {a.key for a in pre.arms} == {"irelu+DN+LR", "irelu+DN+LR+ES", "irelu+DN", "irelu+DN+ES",
                                         "irelu+LR", "irelu+LR+ES", "irelu", "irelu+ES"}
    assert len(pre.trial_configs()) == (8 + 4) * 3
    assert search_spaces.load_study("seed-plan").with_overrides(levels={"shift": True}).reference.key == "irelu+DN+LR+ES+LSUV"
    # the reference is never the skipped twin, whatever order the study file lists DN in; sizes as TrainConfig reads them
    reordered = search_spaces.Study(name="r", arms=[search_spaces.Arm("irelu", False, True), search_spaces.Arm("irelu", True, True)],
                                    reference=search_spaces.Arm("irelu", True, True), models=["schnet"],
                                    fixed={"hidden": 32.0})
    assert reordered.identical_arms() == {"schnet": {"irelu+LR": "irelu+DN+LR"}}
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(ROOT / "data/ethanol-gfn2-500K.npz", tmp_path / sub / "md17.npz")
    with pytest.raises(ValueError, match="share a name"):
        search_spaces.load_study("seed-plan").with_overrides(datasets=[str(tmp_path / "a/md17.npz"),
                                                                       str(tmp_path / "b/md17.npz")])
    paper = search_spaces.load_study("paper")  # the paper's exact setting, resolved
    assert {k: paper.setting(k) for k in ("preset", "lr", "lr_schedule", "epochs", "rescale_factor",
                                          "force_weight", "batch_size", "n_train", "n_val", "n_test")} == {
        "preset": "paper", "lr": 1e-4, "lr_schedule": "constant", "epochs": 50, "rescale_factor": 1e6,
        "force_weight": 30.0, "batch_size": 20, "n_train": None, "n_val": None, "n_test": None}
    # the paper's own initialisation (no LSUV): what the paper ran
    assert [a.key for a in paper.arms] == [k.removesuffix("+LSUV") for k in keys] and paper.setting("preset", "cgcnn") == "paper"
    # the runner's space skips the identical twins; the public one (users' own Tuner code) has the full grid
    cells = search_spaces.load_study("stabilizers").param_space(skip_identical=True)["cell"]["grid_search"]
    assert cells == ["schnet/irelu+DN+LR", "cgcnn/irelu+DN+LR", "schnet/irelu+DN", "cgcnn/irelu+DN",
                     "cgcnn/irelu+LR", "cgcnn/irelu"]
    space = search_spaces.get("activation")
    assert space["arm"] == {"grid_search": [a.key for a in search_spaces.load_study("activation").arms]}
    assert space["model"] == {"grid_search": ["schnet", "cgcnn"]}
    for name in ("default", "lr"):
        assert "grid_search" not in json.dumps({k: str(v) for k, v in search_spaces.tuning_space(name).items()})
    # a size only one model has (CGCNN's sum readout on slabs of many sizes) reaches that model's trials only
    cat = search_spaces.load_study("catalysis-seed-plan")
    assert cat.setting("readout", "cgcnn") == "sum" and cat.setting("readout", "schnet") is None
    assert {(c["model"], c.get("readout")) for c in cat.trial_configs()} == {("schnet", None), ("cgcnn", "sum")}
    size = cat.param_space(skip_identical=True)["readout"]
    assert [size.func(c) for c in ({"model": "cgcnn"}, {"model": "schnet"})] == ["sum", None]
    assert cat.with_overrides(models=["schnet"]).model_sizes == {}
    assert cat.with_overrides(fixed={"readout": "mean"}, models=["cgcnn"]).setting("readout", "cgcnn") == "mean"


@pytest.mark.parametrize("content,message", [
    ("designs: [{activation: [irelu], denorm: [true], rescale: [true]}]\nmodel_sizes: {gemnet_t: {readout: sum}}",
     r"model_sizes names models not in the study \['gemnet_t'\]"),
    ("designs: [{activation: [irelu], denorm: [true], rescale: [true]}]\nmodel_sizes: {cgcnn: {lr: 0.1}}",
     r"model_sizes sets \['lr'\], which are not sizes"),
    ("designs: [{activation: [irelu], denorm: [true], rescale: [true]}]\nmodel_sizes: {schnet: {readout: sum}}",
     r"settings every arm shares \(fixed, model_sizes, --set, --epochs, --preset\) on schnet: size field\(s\) "
     r"\['readout'\] do not apply"),
    ("designs: [{activation: [relu2], denorm: [true], rescale: [true]}]", "activation 'relu2' is not one of"),
    ("designs: [{activation: [irelu], denorm: [maybe], rescale: [true]}]", "denorm must be true or false"),
    ("designs: [{activation: [irelu], dropout: [0.1], denorm: [true], rescale: [true]}]", r"unknown factor\(s\) \['dropout'\]"),
    ("designs: [{activation: [isilu], denorm: [true], rescale: [true]}]", "reference arm irelu\\+DN\\+LR is not among"),
    ("designs: [{activation: [irelu], denorm: [true], rescale: [true]}]\nfixed: {lr: -1}", "lr=-1.0 must be positive"),
    ("designs: [{activation: [irelu], denorm: [true], rescale: [true]}]\nfixed: {learning_rate: 1}", r"unknown config key\(s\) \['learning_rate'\]"),
    ("arms: []", r"unknown key\(s\) \['arms'\]"),
    ("designs: [", "not valid YAML"),
])
def test_bad_study_files_named_errors(content, message, tmp_path):
    import search_spaces

    path = tmp_path / "study.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        search_spaces.load_study(str(path))
    assert str(path) in str(err.value)


def test_several_set_values_after_one_flag_reach_every_trial():
    """Hydra habit: `--set n_train=100 n_val=40`, also mixed with a repeated --set."""
    from orchestrator.cli import _settings, build_parser
    from orchestrator.runner import AblateOptions

    args = build_parser().parse_args(["ablate", "--set", "n_train=100", "n_val=40", "--epochs", "2",
                                      "--set", "lr=3e-4"])
    settings = _settings(args.set)
    assert settings == {"n_train": 100, "n_val": 40, "lr": 3e-4} and args.epochs == 2
    study = AblateOptions(set=settings, epochs=args.epochs).validate()
    assert all(c["n_train"] == 100 and c["n_val"] == 40 and c["lr"] == 3e-4 and c["epochs"] == 2
               for c in study.trial_configs())


@pytest.mark.parametrize("args,message", [
    (["--storage", "relative/dir"], "--storage must be an absolute path"),
    (["--storage", "s3://bucket/x"], "--tracking-uri: an MLflow server"),  # object storage: no default sqlite store
    (["--study", "nope"], "unknown study 'nope'; built-in: activation, activation-init, catalysis-seed-plan, factorial, knobs, mlearn-angular, mlearn-seed-plan, paper, paper-models, pinn-full, pinn-seed-plan, preprocessing, seed-plan, stabilizers"),
    (["--models", "schnet,painn"], "unknown model 'painn'"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial must be positive"),
    (["--gpus-per-trial", "1.5"], "above 1 must be a whole number"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--set", "lr=fast"], "lr='fast' is not a valid float"),
    (["--dataset", "/nonexistent/x.npz"], "data set '/nonexistent/x.npz' is neither a bundled"),
    (["--tracking-uri", "http://127.0.0.1:9"], "MLflow server not reachable"),
    (["--tracking-uri", "mlflow.db"], "expected http(s)://HOST:PORT or a database URI"),
    (["--scheduler", "asha"], "--scheduler asha stops trials early"),
    (["--datasets", "benzene"], "data set 'benzene' is neither a bundled data set (ethanol, aspirin, catalysis, mlearn-Mo, mlearn-Si)"),
    (["--models", "cgcnn", "--set", "n_train=1900"], "need 2500 frames but the data set has 2000"),
    (["--set", "lr=1e-3", "n_val=40", "lr=3e-4"], "--set lr given twice"),
])
def test_bad_flags_fail_before_ray_starts(args, message, tmp_path, monkeypatch, capsys):
    """In-process (a real process's exit status is tests/test_bad_inputs.py::test_exit_code_end_to_end)."""
    from orchestrator.cli import main

    monkeypatch.chdir(tmp_path)
    started = _ray_started()
    rc = main(["ablate", "--storage", str(tmp_path), *args])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert message in err
    assert "Started a local Ray instance" not in err + out and _ray_started() == started
    assert not list(tmp_path.glob("*/")), "nothing may be written"


def _ray_started() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def test_function_trainable_under_tune_run(ray_session, tracking_uri, tmp_path):
    from ray import tune

    import search_spaces
    from trainables import dcnn_trainable

    study = search_spaces.load_study(write_study(tmp_path / "fn.yaml", TWO_ARMS, REF))
    exp_id = tracking.ensure_experiment(tracking_uri, "fn-tune-run", tmp_path / "art")
    parent = tracking.ensure_parent_run(tracking_uri, exp_id, "fn", {})
    analysis = tune.run(dcnn_trainable, config=study.param_space(), storage_path=str(tmp_path / "results"),
                        name="fn", resources_per_trial={"cpu": 1}, verbose=0,
                        callbacks=[tracking.MLflowStudyLogger(tracking_uri, exp_id, parent, "fn")])
    assert len(analysis.trials) == 2 and all(t.status == "TERMINATED" for t in analysis.trials)
    for t in analysis.trials:
        r = t.last_result
        assert r["epoch"] == 2 and r["test_force_loss"] > 0
        assert r["test_energy_baseline"] > 0 and r["test_force_baseline"] > 10  # what a model must beat
        assert r["force_loss"] > 0 and r["diverged"] == 0
    runs = trial_runs(tracking_uri, "fn-tune-run")
    assert sorted(r.info.run_name for r in runs) == ["schnet · irelu · DN+LR · seed 0",
                                                     "schnet · isilu · DN+LR · seed 0"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.params["activation"] in ("irelu", "isilu")
        assert r.data.params["lr"] == "0.001" and r.data.params["epochs"] == "2"
        assert r.data.tags["mlflow.parentRunId"] == parent
        assert len(MlflowClient(tracking_uri).get_metric_history(r.info.run_id, "force_loss")) == 2
        assert "test_energy_loss" in r.data.metrics


def test_study_through_tuner_with_report(ray_session, tracking_uri, tmp_path, capsys):
    import os

    study = write_study(tmp_path / "mini.yaml", [{"activation": ["irelu"], "denorm": [True, False],
                                                  "rescale": [True, False]}], REF,
                        models=("schnet", "cgcnn"), seeds=(0, 1))
    report = run_ablation(AblateOptions(study=study, storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                        experiment="mini-tuner", quiet=True))
    printed = capsys.readouterr().out
    # our progress lines, Tune's result.json/progress.csv, and no pointer to TensorBoard (not used here)
    assert "TensorBoard" not in printed and "[12/12 ·" in printed
    # every finished trial's line says the time the study has left, counted from the trials it planned (the
    # names Tune's trials go by): nothing once the last one is done
    finished = [line for line in printed.splitlines() if re.match(r"^\[\d+/12 · \d+ s\] (schnet|cgcnn) · ", line)]
    assert len(finished) == 12, printed
    assert all(re.search(r"; ≈ \d+ (min|h) \d+ (s|min) left( \(not counting .*\))?$", line) for line in finished), finished
    assert finished[-1].endswith("≈ 0 min 00 s left"), finished[-1]
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ  # restored for the user's own Tune runs
    trial_dirs = [d for d in (tmp_path / "res/mini-tuner").iterdir() if (d / "params.json").exists()]
    assert len(trial_dirs) == 12 and all((d / "result.json").exists() and (d / "progress.csv").exists()
                                         for d in trial_dirs)
    paths = report["paths"]
    for p in paths.values():
        assert Path(p).exists() and Path(p).stat().st_size > 0
    summary = pd.read_csv(paths["summary"])
    assert len(summary) == 8 and set(summary.arm) == {"irelu+DN+LR", "irelu+DN", "irelu+LR", "irelu"}
    assert (summary.seeds == 2).all()
    ref = summary[summary.reference]
    assert len(ref) == 2 and ref.F_ratio.isna().all()
    assert (summary.E_baseline > 0).all() and (summary.F_baseline > 10).all()
    # SchNet has no BatchNorm: DN is a no-op there, so removing it changes nothing, exactly
    s = summary[summary.model == "schnet"].set_index("arm")
    assert s.loc["irelu+LR", "F_mean"] == s.loc["irelu+DN+LR", "F_mean"]
    md = Path(paths["markdown"]).read_text()
    assert all(a in md for a in ("irelu+DN+LR", "irelu+DN", "irelu+LR", "| irelu |")) and "kcal/mol/Å" in md
    # energy per atom with its baseline in the second table; EFwT (eV data only) left out on kcal/mol
    other = md.split("## Other metrics")[1].split("## Findings")[0]
    assert "| *baseline: mean E/atom* |" in other and "E/atom mean ± std | ×base |" in other
    assert "EFwT" not in md.split("## Findings")[0]
    # throughput summary (issue 11): every trial that ran, its costs, efficiency within what Ray had.  Each
    # trial's time lies inside the study's wall clock (a worker Ray started before the study counts from
    # the study's start) and the two reused actors run one trial at a time, so the trials' times cannot
    # add up to more than wall × slots: the 1e-3 is float rounding and one host clock read by processes
    tp = json.loads((tmp_path / "res/mini-tuner/report/throughput.json").read_text())
    assert tp["trials"] == 12 and tp["slots"] == 2 and 0 < tp["efficiency"] <= 1 + 1e-3
    assert tp["sum_trial_s"] <= tp["wall_s"] * tp["slots"] * (1 + 1e-3)
    for t in tp["per_trial"]:
        assert t["setup_s"] > 0 and t["actor_start_s"] >= 0 and t["train_s"] > 0 and t["peak_rss_mib"] > 100
        assert t["compiled"] == 0  # compile=auto: a 4-step trial never pays back a compile
    assert "## Throughput" in (tmp_path / "res/mini-tuner/report/throughput.md").read_text()
    trials = pd.read_csv(paths["trials"])
    # each trial's trained model is named in trials.csv and loads as an ASE calculator
    from ase import Atoms

    from dcnn.calculator import DCNNCalculator
    from dcnn.atomistic.molecules import load_dataset

    assert trials.checkpoint.map(lambda p: Path(p).is_file()).all()
    ethanol = load_dataset("ethanol")
    molecule = Atoms(numbers=ethanol.numbers, positions=ethanol.positions[0])
    molecule.calc = DCNNCalculator(trials.checkpoint.iloc[0])
    assert np.isfinite(molecule.get_potential_energy()) and np.isfinite(molecule.get_forces()).all()
    runs = {r.info.run_id: r for r in trial_runs(tracking_uri, "mini-tuner")}
    # SchNet's two DN-removed arms ran once (as their DN twins): 12 runs for 16 reported trials
    assert len(runs) == 12 and len(trials) == 16 and set(trials.mlflow_run_id) == set(runs)
    assert set(trials[trials.identical_to.notna()].arm) == {"irelu+LR", "irelu"} and "≡ irelu+DN+LR" in md
    for _, row in trials.iterrows():  # every number in the report is the MLflow run's number
        assert runs[row.mlflow_run_id].data.metrics["test_force_loss"] == pytest.approx(row.test_force_loss)
    c = MlflowClient(tracking_uri)
    parent = c.get_run(json.loads((tmp_path / "res/mini-tuner/report/study.json").read_text())["parent_run_id"])
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md", "report/bars.png",
                                                                                "report/curves.png", "report/summary.csv"}
    # nothing recorded is overwritten: running again without --resume is refused
    with pytest.raises(ValueError, match="already holds a study; pass --resume"):
        run_ablation(AblateOptions(study=study, storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                   experiment="mini-tuner"))
    # the report can be rebuilt from the folder alone
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", str(tmp_path / "res/mini-tuner")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "irelu+DN+LR" in proc.stdout


def test_throughput_of_a_resumed_study_counts_only_what_ran_in_its_wall_time():
    """A resumed study's throughput (orchestrator/throughput.py): a trial finished by the earlier driver is
    left out and counted as earlier; a trial restored from its checkpoint counts only the epochs its new worker
    ran.  Measured before the fix on mlearn-seed-plan resumed with 5 trials left: the restored trials' epochs
    from before the restore made 'other' -58.5 s per trial."""
    from ray.tune import Result

    from orchestrator.throughput import format_summary, summarize

    def trial(started, epochs, compile_s=2.0):  # one row per epoch: (reported_at, epoch_time_s)
        rows = [{"epoch": i + 1, "reported_at": at, "epoch_time_s": dt, "started_at": started,
                 "trial_id": f"t{started}", "actor_start_s": 0.5, "setup_s": 1.0, "compile_s": compile_s,
                 "compiled": 1, "compile_warm_cache": 1, "peak_rss_mib": 500.0, "peak_cuda_mib": float("nan")}
                for i, (at, dt) in enumerate(epochs)]
        return Result(metrics=rows[-1], checkpoint=None, error=None, path=".", metrics_dataframe=pd.DataFrame(rows))

    study_start = 1000.0
    done_before = trial(100.0, [(110.0, 10.0), (120.0, 10.0)])
    # restored: 3 epochs of 10 s by the first driver, then its new worker (from 1001 s) runs 2 epochs of 10 s
    restored = trial(1001.0, [(110.0, 10.0), (120.0, 10.0), (130.0, 10.0), (1013.0, 10.0), (1023.0, 10.0)])
    s = summarize([done_before, restored], wall_s=30.0, slots=2, resources={"CPU": 2}, study_start=study_start)
    assert (s["trials"], s["earlier_trials"]) == (1, 1)
    t = s["per_trial"][0]
    assert t["time_s"] == pytest.approx(22.5) and t["train_s"] == pytest.approx(18.0)  # 2 epochs, less the compile
    assert t["other_s"] == pytest.approx(22.5 - 20.0 - 0.5 - 1.0) and t["other_s"] >= 0
    assert "resumed the study: 1 trial(s) finished by an earlier run" in format_summary(s)
    fresh = summarize([restored], wall_s=30.0, slots=2, resources={"CPU": 2}, study_start=study_start)
    assert fresh["earlier_trials"] == 0 and "resumed" not in format_summary(fresh)


def test_two_datasets_shift_factor_and_varying_splits(ray_session, tracking_uri, tmp_path):
    """A study crossing data sets (bundled names), with the energy-shift factor and per-seed splits."""
    study = tmp_path / "cross.yaml"
    study.write_text(yaml.safe_dump({
        "designs": [{"activation": ["irelu"], "denorm": [True], "rescale": [True], "shift": [False, True]}],
        "models": ["schnet"], "seeds": [0, 1], "datasets": ["ethanol", "aspirin"], "split_seeds": "vary",
        "fixed": {**TINY, "epochs": 3}}))
    report = run_ablation(AblateOptions(study=str(study), storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                        experiment="cross", quiet=True))
    summary = report["summary"]
    assert sorted(summary.data.unique()) == ["aspirin", "ethanol"] and len(summary) == 4
    assert set(summary.arm) == {"irelu+DN+LR", "irelu+DN+LR+ES"}
    base = report["baselines"].set_index("data")
    assert base.loc["aspirin", "force_baseline"] != base.loc["ethanol", "force_baseline"]
    md = report["markdown"]
    assert "## aspirin · schnet" in md and "## ethanol · schnet" in md and "ES added (irelu+DN+LR+ES)" in md
    runs = trial_runs(tracking_uri, "cross")
    assert len(runs) == 8 and "aspirin · schnet · irelu · DN+LR+ES · seed 1" in {r.info.run_name for r in runs}
    for r in runs:
        assert r.data.params["split_seed"] == r.data.params["seed"]  # split follows the seed
        assert r.data.params["shift"] == r.data.tags["shift"]
    meta = json.loads((tmp_path / "res/cross/report/study.json").read_text())
    parent = MlflowClient(tracking_uri).get_run(meta["parent_run_id"])
    assert parent.data.metrics["baseline_test_energy_mae.aspirin"] == pytest.approx(base.loc["aspirin", "energy_baseline"])
    assert "Findings" in parent.data.tags["findings"]
    with_shift = pd.read_csv(report["paths"]["trials"])
    seeds = with_shift.groupby(["data", "seed"]).test_energy_baseline.first()
    assert seeds.loc[("ethanol", 0)] != seeds.loc[("ethanol", 1)]  # different splits, different baselines


def test_diverging_arm_recorded_and_study_completes(ray_session, tracking_uri, tmp_path):
    study = write_study(tmp_path / "div.yaml", [{"activation": ["irelu"], "denorm": [True], "rescale": [True, False]}],
                        REF, fixed={"lr": 1e8, "epochs": 3})
    report = run_ablation(AblateOptions(study=study, storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                        experiment="diverge", quiet=True))
    summary = report["summary"]
    assert (summary.diverged == 1).all() and summary.F_mean.isna().all()
    assert "| 1 |" in report["markdown"]
    runs = trial_runs(tracking_uri, "diverge")
    assert len(runs) == 2 and all(r.data.tags["diverged"] == "true" and r.info.status == "FINISHED" for r in runs)


def test_optuna_then_auto_seeds_run_at_each_arms_best_values(ray_session, tracking_uri, tmp_path):
    """`--tune-hparams` with `seeds: auto`: the sequential design's trials (from its searcher, not the grid)
    carry each arm's tuned values too."""
    import yaml

    path = tmp_path / "opt-auto.yaml"
    write_study(path, TWO_ARMS, REF)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "seeds": {"auto": {"min": 2, "max": 3}}}))
    report = run_ablation(AblateOptions(study=str(path), storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                        experiment="optuna-auto", tune_hparams=2, tuning_space="lr", quiet=True))
    best = json.loads((tmp_path / "res/optuna-auto/report/study.json").read_text())["best_hyperparameters"]
    seeds = [json.loads(d.read_text()) for d in (tmp_path / "res/optuna-auto").glob("DCNNTrainable_*/params.json")]
    assert 4 <= len(seeds) <= 6 and len(pd.read_csv(report["paths"]["trials"])) == len(seeds)
    assert {c["arm"] for c in seeds} == {"irelu+DN+LR", "isilu+DN+LR"}
    for cfg in seeds:
        assert cfg["lr"] == best[f"schnet/{cfg['arm']}"]["lr"], cfg  # the seeds run at the arm's best lr
    assert "## Seeds spent where questions were open" in report["markdown"]


def test_optuna_path_tunes_each_arm_then_reruns_seeds(ray_session, tracking_uri, tmp_path):
    study = write_study(tmp_path / "opt.yaml", TWO_ARMS, REF, seeds=(0, 1))
    report = run_ablation(AblateOptions(study=study, storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                                        experiment="optuna", tune_hparams=2, tuning_space="lr", quiet=True))
    meta = json.loads((tmp_path / "res/optuna/report/study.json").read_text())
    best = meta["best_hyperparameters"]
    assert set(best) == {"schnet/irelu+DN+LR", "schnet/isilu+DN+LR"}
    trials = pd.read_csv(report["paths"]["trials"])
    assert len(trials) == 4
    for d in (tmp_path / "res/optuna").glob("DCNNTrainable_*/params.json"):
        cfg = json.loads(d.read_text())
        assert cfg["lr"] == best[f"schnet/{cfg['arm']}"]["lr"]  # the seeds run at the arm's best lr
    runs = trial_runs(tracking_uri, "optuna")
    assert sum(r.data.tags.get("phase") == "tune" for r in runs) == 4  # 2 Optuna trials per arm
    assert len(runs) == 4 + 4
