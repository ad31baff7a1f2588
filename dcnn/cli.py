"""`dcnn-ablate train` and `dcnn-ablate data ...`: the library's own commands (no Ray here).

The orchestrator adds `ablate` and `report` to the same parser (see orchestrator/cli.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
import yaml

from dcnn.atomistic.io import load_atoms
from dcnn.atomistic.molecules import DatasetError
from dcnn.atomistic.xtb import check_generate_args, generate
from dcnn.config import (ACTIVATION_CHOICES, COMPILE_MODES, DTYPES, ENERGY_TERMS, EVALUATE_AT, LEGACY_SIZE_NAMES,
                         LOSS_FNS, OPTIMIZERS, SCOPES, SIZE_PREFIX, TrainConfig)
from dcnn.init import INIT_MODES
from dcnn.models import BUILTIN_SPECS
from dcnn.outputs import check_output, same_file
from dcnn.registry import family_of, resolve_config
from dcnn.schedules import SCHEDULES
from dcnn.train import train

# model and preset: TrainConfig checks them (plug-ins bring their own names and presets); a size's values: its
# model's spec (size_choices)
_CHOICES = {"activation": ACTIVATION_CHOICES, "scope": SCOPES, "dtype": DTYPES, "compile": COMPILE_MODES,
            "init": INIT_MODES, "optimizer": OPTIMIZERS, "lr_schedule": SCHEDULES,
            "loss_fn": LOSS_FNS, "energy_term": ENERGY_TERMS, "evaluate": EVALUATE_AT}


# the train command's flags in groups (`--help`), by TrainConfig field; size fields get a group per model
_FLAG_GROUPS = {
    "what to train": ("model", "preset", "activation", "scope", "denorm", "rescale", "rescale_factor", "shift",
                      "init", "seed"),
    "optimisation": ("lr", "optimizer", "lbfgs_epochs", "lr_schedule", "lr_min", "warmup_epochs", "plateau_factor",
                     "plateau_patience", "batch_size", "epochs", "force_weight"),
    "training recipe (the paper's by default; the field's: --loss-fn mse --energy-term atom --ema-decay 0.99 "
    "--evaluate best)": ("loss_fn", "huber_delta", "energy_term", "ema_decay", "weight_decay", "early_stopping",
                         "evaluate"),
    "data": ("dataset", "test_dataset", "split", "n_train", "n_val", "n_test", "split_seed", "eval_batch_size"),
    "PINN task (model fcn; --dataset names the PDE problem)": (
        "n_collocation", "n_initial", "n_boundary", "collocation_batch", "steps_per_epoch", "resample"),
    "where and how it runs": ("device", "threads", "flush_denormals", "dtype", "compile"),
}


def _builtin_sizes() -> dict[str, object]:
    """{size: its `small` value in the first built-in model that has it}: the built-in sizes, each with a flag
    of its own (--cutoff 5); any model's size, a plug-in's too, is `--size NAME=VALUE`."""
    out: dict[str, object] = {}
    for spec in BUILTIN_SPECS.values():
        for name, value in spec.presets["small"].items():
            out.setdefault(name, value)
    return out


def _size_groups() -> list[tuple[str, str, list[str]]]:
    """(title, description, sizes) per built-in model: the sizes only it has, and one group for sizes several
    models share (each flag once: argparse has no flag in two groups); descriptions list every size of a
    model with its `small` preset value."""
    users = {n: [m for m, spec in BUILTIN_SPECS.items() if n in spec.presets["small"]] for n in _builtin_sizes()}
    groups = []
    for model, spec in BUILTIN_SPECS.items():
        sizes = spec.presets["small"]
        own = [n for n in users if users[n] == [model]]
        shared = [n for n in sizes if n not in own]
        text = ", ".join(f"--{n.replace('_', '-')} {v}" for n, v in sizes.items())
        groups.append((f"{model} sizes", f"small preset: {text}" + (f" (shared flags: "
                       f"{', '.join('--' + n.replace('_', '-') for n in shared)})" if shared else ""), own))
    shared_all = [n for n in users if len(users[n]) > 1]
    groups.append(("sizes shared by several models", "a size applies to the models that have it (see the groups "
                   "above); unset: the preset's value; any size of any model (a plug-in's own too): "
                   "--size NAME=VALUE", shared_all))
    return groups


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default None = 'not given', so YAML values are not overridden), in
    groups: what to train, optimisation, data, the PINN task, runtime, then each built-in model's sizes
    (dest `size.NAME`) and `--size NAME=VALUE` for any size."""
    hints = typing.get_type_hints(TrainConfig)
    by_name = {f.name: f for f in fields(TrainConfig) if f.name != "sizes"}
    placed = {n for names in _FLAG_GROUPS.values() for n in names}
    missing = sorted(set(by_name) - placed)
    if missing:  # a new TrainConfig field must be given a group (tested)
        raise RuntimeError(f"TrainConfig fields without a --help group: {missing}")
    for title, names in _FLAG_GROUPS.items():
        group = p.add_argument_group(title)
        for name in names:
            f = by_name[name]
            kind = hints[f.name]
            optional = typing.get_origin(kind) is typing.Union
            if optional:
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            if optional and kind is int:  # n_train etc.: a count, or `all` (None: every frame left)
                group.add_argument("--" + name.replace("_", "-"), dest=f.name, type=_count_or_all, default=None,
                                   metavar="N|all", help=f"(default {f.default}; all: {_ALL_WORDS})")
                continue
            _add_flag(group, name, f.name, kind, f"(default {f.default})", _CHOICES.get(f.name))
    builtin = _builtin_sizes()
    choices = {n: c for spec in BUILTIN_SPECS.values() for n, c in spec.size_choices.items()}
    for title, description, names in _size_groups():
        group = p.add_argument_group(title, description)
        for name in names:
            _add_flag(group, name, SIZE_PREFIX + name, type(builtin[name]), "(default the preset's)", choices.get(name))
    group.add_argument("--size", dest="size_values", action="append", default=[], metavar="NAME=VALUE",  # (shared)
                   help="a size of the model (any model: a plug-in's own too), e.g. --size cutoff=5 --size width=64; "
                        "the model's spec says which names it has and what values they take")


# what `all` means for an optional count (TrainConfig's None)
_ALL_WORDS = "the paper's fractions, or every frame left beside the others and a data set's own test set"
_ALL = "all"


def _count_or_all(text: str):
    """An optional count's flag value: an integer, or `all` (TrainConfig's None)."""
    if text.strip().lower() in (_ALL, "none", "null"):
        return _ALL
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: an integer, or all") from None


def _add_flag(group, name: str, dest: str, kind, help: str, choices=None) -> None:
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help)
    else:
        group.add_argument(flag, dest=dest, type=kind, default=None, choices=choices,
                           metavar=None if choices else name.upper(), help=help)


def _size_values(args: argparse.Namespace) -> dict:
    """{size.NAME: value} of `--size NAME=VALUE` (VALUE read as YAML: 5 an int, 5.5 a float, true, sum) and the
    built-in size flags; a size given twice is refused."""
    out: dict = {}
    for text in getattr(args, "size_values", None) or ():
        name, eq, raw = text.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier() or not raw.strip():
            raise ValueError(f"--size {text!r}: expected NAME=VALUE with a size name of the model (e.g. --size "
                             f"cutoff=5)")
        key = SIZE_PREFIX + name
        value = yaml.safe_load(raw)
        if key in out and out[key] != value:
            raise ValueError(f"--size {name}= is given twice ({out[key]!r} and {value!r}): give it once")
        out[key] = value
    for name in _builtin_sizes():
        value = getattr(args, SIZE_PREFIX + name, None)
        if value is None:
            continue
        key = SIZE_PREFIX + name
        if key in out and out[key] != value:
            raise ValueError(f"--{name.replace('_', '-')} {value} contradicts --size {name}={out[key]!r}: give one "
                             f"of them")
        out[key] = value
    return out


def _flat(values: dict) -> dict:
    """A config mapping with its sizes as `size.NAME` keys (bare legacy names and a `sizes` mapping in a YAML
    file), so flags can override them key by key."""
    out = {}
    for key, value in values.items():
        if key == "sizes" and isinstance(value, dict):
            out.update({SIZE_PREFIX + str(k): v for k, v in value.items()})
        elif key in LEGACY_SIZE_NAMES:
            out[SIZE_PREFIX + key] = value
        else:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read config: {e}") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of TrainConfig keys, got {type(loaded).__name__}")
        unknown = sorted(str(k) for k in loaded if not (isinstance(k, str) and (TrainConfig.is_key(k) or k == "sizes")))
        if unknown:
            raise ValueError(f"--config {path}: unknown config key(s) {unknown}; known keys: "
                             f"{', '.join(sorted(n for n in TrainConfig.field_names() if n != 'sizes'))} and "
                             f"{SIZE_PREFIX}NAME for a size of the model")
        values.update(_flat(loaded))
    values.update({f.name: None if getattr(args, f.name) == _ALL else getattr(args, f.name) for f in fields(TrainConfig)
                   if f.name != "sizes" and getattr(args, f.name, None) is not None})
    values.update(_size_values(args))
    return resolve_config(values)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "config")
# a checkpoint resumes only the run it was written by; these may change when it is resumed
_RESUMABLE_CHANGES = ("epochs", "lr", "device", "threads", "flush_denormals", "eval_batch_size", "force_weight", "batch_size",
                      "compile")


def load_checkpoint_file(path, flag: str = "--resume") -> dict:
    import torch

    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{flag} {p}: no such file (expected a checkpoint written by --checkpoint)")
    if p.is_dir():
        raise ValueError(f"{flag} {p}: is a folder, expected a checkpoint file written by --checkpoint")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise ValueError(f"{flag} {p}: not a checkpoint written by --checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not isinstance(state, dict) or not all(k in state for k in CHECKPOINT_KEYS):
        raise ValueError(f"{flag} {p}: a torch file but not a dcnn-ablate checkpoint (missing "
                         f"{[k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]})")
    return state


def check_resume_config(state: dict, cfg: TrainConfig, path) -> None:
    old = state.get("config") or {}
    try:  # in today's flat form: a checkpoint written before sizes were one mapping holds them as bare keys
        old = TrainConfig.from_dict(old).to_dict()
    except ValueError:  # compared as stored
        pass
    new = cfg.to_dict()
    diffs = [f"{k}: {old.get(k)!r} → {new[k]!r}" for k in new
             if k not in _RESUMABLE_CHANGES and k in old and old.get(k) != new[k]]
    if diffs:
        raise ValueError(f"--resume {path}: the checkpoint was written by a different run ("
                         + "; ".join(diffs) + f"); only {', '.join(_RESUMABLE_CHANGES)} may change on resume")
    if int(state["epoch"]) >= cfg.epochs:
        raise ValueError(f"--resume {path}: the checkpoint is at epoch {int(state['epoch'])} and --epochs is "
                         f"{cfg.epochs}: nothing to train (raise --epochs)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model.  Its task family (dcnn.registry.family_of) checks the data set and the split before any
    model is built, names the data in the header and the metrics in each epoch's line."""
    cfg = config_from_args(args)
    family = family_of(cfg.model)
    if args.resume:
        check_resume_config(load_checkpoint_file(args.resume), cfg, args.resume)
    if args.checkpoint:
        # written every epoch: never over the data, the config or anything else it did not write
        # (a checkpoint of the run being resumed may be continued in place)
        resumed = args.resume if args.resume and same_file(args.resume, args.checkpoint) else None
        check_output("--checkpoint", args.checkpoint, {"--dataset": cfg.dataset.split("?", 1)[0], "--test-dataset": cfg.test_dataset or None,
                                                   "--config": args.config},
                     args.force or bool(resumed))
    # the flags' own checks first (cheap), then the data: bad data, or a split it cannot hold, fails here
    family.check_dataset(cfg.dataset, cfg.to_dict())
    info = family.dataset_info(cfg.dataset)
    units = info.get("units", [])
    frames = f", {info['frames']} frames" if "frames" in info else ""
    if cfg.test_dataset:
        frames += f", test frames from {cfg.test_dataset}"
    elif info.get("official_test_frames"):
        frames += f" ({info['official_test_frames']} of them its official test set)"
    print(f"training {cfg.model} ({cfg.preset}) activation={cfg.activation} denorm={cfg.denorm} "
          f"rescale={cfg.rescale} (C={cfg.rescale_factor:g}) init={cfg.init} on {info['name']} "
          f"[{info['theory']}]{frames}", file=sys.stderr, flush=True)
    shown = [m for m in family.metrics if m.main]

    def on_epoch(m, trainer):
        values = [f"val {spec.short} {_fmt(m[spec.key])}" + (f" {spec.unit_for(units)}" if spec.unit_for(units) else "")
                  for spec in shown]
        values += [f"{term.replace('_loss', '').replace('_', ' ')} {_fmt(m[term])}" for term in family.train_terms
                   if term in m]
        print(f"epoch {m['epoch']:3d}/{cfg.epochs}  " + "  ".join(values) + f"  ({m['epoch_time_s']:.1f} s)"
              + ("  DIVERGED" if m["diverged"] else ""), file=sys.stderr, flush=True)
        if args.checkpoint:
            trainer.save(args.checkpoint)

    summary = train(cfg, on_epoch=on_epoch, resume_from=args.resume)
    print(json.dumps(summary, indent=2, default=str, ensure_ascii=False))
    return 1 if summary.get("diverged") else 0


def cmd_generate(args: argparse.Namespace) -> int:
    check_generate_args(args.molecule, args.frames, args.temperature, args.seed, args.out,
                        args.timestep, args.interval, args.force)

    ds = generate(args.molecule, args.frames, args.temperature, args.seed, args.out,
                  timestep_fs=args.timestep, interval=args.interval, overwrite=args.force)
    print(json.dumps({"out": str(args.out), "frames": len(ds), "atoms": ds.n_atoms,
                      "theory": ds.theory, "energy_unit": ds.energy_unit}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Validate a data file (any atomistic layout) and print its summary."""
    ds = load_atoms(args.path)
    species, counts = ds.compositions()
    sizes = ds.n_atoms
    out = {"path": ds.source, "name": ds.name, "theory": ds.theory, "frames": len(ds),
           "atoms": int(sizes[0]) if ds.fixed_size else {"min": int(sizes.min()), "max": int(sizes.max())},
           "elements": [int(z) for z in species], "compositions": len({tuple(c) for c in counts.tolist()}),
           "periodic": bool(ds.is_periodic), "energy_unit": ds.energy_unit, "force_unit": ds.force_unit,
           "energy_mean": float(ds.energies.mean()), "energy_std": float(ds.energies.std()),
           "energy_per_atom_mean": float((ds.energies / sizes).mean()),
           "mean_abs_force": float(abs(ds.forces).mean()), **ds.metadata}
    if ds.fixed_size:
        out["numbers"] = ds.numbers[:int(sizes[0])].tolist()
    if ds.groups is not None:  # frames per group, and per group in the data set's own test set
        names, counts = np.unique(ds.groups, return_counts=True)
        out["groups"] = dict(zip(names.tolist(), counts.tolist()))
    if ds.has_own_test_set:
        out["official_test_frames"] = int(ds.test_mask.sum())
        if ds.groups is not None:
            names, counts = np.unique(ds.groups[ds.test_mask], return_counts=True)
            out["official_test_groups"] = dict(zip(names.tolist(), counts.tolist()))
    print(json.dumps(out, indent=2))
    return 0


def add_commands(sub) -> None:
    t = sub.add_parser("train", help="train one DC-NN (energies + forces)",
                       description="Train one model; flags override --config YAML values.")
    t.add_argument("--config", help="YAML file of TrainConfig keys")
    t.add_argument("--checkpoint", help="write a checkpoint here after every epoch")
    t.add_argument("--resume", help="continue from a checkpoint written by --checkpoint")
    t.add_argument("--force", action="store_true",
                   help="let --checkpoint replace an existing file (never the data set or --config)")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("data", help="generate or inspect data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    g = dsub.add_parser("generate", help="GFN2-xTB Langevin MD → MD17-layout npz (kcal/mol, Å)")
    g.add_argument("--molecule", required=True, help="ethanol, aspirin or a structure file ASE reads")
    g.add_argument("--frames", type=int, required=True)
    g.add_argument("--temperature", type=float, default=500.0, help="K (default 500)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    g.add_argument("--interval", type=int, default=10, help="keep every N-th step (default 10)")
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    g.set_defaults(func=cmd_generate)
    i = dsub.add_parser("info", help="validate a data file and print its summary")
    i.add_argument("path")
    i.set_defaults(func=cmd_info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcnn-ablate", description=__doc__.splitlines()[0])
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


def _looks_negative(token: str) -> bool:
    if not token.startswith("-") or token.startswith("--"):
        return False
    try:
        float(token)
        return True
    except ValueError:
        return token[1:].lower() in ("inf", "nan", "infinity")


def join_negative_values(argv: list[str]) -> list[str]:
    """`--lr -1e-3`: argparse takes '-1e-3' for a flag; pass it as `--lr=-1e-3` so the value reaches
    the validation, which names the flag and says what is accepted."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _looks_negative(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse's own refusal (already printed) or --help
        return 0 if e.code in (0, None) else 2
    try:
        return args.func(args)
    except (DatasetError, ValueError, FileExistsError) as e:
        print(f"dcnn-ablate: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder the command cannot use: name it, no traceback
        where = f" ({e.filename})" if getattr(e, "filename", None) and str(e.filename) not in str(e) else ""
        print(f"dcnn-ablate: error: {e}{where}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
