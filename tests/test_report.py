"""The report's statistics and wording, on trial folders written here (no Ray): what it claims must
follow from the numbers."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from orchestrator.report import build_report, fmt, holm, paired_ratio


def test_fmt_three_significant_figures_positional():
    assert [fmt(x) for x in (356.0, 170.4, 2.5449, 0.012345, 7139.6, 12345.0, 0.0)] == \
        ["356", "170", "2.54", "0.0123", "7,140", "12,300", "0"]
    assert fmt(float("nan")) == "–" and fmt(None) == "–"


def test_holm_matches_the_textbook_procedure():
    # p sorted: 0.01, 0.02, 0.04 with m = 3 → 0.03, 0.04, 0.04 (monotone), NaN left out of the family
    assert holm([0.04, 0.01, float("nan"), 0.02]) == pytest.approx([0.04, 0.03, float("nan"), 0.04], nan_ok=True)
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_paired_ratio_is_the_ratio_of_geometric_means_with_a_t_interval():
    from scipy import stats

    ref = pd.DataFrame({"seed": [0, 1, 2, 3], "ok": True, "m": [1.0, 2.0, 4.0, 1.0]})
    arm = pd.DataFrame({"seed": [0, 1, 2, 3], "ok": [True, True, True, False], "m": [2.2, 3.6, 8.8, 50.0]})
    out = paired_ratio(arm, ref, "m")
    d = np.log([2.2, 3.6, 8.8]) - np.log([1.0, 2.0, 4.0])  # seed 3 did not finish: unpaired
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert out["n_pairs"] == 3 and out["ratio"] == pytest.approx(math.exp(d.mean()))
    assert (out["ratio_lo"], out["ratio_hi"]) == pytest.approx((math.exp(d.mean() - half), math.exp(d.mean() + half)))
    assert out["p"] == pytest.approx(stats.ttest_rel(np.log([2.2, 3.6, 8.8]), np.log([1.0, 2.0, 4.0])).pvalue)


def _write_trial(root, name, config, results):
    d = root / name
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(config))
    (d / "result.json").write_text("\n".join(json.dumps(r) for r in results) + "\n")


def _study(tmp_path, errors):
    """A study folder: reference, an arm 2× worse in E (clearly), an arm with noise, a blow-up, an
    identical-by-construction twin, over 5 seeds; E baseline 2.5, F baseline 17."""
    root = tmp_path / "study"
    arms = {"irelu+DN+LR": dict(activation="irelu", denorm=True, rescale=True),
            "isilu+DN+LR": dict(activation="isilu", denorm=True, rescale=True),
            "irelu+DN": dict(activation="irelu", denorm=True, rescale=False),
            "ielu+DN+LR": dict(activation="ielu", denorm=True, rescale=True)}
    rng = np.random.default_rng(0)
    for arm, factors in arms.items():
        for seed in range(5):
            e, f = errors(arm, seed, rng)
            cfg = {"model": "schnet", "arm": arm, "seed": seed, "shift": False, "dataset": "/d/ethanol.npz", **factors}
            last = {"epoch": 3, "done": True, "diverged": int(not math.isfinite(e)), "trial_id": f"{arm}-{seed}",
                    "test_energy_loss": e, "test_force_loss": f, "test_energy_baseline": 2.5,
                    "test_force_baseline": 17.0, "test_energy_scale": 7000.0, "energy_loss": e, "force_loss": f}
            _write_trial(root, f"t_{arm}_{seed}", cfg, [{**last, "epoch": 1, "done": False}, last])
    (root / "report").mkdir()
    (root / "report" / "study.json").write_text(json.dumps({
        "study": "synthetic", "reference": "irelu+DN+LR",
        "arms": ["irelu+DN+LR", "isilu+DN+LR", "irelu+DN", "ielu+DN+LR", "irelu+LR", "irelu"],
        "identical": {"schnet": {"irelu+LR": "irelu+DN+LR", "irelu": "irelu+DN"}},
        "dataset_info": {"/d/ethanol.npz": {"label": "ethanol", "units": ["kcal/mol", "kcal/mol/Å"]}}}))
    return root


def test_report_baselines_ratios_findings_and_identical_rows(tmp_path):
    base_e = [1.0, 1.2, 0.9, 1.1, 1.0]

    def errors(arm, seed, rng):
        e, f = base_e[seed], 3.0 + 0.1 * seed
        if arm == "isilu+DN+LR":  # 2× worse energy on every seed (±2 %); same forces
            return 2.0 * e * (1 + 0.02 * rng.standard_normal()), f
        if arm == "irelu+DN":  # noise only
            return e * math.exp(0.3 * rng.standard_normal()), f * math.exp(0.3 * rng.standard_normal())
        if arm == "ielu+DN+LR" and seed == 4:  # blew up: finite, but 10× worse than predicting zero
            return 1e6, 1e5
        return e, f

    report = build_report(_study(tmp_path, errors))
    s = report["summary"].set_index("arm")
    assert list(s.index) == ["irelu+DN+LR", "isilu+DN+LR", "irelu+DN", "ielu+DN+LR", "irelu+LR", "irelu"]
    assert s.loc["irelu+DN+LR", "E_baseline"] == 2.5 and s.loc["irelu+DN+LR", "E_vs_baseline"] == pytest.approx(1.04 / 2.5)
    assert s.loc["isilu+DN+LR", "E_ratio"] == pytest.approx(2.0, rel=0.03) and s.loc["isilu+DN+LR", "E_significant"]
    assert not s.loc["irelu+DN", "E_significant"]
    assert s.loc["ielu+DN+LR", "diverged"] == 1 and s.loc["ielu+DN+LR", "n"] == 4  # listed, not averaged
    assert s.loc["ielu+DN+LR", "E_mean"] == pytest.approx(np.mean(base_e[:4]))
    # Holm within the family: p_adj ≥ raw p, and the identical twin of the reference is no test at all
    assert (s.E_p_holm.dropna() >= s.E_p.dropna() - 1e-15).all() and math.isnan(s.loc["irelu+LR", "E_p"])
    assert s.loc["irelu+LR", "identical_to"] == "irelu+DN+LR" and s.loc["irelu+LR", "E_mean"] == s.loc["irelu+DN+LR", "E_mean"]
    # each distinct comparison counts once in the Holm family; the twin shows its original's result
    distinct = ["isilu+DN+LR", "irelu+DN", "ielu+DN+LR"]
    assert list(s.loc[distinct, "E_p_holm"]) == pytest.approx(holm(list(s.loc[distinct, "E_p"])))
    assert s.loc["irelu", "E_p_holm"] == s.loc["irelu+DN", "E_p_holm"]
    md = report["markdown"]
    assert "| *baseline: mean E, zero F* | | | 2.50 | 1 |" in md and "irelu+LR ≡ irelu+DN+LR" in md
    assert "e+0" not in md and "e-0" not in md  # no exponent notation in the tables
    found = report["findings"]
    line = next(x for x in found.splitlines() if x.startswith("- irelu → isilu (isilu+DN+LR)"))
    assert "energy error higher, ×2.0" in line and "(p_adj = <0.001)" in line, line
    assert "force: the same on every one of 5 seeds" in line
    assert "LR removed (irelu+DN): energy: not resolved with n = 5" in found
    assert "DN removed (irelu+LR): identical by construction" in found
    assert "1 of 5 seeds diverged (reference: 0 of 5)" in found
    assert "energy 1.04 kcal/mol (×0.42 the predict-mean baseline 2.50)" in found
    trials = pd.read_csv(report["paths"]["trials"])
    assert len(trials) == 6 * 5 and set(trials.data) == {"ethanol"}
    assert (tmp_path / "study/report/bars.png").stat().st_size > 10_000


def test_report_says_when_the_reference_does_not_beat_the_baseline(tmp_path):
    report = build_report(_study(tmp_path, lambda arm, seed, rng: (3.0 + seed, 5.0)))
    assert "its energy error is not below the predict-mean baseline" in report["findings"]


def test_divergence_is_the_familys_rule():
    from dcnn.atomistic.family import ATOMISTIC
    from orchestrator.report import mark_divergence

    base = {"model": "schnet", "finished": True, "diverged": 0, "test_energy_baseline": 2.5,
            "test_force_baseline": 17.0, "test_energy_scale": 7000.0}
    rows = [{**base, "test_energy_loss": 1.0, "test_force_loss": 3.0},  # fine
            {**base, "test_energy_loss": 70001.0, "test_force_loss": 3.0},  # E above 10 × mean |E|
            {**base, "test_energy_loss": 1.0, "test_force_loss": 171.0},  # F above 10 × mean |F|
            {**base, "test_energy_loss": math.nan, "test_force_loss": 3.0},  # non-finite
            {**base, "diverged": 1, "test_energy_loss": 1.0, "test_force_loss": 3.0},  # the trainer said so
            {**base, "finished": False, "test_energy_loss": math.nan, "test_force_loss": math.nan}]  # unfinished
    t = mark_divergence(pd.DataFrame(rows))
    assert list(t.blew_up) == [0, 1, 1, 0, 0, 0] and list(t.diverged) == [0, 1, 1, 1, 1, 0]
    assert list(t.ok) == [True, False, False, False, False, False]
    assert [ATOMISTIC.diverged(r) for r in rows[:4]] == [False, True, True, True]


def test_the_unit_sentence_keeps_the_angstrom(tmp_path):
    md = build_report(_study(tmp_path, lambda arm, seed, rng: (1.0, 3.0)))["markdown"]
    assert "Energy in kcal/mol; force in kcal/mol/Å." in md and "kcal/mol/å" not in md


def test_a_result_file_cut_mid_write_is_named_and_its_complete_lines_kept(tmp_path, capsys, caplog):
    from orchestrator.cli import main

    root = _study(tmp_path, lambda arm, seed, rng: (1.0 + 0.1 * seed, 3.0))
    cut = root / "t_irelu+DN_2" / "result.json"  # killed while writing its final record
    first, last = cut.read_text().splitlines()
    first = json.dumps({k: v for k, v in json.loads(first).items() if not k.startswith("test_")})  # an epoch's record
    cut.write_text(first + "\n" + last[: len(last) // 2])
    mid = root / "t_isilu+DN+LR_1" / "result.json"  # cut once, then resumed: the later lines are whole
    first, last = mid.read_text().splitlines()
    mid.write_text("\n".join([first, first[:20], last]) + "\n")
    rc = main(["report", str(root)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "## Damaged or unfinished trials" in out
    assert ("- `t_irelu+DN_2`: result.json: line 2 of 2 cut off or not JSON (a kill during the write?); kept the 1 "
            "complete line(s), last complete epoch 1.") in out
    assert ("- `t_isilu+DN+LR_1`: result.json: line 2 of 3 cut off or not JSON (a kill during the write?); kept the 2 "
            "complete line(s), last complete epoch 3.") in out
    assert "- ethanol · schnet · irelu+DN · seed 2: stopped after epoch 1" in out  # its final record was lost
    assert "isilu+DN+LR · seed 1:" not in out  # finished: its last line is whole
    assert "| irelu+DN | 4/5 |" in out and "| isilu+DN+LR | 5/5 |" in out
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("t_irelu+DN_2: result.json: line 2 of 2 cut off" in w for w in warned), warned


def _killed_study(tmp_path, tracking_uri):
    """A study as a killed driver leaves it: its record (report/study.json, as run_ablation writes it at the
    start), one finished trial, one stopped after epoch 2, one started without an epoch, one never started;
    MLflow runs in a real sqlite store made the way MLflowStudyLogger makes them."""
    from mlflow.tracking import MlflowClient

    from conftest import write_study
    from orchestrator import tracking, validate
    from orchestrator.runner import AblateOptions, _study_record

    study_file = write_study(tmp_path / "two-arms.yaml", [{"activation": ["irelu"], "denorm": [True],
                                                            "rescale": [True, False]}], models=("schnet",), seeds=(0, 1))
    opts = AblateOptions(study=study_file, storage=str(tmp_path / "res"), tracking_uri=tracking_uri,
                         experiment="killed", epochs=3, set={"lr": 3e-4})
    study = opts.validate()
    folder = tmp_path / "res" / "killed"
    exp = tracking.ensure_experiment(tracking_uri, "killed", tmp_path / "art", study.description)
    parent = tracking.ensure_parent_run(tracking_uri, exp, study.name, {})
    validate.write_plan(folder, validate.plan_of(opts, study, "killed", tracking_uri),
                        _study_record(study, study.identical_arms(), tracking_uri, "killed", parent))
    c = MlflowClient(tracking_uri)
    configs = study.trial_configs()  # irelu+DN+LR seed 0, 1; irelu+DN seed 0, 1
    runs = {}
    for index, cfg in enumerate(configs[:3]):
        tid = f"ab12c_{index:05d}"
        d = folder / f"DCNNTrainable_{tid}_{index}_arm={cfg['arm']},seed={cfg['seed']}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps(cfg))
        epoch = {"epoch": 1, "done": False, "trial_id": tid, "diverged": 0, "energy_loss": 1.0, "force_loss": 3.0}
        if index == 0:
            final = {**epoch, "epoch": 3, "done": True, "test_energy_loss": 1.0, "test_force_loss": 3.0,
                     "test_energy_baseline": 2.5, "test_force_baseline": 17.0, "test_energy_scale": 7000.0}
            (d / "result.json").write_text(json.dumps(epoch) + "\n" + json.dumps(final) + "\n")
        elif index == 1:
            (d / "result.json").write_text(json.dumps(epoch) + "\n" + json.dumps({**epoch, "epoch": 2}) + "\n")
        run = c.create_run(exp, run_name=tracking.trial_run_name(cfg),
                           tags={tracking.TRIAL_TAG: tid, "mlflow.parentRunId": parent, "dcnn.role": "trial"})
        if index == 0:
            c.set_terminated(run.info.run_id, "FINISHED")
        runs[index] = run.info.run_id
    other = c.create_run(tracking.ensure_experiment(tracking_uri, "another-study", tmp_path / "art2"), run_name="x")
    return folder, study_file, parent, runs, other.info.run_id


def test_unfinished_trials_are_listed_with_how_to_resume_and_closed_in_mlflow(tmp_path, tracking_uri, capsys):
    import shlex

    from mlflow.tracking import MlflowClient

    from orchestrator import validate
    from orchestrator.cli import build_parser, main
    from orchestrator.runner import AblateOptions

    folder, study_file, parent, runs, other = _killed_study(tmp_path, tracking_uri)
    def recorded():  # the trials' files and the study's record: what the report must never change
        return {p: p.read_bytes() for p in folder.glob("*/*") if p.parent.name != "report" or p.name == "study.json"}

    trial_files = recorded()
    rc = main(["report", str(folder), "--close-unfinished"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "3 trial(s) neither finished nor failed" in out
    assert "- ethanol · schnet · irelu+DN+LR · seed 1: stopped after epoch 2" in out
    assert "- ethanol · schnet · irelu+DN · seed 0: started, no epoch reported" in out
    assert "- ethanol · schnet · irelu+DN · seed 1: never started" in out
    command = (f"dcnn-ablate ablate --resume --study {study_file} --epochs 3 --set lr=0.0003 --tracking-uri "
               f"{tracking_uri} --storage {tmp_path / 'res'} --experiment killed")
    assert f"Resume with `{command}`" in out
    # the command is the same study: --resume's own check finds no difference
    args = build_parser().parse_args(shlex.split(command)[1:])
    opts = AblateOptions(study=args.study, epochs=args.epochs, set=dict(args.set), storage=args.storage,
                         tracking_uri=args.tracking_uri, experiment=args.experiment, resume=True)
    validate.check_resume(folder, validate.plan_of(opts, opts.validate(), "killed", tracking_uri))
    # closed: the two runs of unfinished trials and the study's run; nothing else
    assert "closed (KILLED) 2 MLflow run(s) of unfinished trials:" in out
    assert f"  ethanol · schnet · irelu+DN+LR · seed 1 (run {runs[1]})" in out
    assert f"  ethanol · schnet · irelu+DN · seed 0 (run {runs[2]})" in out
    assert "  1 trial(s) never started: no MLflow run" in out
    assert "the study's run 'study · two-arms': was RUNNING, closed (KILLED)" in out
    c = MlflowClient(tracking_uri)
    status = {k: c.get_run(r).info.status for k, r in runs.items()}
    assert status == {0: "FINISHED", 1: "KILLED", 2: "KILLED"}
    assert c.get_run(parent).info.status == "KILLED" and c.get_run(other).info.status == "RUNNING"
    assert recorded() == trial_files and len(trial_files) == 6
    # again: nothing left RUNNING to close, and it says so
    assert main(["report", str(folder), "--close-unfinished"]) == 0
    again = capsys.readouterr().out
    assert "closed (KILLED) 0 MLflow run(s) of unfinished trials" in again
    assert "  ethanol · schnet · irelu+DN · seed 0: left as it is (KILLED)" in again
    assert "the study's run 'study · two-arms': left as it is (KILLED)" in again


def test_close_unfinished_on_a_finished_study_says_so(tmp_path, capsys):
    from orchestrator.cli import main

    root = _study(tmp_path, lambda arm, seed, rng: (1.0, 3.0))
    assert main(["report", str(root), "--close-unfinished"]) == 0
    out = capsys.readouterr().out
    assert f"{root}: nothing unfinished; no MLflow run closed" in out and "Damaged or unfinished" not in out


def test_the_experiment_carries_the_study_description(tracking_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator import tracking
    from search_spaces import load_study

    c = MlflowClient(tracking_uri)
    exp = tracking.ensure_experiment(tracking_uri, "described", tmp_path / "a", "What this study is.")
    assert c.get_experiment(exp).tags["mlflow.note.content"] == "What this study is."
    assert tracking.ensure_experiment(tracking_uri, "described", tmp_path / "a", "Edited.") == exp  # found again
    assert c.get_experiment(exp).tags["mlflow.note.content"] == "Edited."
    assert tracking.ensure_experiment(tracking_uri, "described", tmp_path / "a") == exp  # none given: kept
    assert c.get_experiment(exp).tags["mlflow.note.content"] == "Edited."
    old = c.create_experiment("made-before-descriptions")
    tracking.ensure_experiment(tracking_uri, "made-before-descriptions", tmp_path / "b",
                               load_study("factorial").description)
    tags = c.get_experiment(old).tags
    assert tags["mlflow.note.content"] == "Full factorial, 5 activations × DN on/off × LR on/off."
    assert tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND


def test_stalled_seeds_are_counted_left_out_and_named_as_the_setups_failure(tmp_path):
    """Issue 28: a seed whose optimizer never moved (the trainer's `stalled`, dcnn.families.TaskFamily.stalled) is
    counted beside the divergences, enters no mean or comparison, and Findings says it did not train rather than
    reading it as the arm's effect."""
    root = _study(tmp_path, lambda arm, seed, rng: (1.0 + 0.1 * seed, 3.0))
    for seed in range(3):  # three of isilu's five seeds never trained: their (bad) errors must not count
        path = root / f"t_isilu+DN+LR_{seed}" / "result.json"
        first, last = (json.loads(x) for x in path.read_text().splitlines())
        last.update(stalled=1, test_energy_loss=2.5, test_force_loss=17.0)
        path.write_text(json.dumps(first) + "\n" + json.dumps(last) + "\n")
    report = build_report(root)
    row = report["summary"].set_index("arm").loc["isilu+DN+LR"]
    assert (row.n, row.stalled, row.diverged) == (2, 3, 0)
    assert row.E_mean == pytest.approx(np.mean([1.3, 1.4]))  # seeds 3 and 4 only
    md = report["markdown"]
    assert "| isilu+DN+LR | 2/5 | 0 · 3 stalled |" in md
    assert "the optimizer stopped, so the seed was not trained by it" in md  # the table's legend
    line = next(x for x in report["findings"].splitlines() if x.startswith("- irelu → isilu (isilu+DN+LR)"))
    assert ("3 of 5 seeds stalled (the optimizer stopped moving: at the start, or where Adam handed over to "
            "L-BFGS): a failure of the setup (optimizer, initialisation, budget), not read as an effect of this "
            "change") in line
    trials = pd.read_csv(report["paths"]["trials"])
    assert trials.set_index(["arm", "seed"]).stalled.loc["isilu+DN+LR"].tolist() == [1, 1, 1, 0, 0]
