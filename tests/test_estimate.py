"""`dcnn-ablate ablate --estimate` (orchestrator/estimate.py): a study's wall time on this machine from a few
timed epochs, with nothing run or written."""
import pytest

from orchestrator.cli import main
from orchestrator.estimate import estimate_study, format_estimate, makespan
from search_spaces import load_study


def ethanol_study(tmp_path, activations: str, compile_mode: str):
    """A SchNet study on the bundled ethanol, 2 seeds of 3 epochs, of the activations given (a YAML list)."""
    path = tmp_path / "study.yaml"
    path.write_text(
        "reference: {activation: irelu, denorm: true, rescale: true}\n"
        f"designs:\n  - {{activation: {activations}, denorm: [true], rescale: [true]}}\n"
        "models: [schnet]\ndatasets: [ethanol]\nseeds: [0, 1]\n"
        f"fixed: {{epochs: 3, n_train: 40, n_val: 8, n_test: 8, compile: '{compile_mode}'}}\n")
    return load_study(str(path))


@pytest.mark.parametrize("durations,slots,wall", [
    ([3, 3, 3], 2, 6),  # two at once, then the third alone
    ([5, 1, 1, 1, 1, 1], 2, 5),  # the short ones fill the other slot while the long one runs
    ([1, 1, 1, 1, 1, 5], 2, 7),  # in that order the long one starts last, into the slot free at 2
    ([2, 4, 1], 1, 7),  # one slot: the sum
    ([2, 4], 8, 4),  # more slots than trials: the longest
])
def test_trials_are_laid_out_as_tune_starts_them(durations, slots, wall):
    assert makespan(durations, slots) == pytest.approx(wall)


def test_each_arm_and_each_level_of_a_knob_is_timed(tmp_path):
    """Arms differ in cost (another activation: SchNet's iSiLU epochs on Mo cost 1.6× IReLU's) and so do the
    levels of a knob the arms vary (the batch size): each is timed once, its seeds share the timing.  Real
    Trainers on the bundled ethanol data."""
    path = tmp_path / "study.yaml"
    path.write_text(
        "reference: {activation: irelu, denorm: true, rescale: true, batch_size: 16}\n"
        "designs:\n"
        "  - {activation: [irelu, original], denorm: [true], rescale: [true], batch_size: [16]}\n"
        "  - {activation: [irelu], denorm: [true], rescale: [true], batch_size: [16, 1]}\n"
        "models: [schnet]\ndatasets: [ethanol]\nseeds: [0, 1]\n"
        "fixed: {epochs: 4, n_train: 48, n_val: 8, n_test: 8, compile: 'off'}\n")
    study = load_study(str(path))
    lines = []
    e = estimate_study(study, cpus_per_trial=1.0, max_concurrent=2, log=lambda *a, **k: lines.append(a[0]))
    assert e["trials"] == 3 * 2 and e["slots"] == 2
    rows = {(r["arm"], r["levels"]["batch_size"]): r for r in e["rows"]}
    assert len(rows) == 3 and all(r["trials"] == 2 for r in rows.values())
    assert {a for a, _ in rows} == {c["arm"] for c in study.trial_configs()}
    for r in rows.values():
        assert r["epochs"] == 4 and r["epoch_s"] > 0 and r["compile_s"] == 0.0
        assert r["trial_s"] == pytest.approx(r["setup_s"] + 4 * r["epoch_s"] + r["test_s"])
    (small,) = [r for (a, b), r in rows.items() if b == 1]
    # 48 steps of 1 structure against 3 of 16: an epoch of batches of 1 costs several times either arm's of 16
    # (a margin that arms timed side by side with other tests' load on the same cores do not close)
    ratios = [small["epoch_s"] / r["epoch_s"] for (a, b), r in rows.items() if b == 16]
    assert all(x > 2 for x in ratios), ratios
    assert e["trial_s_total"] == pytest.approx(2 * sum(r["trial_s"] for r in rows.values()))
    by_config = {(c["arm"], c["batch_size"]): rows[(c["arm"], c["batch_size"])]["trial_s"]
                 for c in study.trial_configs()}
    assert e["wall_s"] == pytest.approx(makespan(
        [by_config[(c["arm"], c["batch_size"])] for c in study.trial_configs()], 2))
    assert len(lines) == 4  # the plan, then one line per timed arm


def test_the_cli_estimate_writes_nothing(tmp_path, capsys):
    storage = tmp_path / "results"
    assert main(["ablate", "--estimate", "--models", "schnet", "--seeds", "0", "--epochs", "3", "--storage",
                 str(storage), "--set", "n_train=40", "n_val=8", "n_test=8", "compile=off"]) == 0
    out = capsys.readouterr().out
    assert "Estimated wall time of seed-plan on this machine" in out
    assert "| schnet | ethanol" in out and "| 3 |" in out  # the seed plan's 6 SchNet cells, 3 epochs each
    assert not storage.exists()


def test_the_estimate_checks_the_study_first(tmp_path, capsys):
    """Bad input is refused as a run refuses it, before anything is timed."""
    assert main(["ablate", "--estimate", "--models", "schnet", "--epochs", "0", "--storage", str(tmp_path)]) == 2
    assert "--epochs must be positive" in capsys.readouterr().err


def test_the_estimate_refuses_what_it_cannot_time(tmp_path, capsys):
    assert main(["ablate", "--estimate", "--tune-hparams", "2", "--storage", str(tmp_path)]) == 2
    assert "--estimate times the seed trials" in capsys.readouterr().err


def test_each_arms_cold_compile_is_timed_and_its_trials_pay_the_warm_one(tmp_path, monkeypatch):
    """The estimate's compile of each arm's graph fills the compile cache, so the study's trials compile warm:
    where the estimate's was cold (an empty cache here), a second build times the warm compile, and the
    trials are costed with it.  Two activations: two graphs, each compiled cold once."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # no graph compiled here before
    study = ethanol_study(tmp_path, "[irelu, original]", "on")
    lines = []
    e = estimate_study(study, max_concurrent=2, log=lambda *a, **k: lines.append(a[0]))
    assert len(e["rows"]) == 2
    for r in e["rows"]:
        assert r["compiled"] == 1 and r["compile_cold"] == 1 and r["compile_s"] > 0 and r["compile_warm_s"] > 0
        assert r["compile_warm_s"] != r["compile_s"]  # a second build, timed on its own
        assert r["trial_s"] == pytest.approx(r["setup_s"] + r["compile_warm_s"] + 3 * r["epoch_s"] + r["test_s"])
        assert f"{r['compile_warm_s']:.1f} (cold here: {r['compile_s']:.1f})" in format_estimate(e)
    assert all("(cold; warm: " in line for line in lines[1:])
    assert e["trial_s_total"] == pytest.approx(2 * sum(r["trial_s"] for r in e["rows"]))
    # timed again, the cache holds both graphs: one build each, its compile warm, and that is what a trial pays
    for again in estimate_study(study, max_concurrent=2, log=lambda *a, **k: None)["rows"]:
        assert again["compile_cold"] == 0 and again["compile_warm_s"] == again["compile_s"]


def test_arms_are_timed_side_by_side_in_as_many_workers_as_the_study_has_slots(tmp_path):
    """Concurrent trials share memory bandwidth and caches, so the arms are timed as many at once as the study
    runs trials: in worker processes, not this one; with one arm and two slots a copy of it runs beside it as
    load (the study's second seed), its lines not logged.  One slot: timed in this process."""
    import os

    study = ethanol_study(tmp_path, "[irelu]", "off")
    lines = []
    e = estimate_study(study, max_concurrent=2, log=lambda *a, **k: lines.append(a[0]))
    (row,) = e["rows"]
    assert e["slots"] == 2 and row["trials"] == 2 and row["pid"] != os.getpid() and row["epoch_s"] > 0
    assert len(lines) == 2 and "2 side by side" in lines[0]  # the plan and the timed arm, not its copy
    (alone,) = estimate_study(study, max_concurrent=1, log=lambda *a, **k: None)["rows"]
    assert alone["pid"] == os.getpid()
