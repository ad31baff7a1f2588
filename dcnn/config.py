"""TrainConfig: the one typed, validated description of a training run; its flat form (`to_dict`: one scalar
per key, sizes as `size.NAME`) is what Tune, MLflow and checkpoints hold.

A record: it imports no model and reads no file.  The names in it (the model's spec, its preset and sizes, the
data set) are resolved by `dcnn.registry.resolve_config`, once, where a run starts.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from dcnn.activations import ACTIVATION_NAMES
from dcnn.init import INIT_MODES
from dcnn.schedules import SCHEDULES

ACTIVATION_CHOICES = ("original",) + ACTIVATION_NAMES
SCOPES = ("paper", "all")  # where activations are swapped: the paper's placement, or everywhere
DTYPES = ("float32", "float64")
OPTIMIZERS = ("adam", "lbfgs")
# the training loss's shape (dcnn/losses.py): the paper's L1, MSE (MACE's and NequIP's), Huber (MACE's for OC-style
# data: quadratic within huber_delta, linear beyond)
LOSS_FNS = ("l1", "mse", "huber")
# what the energy term compares: the energy of the structure (the paper's) or per atom (MACE's and NequIP's
# PerAtom losses: structures of every size weigh the same per atom)
ENERGY_TERMS = ("structure", "atom")
# which weights the test metrics are of: the last epoch's (the paper's) or the best validation epoch's
EVALUATE_AT = ("last", "best")
SPLITS = ("random",)  # besides "ood:ELEMENT" (a held-out element: dcnn.atomistic.splits.ood_split)
# the energy+force step: eager, traced and compiled, or compiled when the timed eager steps say it pays back
# (dcnn/compiled.py)
COMPILE_MODES = ("off", "on", "auto")
# A model size's flat key (Tune, MLflow, --set, a study's YAML): `size.NAME`, e.g. size.cutoff.  Which names
# a model has is its ModelSpec's to say (dcnn.models.plugins.ModelSpec.size_names): plug-ins bring their own.
SIZE_PREFIX = "size."
# The built-in models' sizes, which were TrainConfig fields of their own before sizes became one mapping:
# `from_dict` still reads them as bare keys (studies, checkpoints and --resume written before)
LEGACY_SIZE_NAMES = ("hidden", "filters", "interactions", "gaussians", "cutoff",
                     "embedding", "convs", "fc", "fc_layers",
                     # ForceNet sizes
                     "depth_mlp_edge", "depth_mlp_node",
                     # DimeNet++ sizes
                     "blocks", "int_emb", "basis_emb", "out_emb", "spherical", "radial",
                     # GemNet-T sizes (and blocks, spherical, radial, cutoff above)
                     "emb_atom", "emb_edge", "emb_trip", "emb_rbf", "emb_cbf", "emb_bil_trip",
                     # PINN FCN sizes
                     "hidden_layers", "batchnorm",
                     # CGCNN's readout: "mean" (the paper's, intensive) or "sum" (extensive, for data of many sizes)
                     "readout")
_SIZE_VALUE_TYPES = (bool, int, float, str)


@dataclass
class TrainConfig:
    """The one source of defaults (the CLI, the trainables and every built-in study start from here).

    They are the CPU-sized settings `make ablate` runs: Adam, batch 20 and β = 30 as in the paper, but
    lr 1e-3 with a per-step cosine to 1e-6 over 10 epochs and C = 1e4, so energies are learned in
    minutes (the paper's constant lr 1e-4 for 50 epochs leaves E noisy at this budget). C = 1e4 brings
    |E|/C of the bundled GFN2 molecules below ~3, as the paper's C = 1e6 does for MD17's DFT energies.
    10 epochs (not 20): measured on a 2-core machine on which a SchNet step takes 22 ms and a CGCNN step
    45 ms, the default study then takes ≈ 6 min instead of 14 (docs/speed.md), and the seed plan's
    reference arms stay well below the baselines (LSUV init).  The paper's exact setting is the built-in
    `paper` study.
    """

    model: str = "schnet"
    preset: str = "small"
    activation: str = "original"  # "original" = the architecture's own (SchNet: ssp, CGCNN: softplus)
    scope: str = "paper"  # where the activation goes: the paper's placement or "all"
    denorm: bool = False  # remove BatchNorm layers
    rescale: bool = False  # divide E and F labels by rescale_factor for training
    rescale_factor: float = 1e4  # C; the paper used 1e6 for MD17
    shift: bool = False  # subtract per-element reference energies (fitted on the training split)
    # initialisation: the architecture's own ("default"; GemNet-T's includes its scale factors fitted on the
    # training data) or LSUV on top of it (unit output variance per Linear on a batch, dcnn/init.py)
    init: str = "default"
    seed: int = 0
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | lbfgs (full-batch L-BFGS with strong-Wolfe line search, for PINNs: lr 1, constant)
    # the last `lbfgs_epochs` epochs switch from Adam to full-batch L-BFGS (lr 1): the PINN practice of DeepXDE's
    # examples and Raissi's Burgers (Adam first, then L-BFGS); 0: one optimizer throughout
    lbfgs_epochs: int = 0
    lr_schedule: str = "cosine"  # cosine (per step, to lr_min) | constant (the paper's) | plateau
    lr_min: float = 1e-6  # cosine's final lr; plateau's floor
    warmup_epochs: int = 0  # linear warm-up before any schedule
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    batch_size: int = 20
    epochs: int = 10
    force_weight: float = 30.0
    # the training recipe of the field's potentials (MACE, NequIP, fairchem: dcnn/losses.py, dcnn/train.py);
    # the defaults are the paper's: L1 on the structure's energy, no averaging, no decay, the last epoch
    loss_fn: str = "l1"
    huber_delta: float = 0.01  # Huber's switch, in eV (per atom with energy_term=atom) and eV/Å, physical units
    energy_term: str = "structure"
    ema_decay: float = 0.0  # exponential moving average of the weights for evaluation (MACE 0.99); 0: none
    weight_decay: float = 0.0  # AdamW's decoupled weight decay; 0: Adam
    early_stopping: int = 0  # stop after this many epochs without a better validation objective; 0: never
    evaluate: str = "last"  # the test metrics of the last epoch's weights or the best validation epoch's
    dataset: str = ""  # a data file, a bundled name or a PDE problem; "" = the model's family's default
    # a file whose frames are the test set ("" = the data set's own test set if it has one, e.g. mlearn's
    # official split, else one drawn by `split`); validation is then carved from `dataset`
    test_dataset: str = ""
    split: str = "random"  # random (seeded counts or 80/10/10) | ood:ELEMENT (test = every frame with it)
    n_train: typing.Optional[int] = 800  # None: fractions 0.8/0.1/0.1 of the data set (the paper's)
    n_val: typing.Optional[int] = 200
    n_test: typing.Optional[int] = 400
    split_seed: typing.Optional[int] = None  # None: the same split for every seed (seed 0)
    # model sizes by name (size.NAME in flat form), over the preset's; empty: the preset's.  Which names apply
    # and which values they take is the model's ModelSpec's to say (checked by dcnn.registry.resolve_config)
    sizes: dict = field(default_factory=dict)
    # PINN task (model fcn; `dataset` names the PDE problem, see dcnn/pinn/problems.py). An epoch is
    # `steps_per_epoch` Adam steps; n_train/n_val/n_test and batch_size do not apply.
    n_collocation: int = 2000  # interior points (scrambled Sobol, fixed per seed)
    n_initial: int = 200
    n_boundary: int = 200
    collocation_batch: typing.Optional[int] = None  # None: full batch (DeepXDE's default)
    steps_per_epoch: int = 100
    resample: bool = False  # redraw the interior points every epoch
    eval_batch_size: int = 100
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 1
    # flush denormal floats to zero on CPU (dcnn/numerics.py: the RBF features underflow into them and some
    # CPUs process them up to ~100x slower; results change at float32 rounding level only)
    flush_denormals: bool = True
    dtype: str = "float32"
    # energy+force step: "off" eager autograd, "on" traced + torch.compile'd (dcnn/compiled.py), "auto"
    # compile only when the timed eager steps say the compile time will be paid back (AutoDecision)
    compile: str = "auto"

    def __post_init__(self):
        self._coerce()
        self._validate()

    # -- construction from untyped mappings (YAML, Tune configs) --------------------------------
    @classmethod
    def from_dict(cls, values: typing.Mapping) -> "TrainConfig":
        """From the flat form (`to_dict`, a Tune config, a YAML mapping): sizes as `size.NAME` keys, as bare
        legacy names (LEGACY_SIZE_NAMES: studies and checkpoints written before) or as one `sizes` mapping;
        a size given None is the preset's (not set)."""
        values = dict(values)
        nested = values.pop("sizes", None) or {}
        if not isinstance(nested, typing.Mapping):
            raise ValueError(f"sizes={nested!r} must map size names to values")
        sizes = dict(nested)
        for key in list(values):
            if not isinstance(key, str):
                continue
            if key.startswith(SIZE_PREFIX):
                name = key[len(SIZE_PREFIX):]
            elif key in LEGACY_SIZE_NAMES:
                name = key
            else:
                continue
            value = values.pop(key)
            if value is None:
                continue
            if name in sizes and sizes[name] != value:
                raise ValueError(f"size {name!r} is given twice with different values ({sizes[name]!r} and "
                                 f"{key}={value!r}); give it once, as {SIZE_PREFIX}{name}")
            sizes[name] = value
        known = {f.name for f in fields(cls)} - {"sizes"}
        unknown = sorted(map(str, set(values) - known))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))} and "
                             f"{SIZE_PREFIX}NAME for a size of the model")
        return cls(**values, sizes=sizes)

    def to_dict(self) -> dict:
        """The flat form (Tune, MLflow, checkpoints): one scalar per key, each size as `size.NAME`."""
        out = {}
        for f in fields(self):
            if f.name == "sizes":
                out.update({SIZE_PREFIX + k: v for k, v in self.sizes.items()})
            else:
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def is_key(cls, key: str) -> bool:
        """Whether `from_dict` takes `key`: a field, `size.NAME`, or a legacy bare size name."""
        return (key in cls.field_names() and key != "sizes") or key in LEGACY_SIZE_NAMES or \
            (key.startswith(SIZE_PREFIX) and key[len(SIZE_PREFIX):].isidentifier())

    @property
    def resolved(self) -> bool:
        """Whether `dcnn.registry.resolve_config` made this config (the Trainer then resolves it no more; a
        copy by dataclasses.replace is unresolved again, so change a resolved config that way, not in place)."""
        return self.__dict__.get("_resolved", False)

    def _coerce(self):
        hints = typing.get_type_hints(type(self))
        self.sizes = _coerce_sizes(self.sizes)
        for f in fields(self):
            if f.name == "sizes":
                continue
            value = getattr(self, f.name)
            kind = hints[f.name]
            optional = typing.get_origin(kind) is typing.Union
            if optional:
                if value is None:
                    continue
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            if f.name == "compile" and isinstance(value, bool):  # YAML 1.1 (study files, --set) reads off/on as bools
                value = "on" if value else "off"
            setattr(self, f.name, coerce_value(f.name, value, kind))

    def _validate(self):
        def choice(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; choose one of: {', '.join(allowed)}")

        def positive(name, allow_zero=False):
            v = getattr(self, name)
            if v is None:
                return
            if not (math.isfinite(v) and (v >= 0 if allow_zero else v > 0)):
                raise ValueError(f"{name}={v!r} must be {'non-negative' if allow_zero else 'positive'}")

        choice("activation", ACTIVATION_CHOICES)
        choice("scope", SCOPES)
        choice("init", INIT_MODES)
        choice("dtype", DTYPES)
        choice("compile", COMPILE_MODES)
        choice("lr_schedule", SCHEDULES)
        choice("optimizer", OPTIMIZERS)
        choice("loss_fn", LOSS_FNS)
        choice("energy_term", ENERGY_TERMS)
        choice("evaluate", EVALUATE_AT)
        positive("huber_delta")
        positive("weight_decay", allow_zero=True)
        positive("early_stopping", allow_zero=True)
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay!r} must lie in [0, 1) (0: no moving average)")
        if not (self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device={self.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
        for name in ("rescale_factor", "lr", "batch_size", "epochs", "eval_batch_size", "threads", "n_train", "n_val",
                     "n_collocation", "n_initial", "n_boundary", "collocation_batch", "steps_per_epoch"):
            positive(name)
        positive("force_weight", allow_zero=True)
        positive("lr_min", allow_zero=True)
        positive("warmup_epochs", allow_zero=True)
        positive("plateau_patience", allow_zero=True)
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor={self.plateau_factor!r} must lie in (0, 1)")
        if self.lr_min > self.lr and self.lr_schedule != "constant":
            raise ValueError(f"lr_min={self.lr_min!r} must not exceed lr={self.lr!r}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be fewer than epochs={self.epochs}")
        positive("n_test", allow_zero=True)
        positive("lbfgs_epochs", allow_zero=True)
        if self.lbfgs_epochs and (self.optimizer != "adam" or self.lbfgs_epochs >= self.epochs):
            raise ValueError(f"lbfgs_epochs={self.lbfgs_epochs} switches Adam to L-BFGS for the last epochs: it needs "
                             f"optimizer=adam (got {self.optimizer}) and fewer than epochs={self.epochs} (L-BFGS "
                             f"throughout is optimizer=lbfgs)")
        if self.optimizer == "lbfgs" and self.init == "lsuv":
            # measured (issue 28): IReLU FCN on advection from LSUV, L-BFGS alone: 0.5 % of the loss in 40 iterations
            raise ValueError("optimizer=lbfgs with init=lsuv: LSUV starts the readout at zero, where a PINN's loss is "
                             "ill-conditioned (for IReLU the PDE residual's curvature along the output weights is ~1e3 × "
                             "the initial condition's) and L-BFGS alone barely moves; use optimizer=adam, with "
                             "lbfgs_epochs=N to finish with L-BFGS (the paper's Adam, then L-BFGS)")
        if not self.model:
            raise ValueError("model must name a model (a built-in such as schnet, or a plug-in module:attribute)")
        if not (self.split in SPLITS or (self.split.startswith("ood:") and len(self.split) > 4)):
            raise ValueError(f"split={self.split!r} is not allowed; choose random, or ood:ELEMENT (e.g. ood:N: every "
                             f"frame holding the element is the test split)")

    def model_sizes(self) -> dict:
        """The sizes set, by name (what `build_model` takes over the preset's)."""
        return dict(self.sizes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _coerce_sizes(sizes) -> dict:
    """Size names and plain values (numpy scalars become Python's; None, the preset's, is dropped).  Their
    types and ranges are the model's to check (ModelSpec.sizes), which knows what each size is."""
    if not isinstance(sizes, typing.Mapping):
        raise ValueError(f"sizes={sizes!r} must map size names to values")
    out = {}
    for name, value in sizes.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"size name {name!r} is not a parameter name (sizes are keyword parameters of the "
                             f"model's build)")
        if value is None:
            continue
        if hasattr(value, "item") and not isinstance(value, _SIZE_VALUE_TYPES):  # numpy scalars
            value = value.item()
        if not isinstance(value, _SIZE_VALUE_TYPES):
            raise ValueError(f"{SIZE_PREFIX}{name}={value!r} must be a number, a string or a boolean")
        out[name] = value
    return out


def coerce_value(name: str, value, kind):
    """Accept what YAML/Tune hand us (numpy scalars, '1e-4' strings, 3.0 for 3) but nothing ambiguous."""
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, (bool, int)) or type(value).__name__ == "bool_":
                if value in (0, 1):
                    return bool(value)
            raise TypeError
        if kind is int:
            if isinstance(value, bool):
                raise TypeError
            f = float(value)
            if not f.is_integer():
                raise TypeError
            return int(f)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is str:
            if not isinstance(value, (str, Path)):
                raise TypeError
            return str(value)
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    raise ValueError(f"{name}={value!r} is not a valid {kind.__name__}")
