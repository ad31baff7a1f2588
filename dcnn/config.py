"""TrainConfig: the one typed, validated description of a training run (flat, so Tune/MLflow can use it)."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from dcnn.activations import ACTIVATION_NAMES
from dcnn.compiled import COMPILE_MODES
from dcnn.init import INIT_MODES
from dcnn.models.cgcnn import READOUTS
from dcnn.schedules import SCHEDULES

ACTIVATION_CHOICES = ("original",) + ACTIVATION_NAMES
SCOPES = ("paper", "all")  # where activations are swapped: the paper's placement, or everywhere
DTYPES = ("float32", "float64")
OPTIMIZERS = ("adam", "lbfgs")
SPLITS = ("random",)  # besides "ood:ELEMENT" (a held-out element: dcnn.atomistic.splits.ood_split)
SIZE_FIELDS = ("hidden", "filters", "interactions", "gaussians", "cutoff",
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


@dataclass
class TrainConfig:
    """The one source of defaults (the CLI, the trainables and every built-in study start from here).

    They are the CPU-sized settings `make ablate` runs: Adam, batch 20 and β = 30 as in the paper, but
    lr 1e-3 with a per-step cosine to 1e-6 over 10 epochs and C = 1e4, so energies are learned in
    minutes (the paper's constant lr 1e-4 for 50 epochs leaves E noisy at this budget). C = 1e4 brings
    |E|/C of the bundled GFN2 molecules below ~3, as the paper's C = 1e6 does for MD17's DFT energies.
    10 epochs (not 20): measured on a 2-core machine on which a SchNet step takes 22 ms and a CGCNN step
    45 ms, the default study then takes ≈ 6 min instead of 14 (README "Speed"), and the seed plan's
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
    dataset: str = ""  # a data file, a bundled name or a PDE problem; "" = the model's family's default
    split: str = "random"  # random (seeded counts or 80/10/10) | ood:ELEMENT (test = every frame with it)
    n_train: typing.Optional[int] = 800  # None: fractions 0.8/0.1/0.1 of the data set (the paper's)
    n_val: typing.Optional[int] = 200
    n_test: typing.Optional[int] = 400
    split_seed: typing.Optional[int] = None  # None: the same split for every seed (seed 0)
    # model sizes (None: the preset's value)
    hidden: typing.Optional[int] = None
    filters: typing.Optional[int] = None
    interactions: typing.Optional[int] = None
    gaussians: typing.Optional[int] = None
    cutoff: typing.Optional[float] = None
    embedding: typing.Optional[int] = None
    convs: typing.Optional[int] = None
    fc: typing.Optional[int] = None
    fc_layers: typing.Optional[int] = None
    # ForceNet sizes
    depth_mlp_edge: typing.Optional[int] = None
    depth_mlp_node: typing.Optional[int] = None
    # DimeNet++ sizes
    blocks: typing.Optional[int] = None
    int_emb: typing.Optional[int] = None
    basis_emb: typing.Optional[int] = None
    out_emb: typing.Optional[int] = None
    spherical: typing.Optional[int] = None
    radial: typing.Optional[int] = None
    # GemNet-T sizes
    emb_atom: typing.Optional[int] = None
    emb_edge: typing.Optional[int] = None
    emb_trip: typing.Optional[int] = None
    emb_rbf: typing.Optional[int] = None
    emb_cbf: typing.Optional[int] = None
    emb_bil_trip: typing.Optional[int] = None
    # PINN FCN sizes (width is `hidden`)
    hidden_layers: typing.Optional[int] = None
    batchnorm: typing.Optional[bool] = None  # BatchNorm after each hidden activation (what DN removes)
    # CGCNN readout (mean | sum)
    readout: typing.Optional[str] = None
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**dict(values))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _coerce(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            kind = hints[f.name]
            optional = typing.get_origin(kind) is typing.Union
            if optional:
                if value is None:
                    continue
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            setattr(self, f.name, _coerce_value(f.name, value, kind))

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
        if not (self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device={self.device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
        for name in ("rescale_factor", "lr", "batch_size", "epochs", "eval_batch_size", "threads",
                     *(n for n in SIZE_FIELDS if n not in ("batchnorm", "readout")), "n_train", "n_val",
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
        if self.readout is not None and self.readout not in READOUTS:
            raise ValueError(f"readout={self.readout!r} is not allowed; choose one of: {', '.join(READOUTS)}")
        if not self.model:
            raise ValueError("model must name a model (a built-in such as schnet, or a plug-in module:attribute)")
        if not (self.split in SPLITS or (self.split.startswith("ood:") and len(self.split) > 4)):
            raise ValueError(f"split={self.split!r} is not allowed; choose random, or ood:ELEMENT (e.g. ood:N: every "
                             f"frame holding the element is the test split)")

    def model_sizes(self) -> dict:
        return {n: getattr(self, n) for n in SIZE_FIELDS if getattr(self, n) is not None}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def resolve_config(config: "TrainConfig | typing.Mapping", base: str | None = None) -> TrainConfig:
    """The one place where names and files of a config are resolved (the CLI, the trainables, the study and
    the Trainer call it; a TrainConfig itself is a pure, validated record): the model's spec (built-in,
    optional built-in, plug-in `module:attr` or entry point, imported here), its preset and the size fields
    that apply to it, its task family's default data set when none is given, and the data set made absolute
    (relative paths against `base`, default the working directory; trials run in folders of their own) or,
    for a PINN, the problem's canonical name.  Idempotent."""
    from dcnn.families import FAMILIES
    from dcnn.models import UnknownModelError, get_spec, model_names

    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    try:
        spec = get_spec(cfg.model)
    except UnknownModelError:
        raise ValueError(f"model={cfg.model!r} is not allowed; choose one of: {', '.join(model_names())} "
                         f"(or a plug-in package.module:attribute)") from None
    if cfg.preset not in spec.presets:
        raise ValueError(f"preset={cfg.preset!r} is not allowed; choose one of: {', '.join(spec.presets)}")
    sizes = set(spec.presets[cfg.preset])
    foreign = [n for n in SIZE_FIELDS if getattr(cfg, n) is not None and n not in sizes]
    if foreign:
        raise ValueError(f"size field(s) {foreign} do not apply to model {cfg.model!r}; its sizes are: "
                         f"{', '.join(sizes)}")
    family = FAMILIES[spec.family]
    dataset = family.resolve(cfg.dataset or family.default_dataset(), base, model=cfg.model)
    return cfg if dataset == cfg.dataset else dataclasses.replace(cfg, dataset=dataset)


def _coerce_value(name: str, value, kind):
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
