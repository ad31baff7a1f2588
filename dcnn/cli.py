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

import yaml

from dcnn.config import ACTIVATION_CHOICES, TrainConfig
from dcnn.data import DatasetError, load_dataset
from dcnn.models import MODEL_NAMES, PRESET_NAMES

_CHOICES = {"model": MODEL_NAMES, "preset": PRESET_NAMES, "activation": ACTIVATION_CHOICES,
            "scope": ("paper", "all"), "dtype": ("float32", "float64")}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default None = 'not given', so YAML values are not overridden)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        kind = hints[f.name]
        if typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(default {f.default})")
        else:
            p.add_argument(flag, dest=f.name, type=kind, default=None, choices=_CHOICES.get(f.name),
                           metavar=None if f.name in _CHOICES else f.name.upper(),
                           help=f"(default {f.default})")


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
        values.update(loaded)
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                   if getattr(args, f.name, None) is not None})
    return TrainConfig.from_dict(values)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    ds = load_dataset(cfg.dataset)  # bad data fails here, before any model is built
    eu, fu = ds.energy_unit, ds.force_unit
    print(f"training {cfg.model} ({cfg.preset}) activation={cfg.activation} denorm={cfg.denorm} "
          f"rescale={cfg.rescale} (C={cfg.rescale_factor:g}) on {ds.name} [{ds.theory}], "
          f"{len(ds)} frames", file=sys.stderr, flush=True)

    def on_epoch(m, trainer):
        print(f"epoch {m['epoch']:3d}/{cfg.epochs}  val E {_fmt(m['energy_loss'])} {eu}  "
              f"val F {_fmt(m['force_loss'])} {fu}  train E {_fmt(m['train_energy_loss'])}  "
              f"train F {_fmt(m['train_force_loss'])}  ({m['epoch_time_s']:.1f} s)"
              + ("  DIVERGED" if m["diverged"] else ""), file=sys.stderr, flush=True)
        if args.checkpoint:
            trainer.save(args.checkpoint)

    from dcnn.train import train

    summary = train(cfg, on_epoch=on_epoch, resume_from=args.resume)
    print(json.dumps(summary, indent=2, default=str, ensure_ascii=False))
    return 1 if summary["diverged"] else 0


def cmd_generate(args: argparse.Namespace) -> int:
    from dcnn.generate import generate

    ds = generate(args.molecule, args.frames, args.temperature, args.seed, args.out,
                  timestep_fs=args.timestep, interval=args.interval, overwrite=args.force)
    print(json.dumps({"out": str(args.out), "frames": len(ds), "atoms": ds.n_atoms,
                      "theory": ds.theory, "energy_unit": ds.energy_unit}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    ds = load_dataset(args.path)
    print(json.dumps({"path": ds.source, "name": ds.name, "theory": ds.theory, "frames": len(ds),
                      "atoms": ds.n_atoms, "numbers": ds.numbers.tolist(),
                      "energy_unit": ds.energy_unit, "force_unit": ds.force_unit,
                      "energy_mean": float(ds.energies.mean()), "energy_std": float(ds.energies.std()),
                      "mean_abs_force": float(abs(ds.forces).mean()), **ds.metadata}, indent=2))
    return 0


def add_commands(sub) -> None:
    t = sub.add_parser("train", help="train one DC-NN (energies + forces)",
                       description="Train one model; flags override --config YAML values.")
    t.add_argument("--config", help="YAML file of TrainConfig keys")
    t.add_argument("--checkpoint", help="write a checkpoint here after every epoch")
    t.add_argument("--resume", help="continue from a checkpoint written by --checkpoint")
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


def run(parser: argparse.ArgumentParser, argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, ValueError, FileExistsError) as e:
        print(f"dcnn-ablate: error: {e}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
