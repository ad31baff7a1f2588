"""`dcnn-ablate ablate --estimate` (orchestrator/estimate.py): a study's wall time on this machine from a few
timed epochs, with nothing run or written."""
import pytest

from orchestrator.cli import main
from orchestrator.estimate import estimate_study, format_estimate, makespan
from search_spaces import load_study


@pytest.mark.parametrize("durations,slots,wall", [
    ([3, 3, 3], 2, 6),  # two at once, then the third alone
    ([5, 1, 1, 1, 1, 1], 2, 5),  # the short ones fill the other slot while the long one runs
    ([1, 1, 1, 1, 1, 5], 2, 7),  # in that order the long one starts last, into the slot free at 2
    ([2, 4, 1], 1, 7),  # one slot: the sum
    ([2, 4], 8, 4),  # more slots than trials: the longest
])
def test_trials_are_laid_out_as_tune_starts_them(durations, slots, wall):
    assert makespan(durations, slots) == pytest.approx(wall)


def test_a_knob_the_arms_vary_is_timed_per_level(tmp_path):
    """The batch size changes what an epoch costs, so each level is timed; the arms that differ only in the
    paper's components share one timing.  Real Trainers on the bundled ethanol data."""
    path = tmp_path / "study.yaml"
    path.write_text(
        "reference: {activation: irelu, denorm: true, rescale: true, batch_size: 16}\n"
        "designs:\n"
        "  - {activation: [irelu, original], denorm: [true], rescale: [true], batch_size: [16]}\n"
        "  - {activation: [irelu], denorm: [true], rescale: [true], batch_size: [16, 4]}\n"
        "models: [schnet]\ndatasets: [ethanol]\nseeds: [0, 1]\n"
        "fixed: {epochs: 4, n_train: 48, n_val: 8, n_test: 8, compile: 'off'}\n")
    study = load_study(str(path))
    lines = []
    e = estimate_study(study, cpus_per_trial=1.0, max_concurrent=2, log=lambda *a, **k: lines.append(a[0]))
    assert e["trials"] == 3 * 2 and e["slots"] == 2
    rows = {r["levels"]["batch_size"]: r for r in e["rows"]}
    assert set(rows) == {16, 4} and rows[16]["trials"] == 4 and rows[4]["trials"] == 2
    for r in rows.values():
        assert r["epochs"] == 4 and r["epoch_s"] > 0 and r["compile_s"] == 0.0
        assert r["trial_s"] == pytest.approx(r["setup_s"] + 4 * r["epoch_s"] + r["test_s"])
    # 12 steps of 4 structures against 3 of 16: an epoch of batches of 4 costs more
    assert rows[4]["epoch_s"] > rows[16]["epoch_s"]
    assert e["trial_s_total"] == pytest.approx(4 * rows[16]["trial_s"] + 2 * rows[4]["trial_s"])
    assert e["wall_s"] == pytest.approx(makespan(
        [rows[c["batch_size"]]["trial_s"] for c in study.trial_configs()], 2))
    assert len(lines) == 3  # the plan, then one line per timed group


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


def test_each_arms_graph_is_compiled_cold_once_and_the_rest_warm(tmp_path, monkeypatch):
    """Trials find their arm's graph in the compile cache once one has compiled it: the estimate's own compile
    fills it for the timed arm (where that one was cold, a second build times the warm compile), while an arm
    with another activation is another graph, compiled cold by its first trial (measured on mlearn Mo: the
    arms' cold compiles took a real study's mean compile from 12 to 29 s).  An empty cache here."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    path = tmp_path / "study.yaml"
    path.write_text(
        "reference: {activation: irelu, denorm: true, rescale: true}\n"
        "designs:\n  - {activation: [irelu, original], denorm: [true], rescale: [true]}\n"
        "models: [schnet]\ndatasets: [ethanol]\nseeds: [0, 1]\n"
        "fixed: {epochs: 3, n_train: 40, n_val: 8, n_test: 8, compile: 'on'}\n")
    lines = []
    e = estimate_study(load_study(str(path)), max_concurrent=2, log=lambda *a, **k: lines.append(a[0]))
    (r,) = e["rows"]
    assert r["compiled"] == 1 and r["compile_cold"] == 1 and r["compile_s"] > 0 and r["compile_warm_s"] > 0
    assert r["compile_warm_s"] != r["compile_s"] and r["compile_cold_s"] == r["compile_s"]  # a second build
    assert r["trial_s"] == pytest.approx(r["setup_s"] + r["compile_warm_s"] + 3 * r["epoch_s"] + r["test_s"])
    # 4 trials: irelu's graph is in the cache now, original's is not: its first trial (of 2 seeds) compiles cold
    assert r["trials"] == 4 and r["cold_compiles"] == 1
    assert e["trial_s_total"] == pytest.approx(4 * r["trial_s"] + r["compile_cold_s"] - r["compile_warm_s"])
    assert "(cold; warm: " in lines[-1]
    assert f"{r['compile_warm_s']:.1f}; {r['compile_cold_s']:.1f} cold in 1 |" in format_estimate(e)
    # timed again: one build, its compile warm; the cold time is the graph's first compile on record
    again = estimate_study(load_study(str(path)), max_concurrent=2, log=lambda *a, **k: None)["rows"][0]
    assert again["compile_cold"] == 0 and again["compile_warm_s"] == again["compile_s"]
    assert again["compile_cold_s"] == pytest.approx(r["compile_s"], abs=1e-3) and again["cold_compiles"] == 1
