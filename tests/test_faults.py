"""Faults with real processes (issue 8): what was killed, what survived, what was lost (nothing).

- a trial's worker SIGKILLed after reporting epoch k and before its checkpoint of epoch k was written;
  a trial whose model raises (same study);
- the driver SIGKILLed mid-study, then `--resume`;
- the MLflow server stopped mid-study for a few seconds, then started again on the same store;
- the disk of --storage read-only or full.

Faults are injected by a test-only subclass of the class trainable (tests/fault_trainable.py), which the
study runs through $DCNN_TRAINABLE, with the faults in $DCNN_FAULT_INJECT; the study's Ray workers inherit
both, and the PYTHONPATH that finds it, from the driver process.  The production trainable knows of no test.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, kill_driver, write_study
from fault_trainable import fault_env
from orchestrator.tune_snapshot import KEPT_FILE

REF = {"activation": "irelu", "denorm": True, "rescale": True}
ONE_ARM = [{"activation": ["irelu"], "denorm": [True], "rescale": [True]}]
KEYS = ("energy_loss", "force_loss", "train_energy_loss", "train_force_loss", "val_loss")


def cli(args, log_path, env=None, wait=True):
    cmd = [sys.executable, "-m", "orchestrator.cli", "ablate", "--address", "local", *map(str, args)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if wait:
        proc.wait(timeout=240)
    return proc


def trial_runs(uri, experiment):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return {int(r.data.tags["seed"]): r for r in c.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("dcnn.role") == "trial"}


def steps_per_key(uri, run_id):
    c = MlflowClient(uri)
    return {k: sorted(m.step for m in c.get_metric_history(run_id, k)) for k in KEYS}


def result_epochs(trial_dir: Path) -> list:
    return [json.loads(x).get("epoch") for x in (trial_dir / "result.json").read_text().splitlines() if x.strip()]


def trial_dir(experiment_dir: Path, seed: int) -> Path:
    for p in experiment_dir.glob("*/params.json"):
        if json.loads(p.read_text()).get("seed") == seed:
            return p.parent
    raise AssertionError(f"no trial folder for seed {seed}")


def test_killed_worker_and_raising_model(tmp_path, tracking_uri):
    """Figure: seed 0's worker is SIGKILLed after reporting epoch 2, before checkpoint 2 is durable
    (survives: the trial, retried from checkpoint 1, finishes; lost: nothing, MLflow holds each epoch
    once although epoch 2 ran twice); seed 1's model raises in epoch 2 on every try (FAILED with the error
    as a tag, listed in the report; the study goes on); seed 2 is untouched."""
    study = write_study(tmp_path / "faults.yaml", ONE_ARM, REF, seeds=(0, 1, 2), fixed={"epochs": 3})
    marker = tmp_path / "killed-once"
    faults = [{"action": "kill", "epoch": 2, "where": {"seed": 0}, "once": str(marker)},
              {"action": "raise", "epoch": 2, "where": {"seed": 1}}]
    proc = cli(["--study", study, "--storage", tmp_path / "res", "--tracking-uri", tracking_uri,
                "--experiment", "faults"], tmp_path / "run.log", env=fault_env(faults))
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 1, log[-3000:]  # a trial errored: non-zero, after the study finished
    assert marker.exists(), "the worker was never killed"
    runs = trial_runs(tracking_uri, "faults")
    assert sorted(runs) == [0, 1, 2]
    # killed worker: the trial finished from its checkpoint, every epoch exactly once in MLflow
    assert runs[0].info.status == "FINISHED" and "test_force_loss" in runs[0].data.metrics
    assert steps_per_key(tracking_uri, runs[0].info.run_id) == {k: [1, 2, 3] for k in KEYS}
    assert result_epochs(trial_dir(tmp_path / "res/faults", 0)).count(2) == 2, "epoch 2 was not replayed"
    # raising model: FAILED with the error, the other trials unaffected
    assert runs[1].info.status == "FAILED"
    assert "injected fault: the model raised in epoch 2" in runs[1].data.tags["error"]
    assert steps_per_key(tracking_uri, runs[1].info.run_id)["energy_loss"] == [1]
    assert runs[2].info.status == "FINISHED"
    assert steps_per_key(tracking_uri, runs[2].info.run_id) == {k: [1, 2, 3] for k in KEYS}
    # a local study's workers run on tcmalloc/jemalloc where one is installed (dcnn.numerics.fast_allocator)
    from dcnn.numerics import ALLOCATOR_LIBRARIES, fast_allocator

    found = fast_allocator()
    expected = "glibc" if found is None else next(n for n, lib in ALLOCATOR_LIBRARIES.items() if found.endswith(lib))
    assert runs[2].data.tags["malloc"] == expected, runs[2].data.tags
    report = (tmp_path / "res/faults/report/report.md").read_text()
    assert "## Failed trials" in report and "seed 1" in report and "injected fault" in report
    trials = pd.read_csv(tmp_path / "res/faults/report/trials.csv")
    assert sorted(trials.seed) == [0, 1, 2] and trials.set_index("seed").finished.to_dict() == \
        {0: True, 1: False, 2: True}


def _finished(folder: Path) -> int:
    return sum('"done": true' in f.read_text() for f in folder.glob("*/result.json"))


def test_killed_driver_then_resume(tmp_path, tracking_uri, ray_session):
    """Figure: the driver (and its in-process Ray) SIGKILLed after the first of 3 trials finished;
    `--resume` with other flags is refused and changes nothing; `--resume` continues: the finished trial
    is not re-run, the others continue from their checkpoints, one MLflow run per trial and one point per
    epoch (lost: nothing)."""
    study = write_study(tmp_path / "kill.yaml", ONE_ARM, REF, seeds=(0, 1, 2),
                        fixed={"epochs": 12, "n_train": 60})
    storage, exp_dir = tmp_path / "res", tmp_path / "res/killed-driver"
    args = ["--study", study, "--storage", storage, "--tracking-uri", tracking_uri, "--experiment", "killed-driver",
            "--max-concurrent", "1"]
    t0 = time.time()
    proc = cli(args, tmp_path / "first.log", env={"TUNE_GLOBAL_CHECKPOINT_S": "1"}, wait=False)
    deadline = t0 + 180
    # killed once a trial has finished and the next is two epochs in, as the driver saw them (its staging folder:
    # the study folder gets Tune's copies only every second, and these trials take about one)
    while time.time() < deadline and proc.poll() is None:
        staged = [_lines(p) for p in _staging(exp_dir, t0, "result.json")]
        if any('"done": true' in x[-1] for x in staged if x) and \
                any(len(x) >= 2 and '"done": true' not in x[-1] for x in staged):
            break
        time.sleep(0.02)
    kill_driver(proc)
    done_at_kill = sum(bool(x) and '"done": true' in x[-1] for x in map(_lines, _staging(exp_dir, t0, "result.json")))
    assert done_at_kill in (1, 2), (tmp_path / "first.log").read_text()[-3000:]
    plan = json.loads((exp_dir / "report/study.json").read_text())
    assert plan["seeds"] == [0, 1, 2] and plan["fixed"]["epochs"] == 12  # recorded when it started
    done_before = {p.parent.name: p.read_text() for p in exp_dir.glob("*/result.json") if '"done": true' in p.read_text()}

    from orchestrator.cli import main

    before = {p: p.stat().st_mtime_ns for p in exp_dir.rglob("*") if p.is_file()}
    assert main(["ablate", *map(str, args), "--resume", "--epochs", "20"]) == 2  # other flags: refused
    assert {p: p.stat().st_mtime_ns for p in exp_dir.rglob("*") if p.is_file()} == before

    assert main(["ablate", *map(str, args), "--resume"]) == 0
    for name, text in done_before.items():
        assert (exp_dir / name / "result.json").read_text() == text  # not re-run
    runs = trial_runs(tracking_uri, "killed-driver")
    assert sorted(runs) == [0, 1, 2]
    for r in runs.values():
        assert r.info.status == "FINISHED"
        assert steps_per_key(tracking_uri, r.info.run_id) == {k: list(range(1, 13)) for k in KEYS}
    trials = pd.read_csv(exp_dir / "report/trials.csv")
    assert len(trials) == 3 and trials.finished.all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mlflow(port, store: Path, log):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not start")


def _stop(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_mlflow_server_down_mid_study(tmp_path):
    """Figure: the MLflow server is killed mid-study and started again on the same store ~5 s later;
    the trials keep training meanwhile, the metrics are buffered by the driver and sent when it answers
    (survives: every run, every epoch's metrics, the report's upload; lost: nothing)."""
    port, store = _free_port(), tmp_path / "store"
    store.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server_log = open(tmp_path / "server.log", "w")
    server = _start_mlflow(port, store, server_log)
    epochs = 10
    study = write_study(tmp_path / "outage.yaml", ONE_ARM, REF, seeds=(0, 1), fixed={"epochs": epochs, "n_train": 60})
    exp_dir = tmp_path / "res/outage"
    proc = None
    try:
        proc = cli(["--study", study, "--storage", tmp_path / "res", "--tracking-uri", uri, "--experiment", "outage",
                    "--max-concurrent", "1"], tmp_path / "run.log", wait=False)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            results = list(exp_dir.glob("*/result.json"))
            if results and len(results[0].read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        _stop(server)
        down_at = time.time()
        time.sleep(5)
        during = sum(len(f.read_text().splitlines()) for f in exp_dir.glob("*/result.json"))
        server = _start_mlflow(port, store, server_log)
        outage = time.time() - down_at
        proc.wait(timeout=180)
        log = (tmp_path / "run.log").read_text()
        assert proc.returncode == 0, log[-3000:]
        assert "buffering the study's metrics" in log and "buffered metrics sent" in log
        assert during >= 4, "no trial trained while the server was down"
        runs = trial_runs(uri, "outage")
        assert sorted(runs) == [0, 1]
        for r in runs.values():
            assert r.info.status == "FINISHED"
            assert steps_per_key(uri, r.info.run_id) == {k: list(range(1, epochs + 1)) for k in KEYS}
            assert "test_force_loss" in r.data.metrics
        print(f"server down {outage:.1f} s; {during} epoch results reported by trials meanwhile")
    finally:
        if proc is not None and proc.poll() is None:
            kill_driver(proc)
        _stop(server)


@pytest.mark.skipif(shutil.which("unshare") is None or
                    subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0,
                    reason="needs a private mount namespace (unshare -m) for a real read-only / full disk")
def test_storage_read_only_or_full(tmp_path):
    """Figure: --storage on a read-only file system, and on a full one (1 MiB tmpfs, filled), each in a
    private mount namespace (the tests run as root, for whom chmod does not stop writes): refused before
    Ray starts with the folder named, exit 2; nothing written on either disk."""
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir(), full.mkdir()
    py = f"PYTHONPATH={ROOT} {sys.executable} -m orchestrator.cli"
    common = "--set n_train=20 --set n_val=10 --set n_test=10 --epochs 1 --models schnet --seeds 0"
    script = f"""
mount -t tmpfs -o ro,size=1m tmpfs {ro} || exit 90
mount -t tmpfs -o size=1m tmpfs {full} || exit 91
head -c 2000000 /dev/zero > {full}/filler 2>/dev/null
{py} ablate --storage {ro}/results {common}; echo "rc=$?"
rm -f {full}/filler; mkdir {full}/results; head -c 2000000 /dev/zero > {full}/results/filler 2>/dev/null
{py} ablate --storage {full}/results {common}; echo "rc=$?"
echo LIST-RO; ls -A {ro}; echo LIST-FULL; ls -A {full}/results
"""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    if proc.returncode in (90, 91):
        pytest.skip(f"cannot mount tmpfs here: {out[-500:]}")
    assert f"--storage {ro}/results: {ro} is not writable (read-only file system" in out, out
    assert f"--storage {full}/results: only" in out and "MiB free on its disk" in out, out
    assert out.count("rc=2") == 2 and "Traceback" not in out, out
    assert "Started a local Ray" not in out
    ro_list, full_list = proc.stdout.split("LIST-RO")[1].split("LIST-FULL")
    assert ro_list.split() == [] and full_list.split() == ["filler"]  # nothing written on either disk


@pytest.mark.skipif(shutil.which("unshare") is None or
                    subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0,
                    reason="needs a private mount namespace (unshare -m) for a real disk that fills")
def test_disk_fills_mid_study(tmp_path):
    """Figure: --storage on an 80 MiB tmpfs that fills just before epoch 2's checkpoint (fault "fill").
    Survives: checkpoint 1 and the trial's record; the trial fails with the cause as its MLflow error tag,
    the driver says the disk is full and how to continue (exit 1, no traceback of ours); no truncated
    checkpoint is ever resumed from.  After the disk is freed, --resume finishes the trial from its last
    complete checkpoint, one MLflow point per epoch."""
    disk, uri = tmp_path / "disk", f"sqlite:///{tmp_path / 'mlflow.db'}"
    disk.mkdir()
    study = write_study(tmp_path / "one.yaml", ONE_ARM, REF, seeds=(0,), fixed={"epochs": 3})
    env = fault_env([{"action": "fill", "epoch": 2, "where": {"seed": 0}, "path": str(disk / "filler")}])
    # both runs with the fault trainable (Tune resumes a study only with the trainable it started with), the
    # faults only in the first
    ablate = (f"DCNN_TRAINABLE={env['DCNN_TRAINABLE']} PYTHONPATH={env['PYTHONPATH']} {sys.executable} -m "
              f"orchestrator.cli ablate --address local --study {study} --storage {disk}/results "
              f"--tracking-uri {uri} --experiment fill")
    check = f"PYTHONPATH={ROOT} {sys.executable} {Path(__file__).parent / 'disk_check.py'} {uri} {disk}/results/fill"
    script = f"""
mount -t tmpfs -o size=80m tmpfs {disk} || exit 91
DCNN_FAULT_INJECT='{env["DCNN_FAULT_INJECT"]}' {ablate} > {tmp_path}/first.log 2>&1; echo "first rc=$?"
{check} after-fill
cp -r {disk}/results {tmp_path}/after_first
rm -f {disk}/filler
{ablate} --resume > {tmp_path}/resume.log 2>&1; echo "resume rc=$?"
{check} after-resume
cp -r {disk}/results {tmp_path}/after_resume
"""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    if proc.returncode == 91:
        pytest.skip(f"cannot mount tmpfs here: {out[-500:]}")
    first, resume = (tmp_path / "first.log").read_text(), (tmp_path / "resume.log").read_text()
    assert "first rc=1" in out, first[-3000:]
    assert f"dcnn-ablate: error: the disk of --storage {disk}/results is full" in first, first[-3000:]
    assert "continue with the same command and --resume" in first
    assert "Traceback" not in first.split("dcnn-ablate: error:")[-1]  # our message is the last word
    after_fill = json.loads(out.split("after-fill ")[1].splitlines()[0])
    assert after_fill["status"] == "FAILED" and "No space left on device" in after_fill["error"], after_fill
    # epoch 2 was reported before its checkpoint failed (and is logged once, though retried)
    assert after_fill["epochs"] == [1, 2] and after_fill["complete_checkpoints"] >= 1
    assert "resume rc=0" in out, resume[-3000:]
    done = json.loads(out.split("after-resume ")[1].splitlines()[0])
    # Tune's snapshot, cut off or holding a stale STOP depending on what the full disk hit, was repaired
    # (orchestrator/tune_snapshot.py): the trial was resumed, not started again nor stopped early
    assert "Failed to restore the run state" not in resume, resume[-3000:]
    assert done["trial_runs"] == 1 and done["trial_dirs"] == 1, done
    assert done["status"] == "FINISHED" and done["epochs"] == [1, 2, 3], done
    assert done["test_force_loss"] > 0 and done["newest_checkpoint_complete"]
    # every restore (the retries, then --resume) used a complete checkpoint: epoch 1's, never the cut-off one
    restored = [[line.split("checkpoint_")[-1][:6] for line in log.splitlines()
                 if "Restored on" in line and "from checkpoint" in line] for log in (first, resume)]
    assert restored[0] and restored[1] and set(restored[0] + restored[1]) == {"000000"}, restored


# -- the kill matrix (issue 27): the driver SIGKILLed at every kind of moment, then --resume ----------------

MATRIX_EPOCHS = 6
CURVE_KEYS = ("energy_loss", "force_loss", "train_energy_loss", "train_force_loss")
FINAL_KEYS = ("test_energy_loss", "test_force_loss", "diverged")


def _lines(path: Path) -> list[str]:
    try:
        return [x for x in path.read_text().splitlines() if x.strip()]
    except OSError:
        return []


def _written_since(path: Path, t0: float) -> bool:
    try:
        return path.stat().st_mtime > t0
    except OSError:
        return False


def _done_count(exp_dir: Path) -> int:
    return sum(any('"done": true' in x for x in _lines(p)) for p in exp_dir.glob("*/result.json"))


def _staging(exp_dir: Path, since: float, name: str) -> list:
    """A trial file as the running driver has it: Tune writes each trial's params.json (when it starts) and
    result.json (at each result) in the driver's staging folder, and copies them to the study folder every few
    seconds: RAY_TMPDIR/ray/session_latest/artifacts/<time>/<experiment>/driver_artifacts/<trial>/<name>."""
    root = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "session_latest" / "artifacts"
    return [p for p in root.glob(f"*/{exp_dir.name}/driver_artifacts/*/{name}") if p.stat().st_mtime > since]


def _in_first_epoch(exp_dir: Path, start: dict) -> bool:
    """A trial of this driver started and none reported an epoch yet."""
    started = _staging(exp_dir, start["t0"], "params.json")
    return bool(started) and not any(_lines(p.parent / "result.json") for p in started)


# moment -> condition on the study folder (and what it was when this driver started): kill when it holds
MOMENTS = {
    "first epoch": _in_first_epoch,
    "mid-study": lambda d, start: any(3 <= len(_lines(p)) < MATRIX_EPOCHS for p in d.glob("*/result.json")),
    "trial finishing": lambda d, start: _done_count(d) > start["done"],
    "report": lambda d, start: _written_since(d / "report" / "mlflow_runs.json", start["t0"]),  # just before it
}


def _run_until(args, log_path, exp_dir, moment, delay, env):
    """One driver: killed (its whole process group, Ray included) `delay` s after `moment` is seen, or left to
    finish when the moment never comes; returns (killed, return code or None, seconds to the kill)."""
    t0 = time.time()
    start = {"done": _done_count(exp_dir), "t0": t0}
    proc = cli(args, log_path, env=env, wait=False)
    deadline = t0 + 240
    while proc.poll() is None and time.time() < deadline:
        if MOMENTS[moment](exp_dir, start):
            time.sleep(delay)
            if proc.poll() is None:
                kill_driver(proc)
                return True, None, time.time() - t0
        time.sleep(0.02)
    if proc.poll() is None:
        kill_driver(proc)
        raise AssertionError(f"{moment}: the driver neither reached the moment nor ended in 240 s")
    return False, proc.returncode, time.time() - t0


def _trial_results(exp_dir: Path) -> dict:
    """seed -> (per-epoch curve values, the final result's metrics), from the study folder, the last record of
    an epoch counting (as the report reads it)."""
    out = {}
    for params in exp_dir.glob("*/params.json"):
        seed = json.loads(params.read_text())["seed"]
        rows = [json.loads(x) for x in _lines(params.parent / "result.json")]
        by_epoch = {r["epoch"]: r for r in rows}
        out[seed] = ({e: tuple(r[k] for k in CURVE_KEYS) for e, r in sorted(by_epoch.items())},
                     tuple(rows[-1].get(k) for k in FINAL_KEYS))
    return out


def _same(a, b, rel=1e-9) -> bool:
    """Equal within a relative tolerance (the same CPU gives equal floats; a wrong resume differs by far more)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


def test_driver_killed_at_every_moment_then_resumed(tmp_path, tracking_uri):
    """Figure (issue 27): the driver SIGKILLed during the first epoch, mid-study, as a trial finishes and while
    the report is written, in that order in one study, each kill followed by `--resume`; the chain run twice,
    with the kill at once and 0.25 s after the moment (8 kills), the second time with Tune's snapshots rare.  Each study's trials then equal an unkilled
    run's (every epoch's losses, the test errors), with one MLflow run per trial holding one point per epoch,
    exit 0 and a full report with no damaged or unfinished trial."""
    study = write_study(tmp_path / "matrix.yaml", ONE_ARM, REF, seeds=(0, 1, 2),
                        fixed={"epochs": MATRIX_EPOCHS, "n_train": 1000})

    def args(name):
        return ["--study", study, "--storage", tmp_path / "res", "--tracking-uri", tracking_uri,
                "--experiment", name, "--max-concurrent", "2"]

    reference = cli(args("matrix-ref"), tmp_path / "ref.log")
    assert reference.returncode == 0, (tmp_path / "ref.log").read_text()[-3000:]
    expected = _trial_results(tmp_path / "res/matrix-ref")
    assert sorted(expected) == [0, 1, 2] and all(len(c) == MATRIX_EPOCHS for c, _ in expected.values())

    figures = []
    # Tune snapshots the study (its experiment state, and each trial's params.json and result.json copied from the
    # driver's staging folder) at most every TUNE_GLOBAL_CHECKPOINT_S, by default a period that grows with the
    # study's size: the second chain has the stale snapshots of a large study, so its kills find finished trials
    # recorded as running and result files epochs behind their checkpoints
    for rep, (delay, env) in enumerate([(0.0, {}), (0.25, {"TUNE_GLOBAL_CHECKPOINT_S": "30"})]):
        name = f"matrix-{rep}"
        exp_dir = tmp_path / "res" / name
        for k, moment in enumerate(MOMENTS):
            extra = ["--resume"] if k else []
            killed, rc, took = _run_until([*args(name), *extra], tmp_path / f"{name}-{k}.log", exp_dir, moment,
                                           delay, env)
            log = (tmp_path / f"{name}-{k}.log").read_text()
            assert killed or rc == 0, log[-3000:]
            figures.append(f"{name} {moment}: {'killed' if killed else 'finished'} after {took:.1f} s")
            assert killed or moment != "first epoch", log[-3000:]
        final = cli([*args(name), "--resume"], tmp_path / f"{name}-final.log", env=env)
        log = (tmp_path / f"{name}-final.log").read_text()
        assert final.returncode == 0, log[-3000:]
        got = _trial_results(exp_dir)
        assert sorted(got) == [0, 1, 2], got.keys()
        for seed in expected:
            assert _same(got[seed], expected[seed]), (name, seed, got[seed], expected[seed])
        runs = trial_runs(tracking_uri, name)
        assert sorted(runs) == [0, 1, 2]
        for r in runs.values():
            assert r.info.status == "FINISHED"
            assert steps_per_key(tracking_uri, r.info.run_id) == {k: list(range(1, MATRIX_EPOCHS + 1)) for k in KEYS}
        report = (exp_dir / "report" / "report.md").read_text()
        assert "## Damaged or unfinished trials" not in report and "| **irelu+DN+LR** (ref) | 3/3 |" in report, report
        trials = pd.read_csv(exp_dir / "report" / "trials.csv")
        assert len(trials) == 3 and trials.finished.all()
    print("\n".join(figures))
    assert sum("killed" in f for f in figures) >= 6, figures  # the report moment can pass before the poll sees it


def _mark_running(exp_dir: Path, seed: int) -> None:
    """Tune's snapshot as a driver killed after the trial finished leaves it: the trial still RUNNING (its
    status is plain JSON in experiment_state-*.json: trial_data[i][0]); the kept copy likewise."""
    for state_file in exp_dir.glob("experiment_state-*.json"):
        state = json.loads(state_file.read_text())
        for entry in state["trial_data"]:
            trial = json.loads(entry[0])
            if trial["config"]["seed"] == seed:
                trial["status"] = "RUNNING"
                entry[0] = json.dumps(trial)
        state_file.write_text(json.dumps(state))
    (exp_dir / KEPT_FILE).unlink(missing_ok=True)


def test_resume_rebuilds_what_a_kill_left_of_finished_trials(tmp_path, tracking_uri):
    """Figure (issue 27, as found): a finished study, then the states a driver killed at the wrong instant
    leaves, made exactly: seed 0 finished but recorded RUNNING, its params.json and result.json emptied (Tune's
    copy cut by the kill); seed 1 recorded RUNNING with result.json two epochs behind its final checkpoint and
    a line cut off; seed 2 untouched.  `report` builds from the checkpoints' records and says what it rebuilt;
    `--resume` trains nothing again (no epoch past the last), rewrites the files whole and ends with a full
    report: every epoch's losses and the test errors as before, one MLflow point per epoch."""
    epochs = 4
    study = write_study(tmp_path / "k.yaml", ONE_ARM, REF, seeds=(0, 1, 2), fixed={"epochs": epochs, "n_train": 60})
    exp_dir = tmp_path / "res/kill-left"
    args = ["--study", study, "--storage", tmp_path / "res", "--tracking-uri", tracking_uri, "--experiment",
            "kill-left"]
    assert cli(args, tmp_path / "first.log").returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    before = _trial_results(exp_dir)
    d0, d1 = trial_dir(exp_dir, 0), trial_dir(exp_dir, 1)
    (d0 / "params.json").write_text("")
    (d0 / "result.json").write_text("")
    lines = _lines(d1 / "result.json")
    (d1 / "result.json").write_text("\n".join(lines[: epochs - 2] + [lines[epochs - 2][:40]]))
    _mark_running(exp_dir, 0), _mark_running(exp_dir, 1)

    from orchestrator.cli import main

    assert main(["report", str(exp_dir)]) == 0  # read-only: rebuilt in memory, named in the report
    report = (exp_dir / "report/report.md").read_text()
    assert f"- `{d0.name}`: params.json empty: rebuilt from checkpoint_" in report, report
    assert "result.json empty: epoch(s) 1, 2, 3, 4 rebuilt from checkpoint_" in report
    assert (f"- `{d1.name}`: result.json: line 3 of 3 cut off or not JSON (a kill during the write?); kept the 2 "
            f"complete line(s), last complete epoch 2; result.json lacked: epoch(s) 3, 4 rebuilt") in report
    assert "| **irelu+DN+LR** (ref) | 3/3 |" in report and (d0 / "params.json").read_text() == ""

    proc = cli([*args, "--resume"], tmp_path / "resume.log")
    log = (tmp_path / "resume.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert f"resume: repaired {d0.name}: params.json empty" in log and f"resume: repaired {d1.name}" in log
    assert _same(_trial_results(exp_dir), before)  # nothing lost, nothing trained past the last epoch
    for seed, d in ((0, d0), (1, d1)):  # the restored final checkpoint reported its final result again
        assert result_epochs(d) == [1, 2, 3, 4, 4], (seed, result_epochs(d))
    runs = trial_runs(tracking_uri, "kill-left")
    assert sorted(runs) == [0, 1, 2]
    for r in runs.values():
        assert r.info.status == "FINISHED"
        assert steps_per_key(tracking_uri, r.info.run_id) == {k: list(range(1, epochs + 1)) for k in KEYS}
    report = (exp_dir / "report/report.md").read_text()
    assert "## Damaged or unfinished trials" not in report and "| **irelu+DN+LR** (ref) | 3/3 |" in report
