from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path


from dcnn.config import ACTIVATION_CHOICES, SIZE_FIELDS, TrainConfig, resolve_config
from dcnn.atomistic.molecules import DEFAULT_DATASET
from dcnn.families import family_of
from dcnn.init import INIT_MODES
from dcnn.models import get_spec, has_normalization, model_names

STUDY_DIR = Path(__file__).resolve().parent / "studies"
FACTORS = ("activation", "denorm", "rescale", "shift", "init")
# a design that does not name the shift or init factor runs without ES, from the architecture's own init
FACTOR_DEFAULTS = {"shift": False, "init": "default"}
INIT_LABELS = {"default": "", "lsuv": "LSUV"}  # how an arm's key and label name its init (one per INIT_MODES)
SPLIT_SEEDS = ("fixed", "vary")
# Keys a study adds to a Tune config to label a trial (not TrainConfig settings); plugin_path: folders
# a trial puts on sys.path before it resolves a plug-in model (runner.plugin_path).
LABEL_KEYS = ("arm", "study", "phase", "cell", "data", "plugin_path")
_STUDY_KEYS = {"description", "reference", "designs", "models", "seeds", "fixed", "datasets", "split_seeds",
               "model_sizes"}


@dataclass(frozen=True)
class Arm:
    """One combination of the factors.  DN = denormalization, LR = label rescaling, ES = per-species
    energy shift, LSUV = data-dependent initialisation (init="lsuv", dcnn/init.py)."""

    activation: str
    denorm: bool
    rescale: bool
    shift: bool = False
    init: str = "default"

    @classmethod
    def from_config(cls, config: dict) -> "Arm":
        return cls(str(config.get("activation")), bool(config.get("denorm")), bool(config.get("rescale")),
                   bool(config.get("shift", False)), str(config.get("init") or FACTOR_DEFAULTS["init"]))

    def _stabilizers(self) -> list[str]:
        return (["DN"] * self.denorm + ["LR"] * self.rescale + ["ES"] * self.shift
                + [INIT_LABELS[self.init]] * bool(INIT_LABELS[self.init]))

    @property
    def key(self) -> str:
        """Stable machine name, e.g. 'irelu+DN+LR', 'isilu+LR', 'irelu', 'irelu+LR+ES', 'irelu+DN+LR+LSUV'."""
        return "+".join([self.activation] + self._stabilizers())

    @property
    def label(self) -> str:
        """Readable name, e.g. 'irelu · DN+LR', 'irelu · no DN, no LR'."""
        parts = self._stabilizers()
        return f"{self.activation} · {'+'.join(parts) if parts else 'no DN, no LR'}"

    def as_config(self) -> dict:
        return {"activation": self.activation, "denorm": self.denorm, "rescale": self.rescale,
                "shift": self.shift, "init": self.init}


def trial_name(config: dict) -> str:
    """The name a trial goes by (MLflow run, progress lines): 'schnet · isilu · DN+LR · seed 1'."""
    name = f"{config.get('model')} · {Arm.from_config(config).label} · seed {config.get('seed')}"
    if config.get("data"):  # studies over several data sets name the data set too
        name = f"{config['data']} · {name}"
    return ("tune · " + name) if config.get("phase") == "tune" else name


@dataclass
class Study:
    name: str
    arms: list[Arm]
    reference: Arm
    models: list[str] = field(default_factory=lambda: ["schnet", "cgcnn"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    fixed: dict = field(default_factory=dict)  # TrainConfig keys; anything not given is TrainConfig's default
    datasets: list[str] = field(default_factory=lambda: [str(DEFAULT_DATASET)])
    split_seeds: str = "fixed"  # fixed: one split (seed 0) for every trial; vary: the split follows the seed
    description: str = ""
    source: str = ""
    # sizes for one model only ({"cgcnn": {"readout": "sum"}}): a size one model has and another lacks
    # (CGCNN's readout) cannot go in `fixed`, which every model's trials get
    model_sizes: dict = field(default_factory=dict)

    def fixed_for(self, model: str) -> dict:
        """The TrainConfig keys a trial of `model` gets from the study: `fixed`, then its `model_sizes`."""
        return {**self.fixed, **self.model_sizes.get(model, {})}

    def with_overrides(self, models=None, seeds=None, fixed=None, datasets=None, split_seeds=None,
                       shift=None) -> "Study":
        """The study with command-line overrides; `None` keeps the study's value (an empty list is an
        error, not 'keep'). `shift=True` adds the per-species energy shift to every arm."""
        arms, reference = self.arms, self.reference
        if shift is not None:
            arms = list(dict.fromkeys(replace(a, shift=bool(shift)) for a in self.arms))
            reference = replace(self.reference, shift=bool(shift))
        s = replace(self, arms=arms, reference=reference,
                    models=list(self.models if models is None else models),
                    seeds=list(self.seeds if seeds is None else seeds),
                    datasets=list(self.datasets if datasets is None else datasets),
                    split_seeds=self.split_seeds if split_seeds is None else split_seeds,
                    fixed={**self.fixed, **(fixed or {})})
        # a size set on the command line (fixed) is every model's: it wins over the study's per-model value
        s = replace(s, model_sizes={m: {k: x for k, x in v.items() if k not in (fixed or {})}
                                    for m, v in self.model_sizes.items() if m in s.models})
        s.validate()
        return s

    def validate(self) -> None:
        """Build every (arm, model) TrainConfig once, so a bad study fails before Ray starts."""
        where = self.source or self.name
        if not self.arms:
            raise ValueError(f"{where}: the study has no arms")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) \
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"{where}: seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not self.models:
            raise ValueError(f"{where}: models must be a non-empty list; known: {', '.join(model_names())}")
        for model in self.models:
            try:  # a built-in, `package.module:attr` plug-in or entry point (dcnn/models/plugins.py)
                get_spec(model)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        families = {m: family_of(m).name for m in self.models}
        if len({id(family_of(m)) for m in self.models}) > 1:
            raise ValueError(f"{where}: models {self.models} belong to different task families {families}; a study "
                             f"compares one kind of task (its data sets and report columns): split it in two")
        if not self.datasets or len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"{where}: datasets must be a non-empty list of distinct data sets, got {self.datasets}")
        labels = list(self.dataset_labels().values())
        if len(set(labels)) != len(labels):
            raise ValueError(f"{where}: data sets {self.datasets} share a name ({labels}); the report and MLflow "
                             f"tell data sets apart by file name: rename one of the files")
        if self.split_seeds not in SPLIT_SEEDS:
            raise ValueError(f"{where}: split_seeds {self.split_seeds!r}: choose one of {', '.join(SPLIT_SEEDS)}")
        bad_fixed = [k for k in self.fixed if k in FACTORS + ("model", "seed", "dataset") + LABEL_KEYS]
        if bad_fixed:
            raise ValueError(f"{where}: fixed must not set the study's axes {bad_fixed} (use the study's "
                             f"designs, models, seeds and datasets)")
        if "split_seed" in self.fixed and self.split_seeds == "vary":
            raise ValueError(f"{where}: fixed split_seed contradicts split_seeds: vary")
        if not isinstance(self.model_sizes, dict) or not all(isinstance(v, dict) for v in self.model_sizes.values()):
            raise ValueError(f"{where}: model_sizes must map model names to size mappings, got {self.model_sizes!r}")
        stray = [m for m in self.model_sizes if m not in self.models]
        not_sizes = sorted({k for v in self.model_sizes.values() for k in v if k not in SIZE_FIELDS})
        if stray or not_sizes:
            raise ValueError(f"{where}: model_sizes " + (f"names models not in the study {stray}" if stray else
                             f"sets {not_sizes}, which are not sizes (those go in fixed)"))
        for model in self.models:  # what every arm shares (fixed, --set, --preset): blamed on no arm
            try:
                resolve_config({**self.fixed_for(model), "model": model, "seed": self.seeds[0],
                                "dataset": self.datasets[0]})
            except ValueError as e:
                raise ValueError(f"{where}: settings every arm shares (fixed, model_sizes, --set, --epochs, --preset) "
                                 f"on {model}: {e}") from e
        for arm, model in itertools.product(self.arms, self.models):
            try:
                resolve_config({**self.fixed_for(model), **arm.as_config(), "model": model, "seed": self.seeds[0],
                                "dataset": self.datasets[0]})
            except ValueError as e:
                raise ValueError(f"{where}: arm {arm.key} on {model}: {e}") from e

    def setting(self, key: str, model: str | None = None):
        """The value a trial of this study gets for a TrainConfig key (fixed, else TrainConfig's default)."""
        model = model or self.models[0]
        cfg = TrainConfig.from_dict({**self.fixed_for(model), "model": model, "dataset": self.datasets[0]})
        return getattr(cfg, key)

    def resolved_settings(self) -> dict:
        """Every TrainConfig key but the study's axes, as its trials get it (the plan --resume compares)."""
        cfg = TrainConfig.from_dict({**self.fixed, "model": self.models[0], "dataset": self.datasets[0]}).to_dict()
        for key in FACTORS + ("model", "seed", "dataset", "threads", "device") + SIZE_FIELDS:
            cfg.pop(key, None)
        out = {**cfg, **{k: v for k, v in self.fixed.items() if k in SIZE_FIELDS}}
        if self.model_sizes:
            out["model_sizes"] = self.model_sizes
        return out

    def identical_arms(self) -> dict[str, dict[str, str]]:
        """{model: {arm: twin}} for arms that are the same computation as an earlier arm on that model.

        DN deletes BatchNorm layers; on a model that has none (read from the built model, not a list of
        names) an arm with DN and the same arm without it train the same function bit for bit, so only
        the first of the two in the study's order runs and the other is reported from it.
        """
        out: dict[str, dict[str, str]] = {}
        for model in self.models:
            cfg = TrainConfig.from_dict({**self.fixed_for(model), "model": model, "dataset": self.datasets[0]})
            if has_normalization(model, cfg.preset, **cfg.model_sizes()):
                continue
            seen: dict[Arm, str] = {}
            # the reference runs itself, never as another arm's twin
            for arm in sorted(self.arms, key=lambda a: a != self.reference):
                canonical = replace(arm, denorm=False)
                if canonical in seen:
                    out.setdefault(model, {})[arm.key] = seen[canonical]
                else:
                    seen[canonical] = arm.key
        return out

    def cells(self) -> list[tuple[str, Arm]]:
        """The (model, arm) pairs that run: every pair but the identical-by-construction twins."""
        skip = self.identical_arms()
        return [(model, arm) for arm in self.arms for model in self.models if arm.key not in skip.get(model, {})]

    def dataset_labels(self) -> dict[str, str]:
        """Short names of the data sets (bundled name, else file stem), for run names and report headings."""
        family = self.family
        return {d: family.dataset_label(d) for d in self.datasets}

    @property
    def family(self):
        """The task family of the study's models (dcnn/families.py): its data sets and metrics."""
        return family_of(self.models[0])

    def trial_configs(self) -> list[dict]:
        """Every trial that runs, as a flat config, in a stable order (arm, model, dataset, seed)."""
        labels = self.dataset_labels()
        out = []
        for (model, arm), dataset, seed in itertools.product(self.cells(), self.datasets, self.seeds):
            cfg = {**self.fixed_for(model), **arm.as_config(), "arm": arm.key, "model": model, "seed": seed,
                   "dataset": dataset, "study": self.name}
            if len(self.datasets) > 1:
                cfg["data"] = labels[dataset]
            if self.split_seeds == "vary":
                cfg["split_seed"] = seed
            out.append(cfg)
        return out

    def param_space(self, skip_identical: bool = False) -> dict:
        """A Tune param space: grids over arm, model, data set and seed; the factors follow from the arm.

        With `skip_identical` (what `dcnn-ablate ablate` runs) the grid is over the (model, arm) cells
        that run instead, so identical-by-construction arms are not trained twice.
        """
        from ray import tune  # here, not at import: `dcnn-ablate train` and `data` never load Ray

        table = {arm.key: arm.as_config() for arm in self.arms}
        space = {**self.fixed, "study": self.name, "seed": tune.grid_search(list(self.seeds))}
        space["dataset"] = tune.grid_search(list(self.datasets)) if len(self.datasets) > 1 else self.datasets[0]
        if len(self.datasets) > 1:
            space["data"] = tune.sample_from(DatasetLabel(self.dataset_labels()))
        if skip_identical:
            space["cell"] = tune.grid_search([f"{model}/{arm.key}" for model, arm in self.cells()])
            space["model"] = tune.sample_from(CellPart(0))
            space["arm"] = tune.sample_from(CellPart(1))
        else:
            space["arm"] = tune.grid_search([a.key for a in self.arms])
            space["model"] = tune.grid_search(list(self.models))
        for factor in FACTORS:
            space[factor] = tune.sample_from(ArmFactor(table, factor))
        for size in sorted({k for v in self.model_sizes.values() for k in v}):
            space[size] = tune.sample_from(ModelSize(self.model_sizes, size))
        if self.split_seeds == "vary":
            space["split_seed"] = tune.sample_from(SplitSeed())
        return space


class ArmFactor:
    """`tune.sample_from` callable: the value of one factor for the trial's arm (picklable)."""

    def __init__(self, table: dict, factor: str):
        self.table, self.factor = table, factor

    def __call__(self, config: dict) -> object:
        return self.table[config["arm"]][self.factor]

    def __repr__(self) -> str:
        return f"ArmFactor({self.factor})"


class ModelSize:
    """`tune.sample_from` callable: a `model_sizes` value for the trial's model, None (the preset's) for a
    model the study gives none (picklable)."""

    def __init__(self, table: dict, size: str):
        self.table, self.size = table, size

    def __call__(self, config: dict) -> object:
        return self.table.get(config["model"], {}).get(self.size)

    def __repr__(self) -> str:
        return f"ModelSize({self.size})"


class CellPart:
    """`tune.sample_from` callable: model (0) or arm (1) of the trial's 'model/arm' cell."""

    def __init__(self, part: int):
        self.part = part

    def __call__(self, config: dict) -> str:
        return config["cell"].rsplit("/", 1)[self.part]  # arm keys hold no slash

    def __repr__(self) -> str:
        return f"CellPart({('model', 'arm')[self.part]})"


class DatasetLabel:
    def __init__(self, labels: dict):
        self.labels = labels

    def __call__(self, config: dict) -> str:
        return self.labels[config["dataset"]]


class SplitSeed:
    """split_seeds: vary — each seed gets its own train/val/test split, so intervals include split variance."""

    def __call__(self, config: dict) -> int:
        return int(config["seed"])


def _arm(values, where: str) -> Arm:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of factors ({', '.join(FACTORS)}), got {values!r}")
    unknown = set(values) - set(FACTORS)
    if unknown:
        raise ValueError(f"{where}: unknown factor(s) {sorted(unknown)}; factors are {', '.join(FACTORS)}")
    values = {**FACTOR_DEFAULTS, **values}
    missing = [f for f in FACTORS if f not in values]
    if missing:
        raise ValueError(f"{where}: missing factor(s) {missing}")
    if values["activation"] not in ACTIVATION_CHOICES:
        raise ValueError(f"{where}: activation {values['activation']!r} is not one of {', '.join(ACTIVATION_CHOICES)}")
    for f in ("denorm", "rescale", "shift"):
        if not isinstance(values[f], bool):
            raise ValueError(f"{where}: {f} must be true or false, got {values[f]!r}")
    if values["init"] not in INIT_MODES:
        raise ValueError(f"{where}: init {values['init']!r} is not one of {', '.join(INIT_MODES)}")
    return Arm(values["activation"], values["denorm"], values["rescale"], values["shift"], values["init"])


def _list(data: dict, key: str, where: str, kind: type, default: list) -> list:
    """A list-valued study key: a scalar where a list belongs is an error, not a list of letters."""
    if key not in data or data[key] is None:
        return list(default)
    value = data[key]
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key} must be a list, e.g. {key}: [{default[0]}], got {value!r}")
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ValueError(f"{where}: {key} must hold {kind.__name__} values, got {v!r}")
    return value


def load_study(name_or_path: str) -> Study:
    """A built-in study by name (studies/NAME.yaml) or a user's YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.is_dir():
        path = STUDY_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"unknown study {name_or_path!r}; built-in: {', '.join(list_studies())} "
                             f"(or pass a YAML file)")
    if not path.exists():
        raise ValueError(f"{path}: no such study file")
    from search_spaces.schema import check_study_data, read_study_file

    data = read_study_file(path)
    where = str(path)
    check_study_data(data, where)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a study is a mapping with keys {sorted(_STUDY_KEYS)}")
    unknown = set(data) - _STUDY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_STUDY_KEYS)}")
    if not isinstance(data.get("designs"), list) or not data["designs"]:
        raise ValueError(f"{where}: 'designs' must be a non-empty list of factor grids")
    arms: list[Arm] = []
    for k, design in enumerate(data["designs"]):
        if not isinstance(design, dict):
            raise ValueError(f"{where}: designs[{k}] must map factors to lists of levels")
        grid = {f: v if isinstance(v, list) else [v] for f, v in design.items()}
        unknown = set(grid) - set(FACTORS)
        if unknown:
            raise ValueError(f"{where}: designs[{k}]: unknown factor(s) {sorted(unknown)}; "
                             f"factors are {', '.join(FACTORS)}")
        for combo in itertools.product(*(grid.get(f, [None]) for f in FACTORS)):
            values = {f: v for f, v in zip(FACTORS, combo) if v is not None}
            arm = _arm(values, f"{where}: designs[{k}]")
            if arm not in arms:  # shared arms run once
                arms.append(arm)
    reference = _arm(data.get("reference") or {"activation": "irelu", "denorm": True, "rescale": True},
                     f"{where}: reference")
    if reference not in arms:
        raise ValueError(f"{where}: the reference arm {reference.key} is not among the study's arms")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ValueError(f"{where}: fixed must map TrainConfig keys to values, got {fixed!r}")
    models = _list(data, "models", where, str, ["schnet", "cgcnn"])
    family = family_of(models[0]) if models else family_of("")
    datasets = _list(data, "datasets", where, str, [family.default_dataset()])
    study = Study(name=path.stem, arms=arms, reference=reference, models=models,
                  seeds=_list(data, "seeds", where, int, [0, 1, 2]),
                  datasets=[family.resolve(d, path.parent, model=models[0] if models else '') for d in datasets],
                  split_seeds=str(data.get("split_seeds", "fixed")), fixed=dict(fixed),
                  model_sizes=dict(data.get("model_sizes") or {}),
                  description=str(data.get("description", "")).strip(), source=where)
    study.validate()
    return study


def list_studies() -> list[str]:
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def get(name: str) -> dict:
    """The Tune param space of a study (built-in name or YAML path)."""
    return load_study(name).param_space()


def tuning_space(name: str = "default") -> dict:
    """Optuna search spaces (continuous / categorical only: OptunaSearch rejects grid_search).

    The rescale exponent k of C = 10^k is searched as a categorical choice of powers of ten.
    """
    from ray import tune

    spaces = {
        "default": {"lr": tune.loguniform(1e-4, 1e-2), "force_weight": tune.loguniform(1.0, 100.0),
                    "rescale_factor": tune.choice([1e2, 1e3, 1e4, 1e5, 1e6])},
        "lr": {"lr": tune.loguniform(1e-4, 1e-2)},
    }
    if name not in spaces:
        raise ValueError(f"unknown tuning space {name!r}; known: {', '.join(spaces)}")
    return spaces[name]
