"""Studies on S3-compatible object storage (issue 12), against a real S3 server (moto) on 127.0.0.1.

Credentials and the endpoint reach every process only through the SDK's standard environment variables
(`s3_env`); the secret is distinctive, and no stored object, study record or MLflow param/tag may hold it.
"""
import io
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, kill_driver, write_study
from local_cluster import free_port

REF = {"activation": "irelu", "denorm": True, "rescale": True}
ONE_ARM = [{"activation": ["irelu"], "denorm": [True], "rescale": [True]}]
KEYS = ("energy_loss", "force_loss", "train_energy_loss", "val_loss")


def test_storage_operations_on_a_folder_and_a_bucket(tmp_path, s3_env):
    """The few operations the orchestrator needs behave the same on a folder and on a bucket; an object
    store's report copy downloads only what is asked for; the write probe leaves nothing behind."""
    from orchestrator.storage import Storage

    bucket = s3_env.bucket("ops")
    for storage in (Storage.resolve(tmp_path / "res"), Storage.resolve(f"s3://{bucket}/res")):
        study = storage / "exp"
        assert study.is_empty() and not study.exists()
        storage.check_writable()
        assert study.is_empty() and not (storage.is_local and storage.exists())  # the probe is gone
        study.write_text("t1/params.json", '{"seed": 0}')
        study.write_text("t1/checkpoint_000000/trainer.pt", "weights")
        study.write_text("report/study.json", "{}")
        assert not study.is_empty() and study.is_file("t1/params.json") and not study.is_file("t1")
        assert study.read_text("t1/params.json") == '{"seed": 0}'
        assert study.glob("*/params.json") == ["t1/params.json"]  # '*' never crosses a '/'
        assert study.glob("*/*/trainer.pt") == ["t1/checkpoint_000000/trainer.pt"]
        with study.local_copy(("*/params.json", "report/study.json")) as folder:
            got = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            if not storage.is_local:
                assert got == ["report/study.json", "t1/params.json"]  # no checkpoints downloaded
            (folder / "report" / "report.md").write_text("# report")
            study.upload(folder / "report", "report")
        assert study.read_text("report/report.md") == "# report" and study.read_text("report/study.json") == "{}"
    assert sorted(k for k in s3_env.objects(bucket, "res/exp/") if not k.endswith("/")) == [
        "res/exp/report/report.md", "res/exp/report/study.json", "res/exp/t1/checkpoint_000000/trainer.pt",
        "res/exp/t1/params.json"]


def test_restore_passes_over_a_checkpoint_folder_left_without_its_file(tmp_path, s3_env):
    """A driver killed while Tune deleted an old checkpoint can leave its folder (on S3: the folder's
    marker object) without the trainer file, and a full disk can cut a checkpoint's upload short (a
    truncated file); a restore from either must use the newest complete one, never the truncated one."""
    import io

    import torch
    from ray import tune

    from orchestrator.storage import Storage
    from trainables.dcnn_trainables import CHECKPOINT_FILE, _newest_checkpoint_instead_of

    buffer = io.BytesIO()
    torch.save({"epoch": 3, "weights": torch.randn(100)}, buffer)
    whole_bytes = buffer.getvalue()
    for storage in (Storage.resolve(tmp_path / "res"), Storage.resolve(f"s3://{s3_env.bucket('ckpt')}/res")):
        trial = storage / "trial"
        for name, data in (("checkpoint_000002", whole_bytes), ("checkpoint_000003", whole_bytes),
                           ("checkpoint_000004", whole_bytes[: len(whole_bytes) // 2])):  # 000004: cut off
            trial.fs.create_dir(f"{trial.path}/{name}")
            with trial.fs.open_output_stream(f"{trial.path}/{name}/{CHECKPOINT_FILE}") as out:
                out.write(data)
        trial.fs.delete_file(f"{trial.path}/checkpoint_000003/{CHECKPOINT_FILE}")
        trial.fs.create_dir(f"{trial.path}/checkpoint_000001")  # an emptied folder, as the kill left it
        assert trial.exists("checkpoint_000001") and trial.exists("checkpoint_000003")
        for stale in ("checkpoint_000001", "checkpoint_000004"):
            newer = _newest_checkpoint_instead_of(tune.Checkpoint(f"{trial.path}/{stale}", filesystem=trial.fs))
            # not the emptied 000003, not the truncated 000004
            assert newer is not None and newer.path.endswith("checkpoint_000002"), stale
        whole = tune.Checkpoint(f"{trial.path}/checkpoint_000002", filesystem=trial.fs)
        assert _newest_checkpoint_instead_of(whole) is None


@pytest.mark.parametrize("case", ["no-bucket", "wrong-endpoint", "no-credentials"])
def test_bad_object_store_is_refused_before_ray_starts(case, s3_env, tmp_path, monkeypatch, capsys):
    import orchestrator.runner
    from orchestrator.cli import main

    bucket = s3_env.bucket("preflight")
    storage = f"s3://{bucket}/res"
    if case == "no-bucket":
        storage, message = "s3://no-such-bucket/res", (f"--storage s3://no-such-bucket/res: the bucket "
                                                       f"'no-such-bucket' does not exist at {s3_env.endpoint}")
    elif case == "wrong-endpoint":
        port = free_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        message = f"--storage {storage}: cannot write there ("
    else:
        for k in s3_env.credentials:
            monkeypatch.delenv(k)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        message = f"--storage {storage}: no AWS credentials found; set AWS_ACCESS_KEY_ID"

    def refuse(*a, **k):
        raise AssertionError("Ray started although the storage is unusable")

    monkeypatch.setattr(orchestrator.runner, "_init_ray", refuse)
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path / "s.yaml", ONE_ARM, REF)
    before = s3_env.objects(bucket)
    t0 = time.time()
    rc = main(["ablate", "--study", study, "--storage", storage, "--tracking-uri",
               f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "refused"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    if case == "wrong-endpoint":
        assert f"127.0.0.1:{port}" in err and time.time() - t0 < 20
    assert s3_env.objects(bucket) == before and sorted(os.listdir(tmp_path)) == ["s.yaml"]


def _trial_dirs(objects: dict) -> dict:
    """{trial folder: (done, has a checkpoint)} from the keys of a study's objects."""
    out = {}
    for key, body in objects.items():
        parts = key.split("/")
        if len(parts) < 4 or not parts[2].startswith("DCNNTrainable"):
            continue
        done, ckpt = out.get(parts[2], (False, False))
        out[parts[2]] = (done or (parts[3] == "result.json" and b'"done": true' in body),
                         ckpt or parts[3].startswith("checkpoint_"))
    return out


def test_study_on_s3_killed_resumed_and_reported(s3_env, tmp_path, tracking_uri, ray_session, capsys):
    """Figure: a 2-trial study whose only storage is a bucket; its driver (and in-process Ray) SIGKILLed
    once the first trial finished and the second has checkpoints; `--resume` with other flags is refused
    and changes no object; `--resume` finishes it without re-running the first trial; `report s3://...`
    rebuilds the report in the bucket; the parent run's report artifacts (in the bucket) read back;
    nothing is written locally and the secret key is stored nowhere."""
    bucket = s3_env.bucket("studies")
    storage, uri = f"s3://{bucket}/res", f"s3://{bucket}/res/s3-killed"
    study = write_study(tmp_path / "s3.yaml", ONE_ARM, REF, seeds=(0, 1), fixed={"epochs": 4})
    # one trial at a time by resources, not by --max-concurrent: with a concurrency limit Tune creates
    # trials lazily, and a driver killed between its searcher's and its trials' snapshots can leave a
    # restored searcher waiting forever for a trial it already made (seen here on S3, a Ray Tune race)
    args = ["--study", study, "--storage", storage, "--tracking-uri", tracking_uri, "--experiment", "s3-killed"]
    whole_node = ["--cpus-per-trial", str(os.cpu_count() or 2)]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ablate", "--address", "local", *args,
                             *whole_node],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1"})
    deadline, trials = time.time() + 180, {}
    while time.time() < deadline and proc.poll() is None:
        trials = _trial_dirs(s3_env.objects(bucket, "res/s3-killed/"))
        if any(d for d, _ in trials.values()) and any(c and not d for d, c in trials.values()):
            break
        time.sleep(0.2)
    kill_driver(proc)
    first_log = (tmp_path / "first.log").read_text()
    assert sorted(trials.values()) == [(False, True), (True, True)], first_log[-3000:]
    assert os.listdir(cwd) == [], "the driver wrote study files locally"
    objects = s3_env.objects(bucket, "res/s3-killed/")
    plan = json.loads(objects["res/s3-killed/report/study.json"])
    assert plan["seeds"] == [0, 1] and plan["fixed"]["epochs"] == 4  # recorded in the bucket at the start
    done_before = {k: v for k, v in objects.items() if k.endswith("result.json") and b'"done": true' in v}

    from orchestrator.cli import main

    assert main(["ablate", *args, "--resume", "--epochs", "8"]) == 2  # other flags: refused
    assert "epochs: 4 → 8" in capsys.readouterr().err
    assert s3_env.objects(bucket, "res/s3-killed/") == objects  # nothing changed in the bucket
    assert main(["ablate", *args, "--resume", "--cpus-per-trial", "2"]) == 0  # the session's Ray: 2 CPUs
    objects = s3_env.objects(bucket, "res/s3-killed/")
    for key, body in done_before.items():
        assert objects[key] == body  # the finished trial was not re-run
    assert all(d for d, _ in _trial_dirs(objects).values()) and len(_trial_dirs(objects)) == 2

    c = MlflowClient(tracking_uri)
    exp = c.get_experiment_by_name("s3-killed")
    assert exp.artifact_location == f"{storage}/mlartifacts/s3-killed"  # MLflow artifacts beside the study
    runs = c.search_runs([exp.experiment_id], max_results=100)
    trial_runs = [r for r in runs if r.data.tags.get("dcnn.role") == "trial"]
    assert len(trial_runs) == 2 and all(r.info.status == "FINISHED" for r in trial_runs)
    for r in trial_runs:  # one run per trial, one point per epoch across the kill
        for k in KEYS:
            assert sorted(m.step for m in c.get_metric_history(r.info.run_id, k)) == list(range(1, 5))
    parent = next(r for r in runs if r.data.tags.get("dcnn.role") == "study")
    assert parent.data.tags["dcnn.storage"] == uri
    stored_md = objects["res/s3-killed/report/report.md"]
    local = c.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path))
    assert open(local, "rb").read() == stored_md
    assert any(k.startswith(f"res/mlartifacts/s3-killed/{parent.info.run_id}/artifacts/report/report.md")
               for k in s3_env.objects(bucket, "res/mlartifacts/"))
    trials_csv = pd.read_csv(io.BytesIO(objects["res/s3-killed/report/trials.csv"]))
    assert len(trials_csv) == 2 and trials_csv.finished.all() and set(trials_csv.mlflow_run_id) == \
        {r.info.run_id for r in trial_runs}

    # the report rebuilt from the bucket alone, written back beside the study
    assert main(["report", uri]) == 0
    assert f"report: {uri}/report/report.md" in capsys.readouterr().out
    again = s3_env.objects(bucket, "res/s3-killed/report/")
    assert pd.read_csv(io.BytesIO(again["res/s3-killed/report/trials.csv"])).equals(trials_csv)

    secret = s3_env.SECRET.encode()
    stored = s3_env.objects(bucket)
    assert not [k for k, v in stored.items() if secret in v], "the secret key was stored"
    for r in runs:
        values = [*r.data.params.values(), *r.data.tags.values(), *r.data.params, *r.data.tags]
        assert not any(s3_env.SECRET in v or s3_env.KEY in v for v in values)
    assert s3_env.SECRET not in first_log
