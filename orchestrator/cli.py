"""The `dcnn-ablate` command: the library's `train`/`data` plus `ablate` and `report`."""
from __future__ import annotations

import argparse
import os
import re
import sys

import yaml

from dcnn import cli as dcnn_cli
from dcnn.compiled import COMPILE_MODES
from orchestrator.estimate import main_estimate
from orchestrator.runner import (
    SCHEDULERS,
    AblateOptions,
    StudyStopped,
    report_study,
    run_ablation,
)
from orchestrator.validate import check_study_folder
from search_spaces import list_studies
from search_spaces.factors import BUILTIN
from search_spaces.seed_design import AUTO


def _csv(kind, flag: str):
    """A non-empty comma-separated list of distinct values (an empty one is refused, never 'the default')."""
    def parse(text: str):
        items = [x.strip() for x in text.split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError(f"empty list {text!r}; give at least one value, or leave {flag} "
                                             f"out to use the study's")
        if not all(items):
            raise argparse.ArgumentTypeError(f"empty item in {text!r} (expected e.g. {flag} a,b,c)")
        try:
            values = [kind(x) for x in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}: {text!r}") \
                from None
        if kind is int and any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"seeds must be non-negative integers, got {text!r}")
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise argparse.ArgumentTypeError(f"repeated value(s) {dup} in {text!r}")
        return values
    return parse


def _seeds(text: str):
    """--seeds: a comma-separated list of seeds, or `auto` (the sequential seed design)."""
    return AUTO if text.strip() == AUTO else _csv(int, "--seeds")(text)


def _keyvalue(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r} (no key)")
    try:
        value = yaml.safe_load(v)
        if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
            value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as a string; a user means the number
        return k.strip(), value
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value {v!r} is not a number, word or YAML value") \
            from None


def _settings(pairs: list) -> dict:
    """--set KEY=VALUE ... (one or more per flag, the flag repeated or not) as a dict; a key given twice is
    refused rather than the later value silently winning."""
    out: dict = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise ValueError(f"--set {key} given twice ({key}={out[key]!r} and {key}={value!r}): give it once")
        out[key] = value
    return out


def cmd_ablate(args) -> int:

    opts = AblateOptions(
        study=args.study, models=args.models, datasets=args.datasets, seeds=args.seeds, epochs=args.epochs,
        split_seeds=args.split_seeds,
        switch_on=tuple(f.key for f in BUILTIN.values() if f.shortcut and getattr(args, f.key)),
        preset=args.preset, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, address=args.address, storage=args.storage,
        tracking_uri=args.tracking_uri, experiment=args.experiment, resume=args.resume,
        tune_hparams=args.tune_hparams, tuning_space=args.tuning_space, scheduler=args.scheduler,
        set={**_settings(args.set or []), **({"compile": args.compile} if args.compile else {})})
    if args.estimate:
        return main_estimate(opts)
    try:
        report = run_ablation(opts)
    except StudyStopped as e:  # it ran, then could not go on (a full disk): not a bad input, exit 1
        # Ray down first: its workers' teardown output (forwarded to this terminal) must not follow our message
        import ray

        ray.shutdown()
        print(f"dcnn-ablate: error: {e}", file=sys.stderr)
        return 1
    return 1 if report.get("errors") else 0


def cmd_report(args) -> int:

    study = check_study_folder(args.path)  # a named cause, and nothing written, when it is not a study
    report = report_study(study)  # an object-store study is read from a local copy, its report stored back
    print(report["markdown"])
    print(f"report: {report['paths']['markdown']}")
    if args.close_unfinished:
        print(_close_unfinished(study, report))
    return 0


def _close_unfinished(study, report: dict) -> str:
    """--close-unfinished: the MLflow runs of the report's unfinished trials, and the study's parent run,
    marked KILLED where they are RUNNING (found through report/study.json's tracking URI and parent run);
    what was closed, in words."""

    unfinished = report["unfinished"]
    meta = report.get("study") or {}
    if unfinished.empty:
        return f"{study}: nothing unfinished; no MLflow run closed"
    uri, parent = meta.get("tracking_uri"), meta.get("parent_run_id")
    if not uri or not parent:
        raise ValueError(f"--close-unfinished: {study}/report/study.json records no "
                         f"{'tracking_uri' if not uri else 'parent_run_id'}, so its MLflow runs cannot be found; "
                         f"nothing was closed")
    names = {r.trial_id: f"{r.data} · {r.model} · {r.arm} · seed {r.seed}" for r in unfinished.itertuples()
             if r.trial_id}
    from orchestrator import tracking  # loads Ray (its Tune callback): only for this command, never for `train`

    done = tracking.close_unfinished(uri, parent, list(names))
    lines = [f"closed (KILLED) {len(done['closed'])} MLflow run(s) of unfinished trials"
             + (":" if done["closed"] else "")]
    lines += [f"  {names[tid]} (run {run_id})" for tid, run_id in done["closed"]]
    lines += [f"  {names[tid]}: left as it is ({status})" for tid, status in done["not_running"].items()]
    never = int((unfinished.trial_id.fillna("") == "").sum())
    if never:
        lines.append(f"  {never} trial(s) never started: no MLflow run")
    lines.append(f"the study's run {done['parent_name']!r}: "
                 + ("was RUNNING, closed (KILLED)" if done["parent_closed"] else f"left as it is ({done['parent_status']})"))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcnn-ablate",
                                description="Ablation studies of derivative-constrained neural networks.")
    sub = p.add_subparsers(dest="command", required=True)
    dcnn_cli.add_commands(sub)
    a = sub.add_parser("ablate", help="run a study on Ray Tune (local or a cluster) with MLflow tracking")
    a.add_argument("--study", default="seed-plan",
                   help=f"built-in study ({', '.join(list_studies())}) or a YAML file")
    a.add_argument("--models", type=_csv(str, "--models"), help="comma-separated, e.g. schnet,cgcnn; known: schnet, cgcnn, forcenet, "
                        "dimenetpp, gemnet_t, mace, fcn (PINN), or package.module:spec (default: the study's)")
    a.add_argument("--datasets", "--dataset", dest="datasets", type=_csv(str, "--datasets"),
                   help="comma-separated bundled names (ethanol, aspirin) or data files; a study runs on each "
                        "(default: the study's, else ethanol)")
    a.add_argument("--seeds", type=_seeds, help="comma-separated, e.g. 0,1,2; or auto: every arm starts at 3 seeds "
                   "and gets more (up to 10) only while a comparison with the reference is open (a study's "
                   "`seeds: {auto: {min, max, margin, alpha}}` sets those). Default: the study's")
    a.add_argument("--split-seeds", choices=("fixed", "vary"),
                   help="fixed: one train/val/test split for every seed (CIs cover initialisation and batch "
                        "order); vary: the split follows the seed (CIs include split variance). Default: the "
                        "study's, else fixed")
    for f in BUILTIN.values():  # a factor's shortcut: its "on" level on every arm (--shift: ES added)
        if f.shortcut:
            a.add_argument(f.shortcut, dest=f.key, action="store_true",
                           help=f"add {f.name} ({f.help}) to every arm of the study")
    a.add_argument("--epochs", type=int)
    a.add_argument("--preset", choices=("small", "paper"))
    a.add_argument("--cpus-per-trial", type=float, default=1.0)
    a.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractional allowed, e.g. 0.5")
    a.add_argument("--max-concurrent", type=int)
    a.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster address, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, else an "
                        "in-process local Ray; 'local' forces a fresh local one)")
    a.add_argument("--storage", help="absolute folder for results, on a cluster one every node sees, or an "
                                     "object store such as s3://bucket/prefix (credentials and endpoint from "
                                     "the SDK's environment; default: ./results)")
    a.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite DB in the storage folder; "
                                          "use an MLflow server on a multi-node cluster)")
    a.add_argument("--experiment", help="study folder and MLflow experiment name (default: the study name)")
    a.add_argument("--resume", action="store_true", help="continue an interrupted study")
    a.add_argument("--estimate", action="store_true",
                   help="run nothing: time a few epochs of one trial of each arm on each model and data set, as "
                        "many side by side as the study runs trials, and print the study's estimated wall time "
                        "on this machine (orchestrator/estimate.py)")
    a.add_argument("--tune-hparams", type=int, default=0, metavar="N",
                   help="per arm, N Optuna trials (with ASHA) first, then the seeds at the best values")
    a.add_argument("--tuning-space", default="default", help="default (lr, force_weight, C) or lr")
    a.add_argument("--scheduler", choices=SCHEDULERS, default="fifo")
    a.add_argument("--compile", choices=COMPILE_MODES,
                   help="energy+force step: eager (off), traced + torch.compile'd (on), or compiled only when "
                        "timed eager steps say the compile time pays back (auto, TrainConfig's default)")
    a.add_argument("--set", type=_keyvalue, nargs="+", action="extend", metavar="KEY=VALUE",
                   help="any TrainConfig key for every trial, one or more per flag: --set lr=3e-4 n_train=100 "
                        "(repeating --set works too)")
    a.set_defaults(func=cmd_ablate)
    r = sub.add_parser("report", help="rebuild a study's report from its folder")
    r.add_argument("path", help="the study folder (STORAGE/EXPERIMENT), a folder or s3://bucket/prefix/EXPERIMENT")
    r.add_argument("--close-unfinished", action="store_true",
                   help="for a study whose driver is gone and will not be resumed: mark the MLflow runs of its "
                        "unfinished trials, and the study's run, KILLED where they are still RUNNING")
    r.set_defaults(func=cmd_report)
    return p


def main(argv=None) -> int:
    return dcnn_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
