from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from ray import tune

from dcnn.config import ACTIVATION_CHOICES, TrainConfig
from dcnn.models import MODEL_NAMES

STUDY_DIR = Path(__file__).resolve().parent / "studies"
FACTORS = ("activation", "denorm", "rescale")
# Settings every built-in study starts from.  The paper trains 50 epochs at lr 1e-4 on GPUs; a study that
# finishes in minutes on two cores needs a shorter, faster schedule (override with `fixed` or flags).
# C = 1e4 brings |E|/C of the bundled GFN2 ethanol (≈ 7,100 kcal/mol) below 1, as the paper's
# C = 1e6 does for MD17's DFT energies (≈ 1e5 kcal/mol).
DEFAULTS = {"lr": 1e-3, "rescale_factor": 1e4, "epochs": 20, "n_train": 800, "n_val": 200, "n_test": 400}
_STUDY_KEYS = {"description", "reference", "designs", "models", "seeds", "fixed"}


@dataclass(frozen=True)
class Arm:
    activation: str
    denorm: bool
    rescale: bool

    @property
    def key(self) -> str:
        """Stable machine name, e.g. 'irelu+DN+LR', 'isilu+LR', 'irelu'."""
        return "+".join([self.activation] + ["DN"] * self.denorm + ["LR"] * self.rescale)

    @property
    def label(self) -> str:
        """Readable name, e.g. 'irelu · DN+LR', 'irelu · no DN, no LR'."""
        parts = ["DN"] * self.denorm + ["LR"] * self.rescale
        return f"{self.activation} · {'+'.join(parts) if parts else 'no DN, no LR'}"

    def as_config(self) -> dict:
        return {"activation": self.activation, "denorm": self.denorm, "rescale": self.rescale}


@dataclass
class Study:
    name: str
    arms: list[Arm]
    reference: Arm
    models: list[str] = field(default_factory=lambda: ["schnet", "cgcnn"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    fixed: dict = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def with_overrides(self, models=None, seeds=None, fixed=None) -> "Study":
        s = replace(self, models=list(models or self.models), seeds=list(seeds or self.seeds),
                    fixed={**self.fixed, **(fixed or {})})
        s.validate()
        return s

    def validate(self) -> None:
        """Build every (arm, model) TrainConfig once, so a bad study fails before Ray starts."""
        where = self.source or self.name
        if not self.arms:
            raise ValueError(f"{where}: the study has no arms")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"{where}: seeds must be a non-empty list of distinct integers, got {self.seeds}")
        for model in self.models:
            if model not in MODEL_NAMES:
                raise ValueError(f"{where}: unknown model {model!r}; known: {', '.join(MODEL_NAMES)}")
        bad_fixed = [k for k in self.fixed if k in FACTORS + ("model", "seed")]
        if bad_fixed:
            raise ValueError(f"{where}: fixed must not set the study's axes {bad_fixed}")
        for arm, model in itertools.product(self.arms, self.models):
            try:
                TrainConfig.from_dict({**self.fixed, **arm.as_config(), "model": model, "seed": self.seeds[0]})
            except ValueError as e:
                raise ValueError(f"{where}: arm {arm.key} on {model}: {e}") from e

    def trial_configs(self) -> list[dict]:
        """Every trial's flat config, in a stable order (arm, model, seed)."""
        return [{**self.fixed, **arm.as_config(), "arm": arm.key, "model": model, "seed": seed,
                 "study": self.name}
                for arm, model, seed in itertools.product(self.arms, self.models, self.seeds)]

    def param_space(self) -> dict:
        """A Tune param space: grids over arm, model and seed; the arm's factors follow from its key."""
        table = {arm.key: arm.as_config() for arm in self.arms}
        space = {**self.fixed, "study": self.name,
                 "arm": tune.grid_search([a.key for a in self.arms]),
                 "model": tune.grid_search(list(self.models)),
                 "seed": tune.grid_search(list(self.seeds))}
        for factor in FACTORS:
            space[factor] = tune.sample_from(ArmFactor(table, factor))
        return space


class ArmFactor:
    """`tune.sample_from` callable: the value of one factor for the trial's arm (picklable)."""

    def __init__(self, table: dict, factor: str):
        self.table, self.factor = table, factor

    def __call__(self, config: dict) -> object:
        return self.table[config["arm"]][self.factor]

    def __repr__(self) -> str:
        return f"ArmFactor({self.factor})"


def _arm(values: dict, where: str) -> Arm:
    unknown = set(values) - set(FACTORS)
    if unknown:
        raise ValueError(f"{where}: unknown factor(s) {sorted(unknown)}; factors are {', '.join(FACTORS)}")
    missing = [f for f in FACTORS if f not in values]
    if missing:
        raise ValueError(f"{where}: missing factor(s) {missing}")
    if values["activation"] not in ACTIVATION_CHOICES:
        raise ValueError(f"{where}: activation {values['activation']!r} is not one of {', '.join(ACTIVATION_CHOICES)}")
    for f in ("denorm", "rescale"):
        if not isinstance(values[f], bool):
            raise ValueError(f"{where}: {f} must be true or false, got {values[f]!r}")
    return Arm(values["activation"], values["denorm"], values["rescale"])


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
    study = Study(name=path.stem, arms=arms, reference=reference,
                  models=list(data.get("models") or ["schnet", "cgcnn"]),
                  seeds=[int(s) for s in (data.get("seeds") or [0, 1, 2])],
                  fixed={**DEFAULTS, **(data.get("fixed") or {})},
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
    spaces = {
        "default": {"lr": tune.loguniform(1e-4, 1e-2), "force_weight": tune.loguniform(1.0, 100.0),
                    "rescale_factor": tune.choice([1e2, 1e3, 1e4, 1e5, 1e6])},
        "lr": {"lr": tune.loguniform(1e-4, 1e-2)},
    }
    if name not in spaces:
        raise ValueError(f"unknown tuning space {name!r}; known: {', '.join(spaces)}")
    return spaces[name]
