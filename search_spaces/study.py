from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from dcnn.atomistic.molecules import DEFAULT_DATASET
from dcnn.config import LEGACY_SIZE_NAMES, SIZE_PREFIX, TrainConfig
from dcnn.models import has_normalization
from dcnn.registry import family_of, get_spec, model_names, resolve_config, resolve_dataset
from search_spaces.factors import BUILTIN, REQUIRED, Factor, factor, level_of
from search_spaces.seed_design import AUTO, SeedDesign
from search_spaces.schema import STUDY_KEYS, check_study_data, read_study_file

STUDY_DIR = Path(__file__).resolve().parent / "studies"
FACTORS = tuple(BUILTIN)  # the built-in factors' keys (search_spaces/factors.py declares them)
_FIELD_DEFAULTS = TrainConfig().to_dict()
SPLIT_SEEDS = ("fixed", "vary")
# Keys a study adds to a Tune config to label a trial (not TrainConfig settings); plugin_path: folders
# a trial puts on sys.path before it resolves a plug-in model (runner.plugin_path); factors: the keys of a
# study's factors beyond the built-ins (force_weight,size.cutoff), so a trial's name and tags show them.
LABEL_KEYS = ("arm", "study", "phase", "cell", "data", "plugin_path", "factors")
_STUDY_KEYS = set(STUDY_KEYS)  # the keys a study file may have (search_spaces/schema.py declares them)
# what a published result a study declares says (`peers:` in its YAML): shown beside the baselines, with the
# reference arm's ratio to it (orchestrator/report_tables.py)
PEER_KEYS = ("name", "data", "metric", "value", "source")


class Arm:
    """One combination of the factors' levels (search_spaces/factors.py): `irelu+DN+LR+LSUV`.

    DN = denormalization, LR = label rescaling, ES = per-species energy shift, LSUV = data-dependent
    initialisation; a study's own factors follow (`irelu+DN+LR+force_weight=10`). Two arms are the same
    arm when their keys are. `Arm("irelu", True, True)` builds one of the built-ins (ES off, default
    init); `Arm.of({...})` one of any factors.
    """

    __slots__ = ("levels",)

    def __init__(self, activation: str, denorm: bool, rescale: bool, shift: bool = False, init: str = "default",
                 **others):
        levels = {"activation": activation, "denorm": denorm, "rescale": rescale, "shift": shift, "init": init}
        for name, level in others.items():
            levels[factor(name).key] = level
        object.__setattr__(self, "levels", _ordered(levels))

    @classmethod
    def of(cls, levels: dict) -> "Arm":
        """An arm from {factor key: level}; built-ins not given take their default, None = the study's setting."""
        arm = cls.__new__(cls)
        full = {k: (f.default if f.default != REQUIRED else None) for k, f in BUILTIN.items()}
        object.__setattr__(arm, "levels", _ordered({**full, **levels}))
        return arm

    @classmethod
    def from_config(cls, config: dict) -> "Arm":
        """The arm of a trial's config (the built-ins, and the study's own factors it lists under `factors`)."""
        own = [k for k in str(config.get("factors") or "").split(",") if k]
        return cls.of({**{k: level_of(config, f) for k, f in BUILTIN.items()}, **{k: config.get(k) for k in own}})

    def __setattr__(self, name, value):
        raise AttributeError("an Arm is immutable: use arm.with_levels(...)")

    def __getattr__(self, name: str):
        levels = object.__getattribute__(self, "levels")
        for key, level in levels:
            if key == name:
                return level
        raise AttributeError(name)

    def get(self, key: str, default=None):
        return dict(self.levels).get(key, default)

    def with_levels(self, levels: dict) -> "Arm":
        return Arm.of({**dict(self.levels), **levels})

    @property
    def factor_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.levels)

    def _tags(self) -> list[str]:
        return [t for k, v in self.levels[1:] if (t := _factor_of(k).tag(v))]

    @property
    def key(self) -> str:
        """Stable machine name, e.g. 'irelu+DN+LR', 'isilu+LR', 'irelu', 'irelu+LR+ES', 'irelu+DN+LR+LSUV',
        'irelu+DN+LR+force_weight=10'."""
        return "+".join([str(self.levels[0][1])] + self._tags())

    @property
    def label(self) -> str:
        """Readable name, e.g. 'irelu · DN+LR', 'irelu · no DN, no LR'."""
        parts = self._tags()
        return f"{self.levels[0][1]} · {'+'.join(parts) if parts else 'no DN, no LR'}"

    def as_config(self) -> dict:
        """The config keys the arm sets (a level of None — the study's setting — sets none)."""
        return {k: v for k, v in self.levels if v is not None}

    def __eq__(self, other) -> bool:
        return isinstance(other, Arm) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Arm({self.key})"

    def __reduce__(self):  # picklable for Ray
        return (Arm.of, (dict(self.levels),))


def _factor_of(key: str) -> Factor:
    return BUILTIN.get(key) or factor(key)


def _ordered(levels: dict) -> tuple:
    """Built-ins first in their declared order, then the study's own factors in the order given."""
    return tuple([(k, levels[k]) for k in BUILTIN if k in levels] + [(k, v) for k, v in levels.items() if k not in BUILTIN])


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
    # published results on the study's data ({name, data: a data set's label, metric: a metric key of the
    # family, value: in the data set's units, source}), e.g. GAP's on mlearn: the report sets ours beside them
    peers: list = field(default_factory=list)
    # `seeds: auto`: seeds spent where a comparison is still open (search_spaces/seed_design.py); `seeds`
    # is then every seed an arm may get
    seed_design: Optional[SeedDesign] = None

    def fixed_for(self, model: str) -> dict:
        """The TrainConfig keys a trial of `model` gets from the study: `fixed`, then its `model_sizes`
        (model_size_key: a plug-in's own size names are no TrainConfig keys)."""
        return {**self.fixed, **{model_size_key(k): v for k, v in self.model_sizes.get(model, {}).items()}}

    @property
    def factors(self) -> tuple[Factor, ...]:
        """The study's factors: the built-ins, then its own (any TrainConfig key or model size its designs vary)."""
        return tuple(_factor_of(k) for k in self.reference.factor_keys)

    @property
    def own_factors(self) -> tuple[Factor, ...]:
        return tuple(f for f in self.factors if not f.builtin)

    def with_overrides(self, models=None, seeds=None, fixed=None, datasets=None, split_seeds=None,
                       levels=None) -> "Study":
        """The study with command-line overrides; `None` keeps the study's value (an empty list is an
        error, not 'keep'). `levels` ({factor key: level}) sets a factor on every arm (`--shift`: ES added)."""
        arms, reference = self.arms, self.reference
        design = self.seed_design
        if seeds == AUTO:
            design = design or SeedDesign()
            seeds = design.seeds
        elif seeds is not None:
            design = None
        if levels:
            arms = list(dict.fromkeys(a.with_levels(levels) for a in self.arms))
            reference = self.reference.with_levels(levels)
        s = replace(self, arms=arms, reference=reference,
                    models=list(self.models if models is None else models),
                    seeds=list(self.seeds if seeds is None else seeds),
                    datasets=list(self.datasets if datasets is None else datasets),
                    split_seeds=self.split_seeds if split_seeds is None else split_seeds,
                    fixed={**self.fixed, **(fixed or {})}, seed_design=design)
        # a size set on the command line (fixed) is every model's: it wins over the study's per-model value
        s = replace(s, model_sizes={m: {k: x for k, x in v.items() if k not in (fixed or {})}
                                    for m, v in self.model_sizes.items() if m in s.models})
        labels = set(s.dataset_labels().values())  # published results on data sets the study still has
        s = replace(s, peers=[p for p in self.peers if isinstance(p, dict) and p.get("data") in labels])
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
        keys = {a.factor_keys for a in self.arms}
        if len(keys) > 1 or keys != {self.reference.factor_keys}:
            raise ValueError(f"{where}: arms carry different factors {sorted(keys)}: build arms with Study's loader")
        if bad_fixed:
            raise ValueError(f"{where}: fixed must not set the study's axes {bad_fixed} (use the study's "
                             f"designs, models, seeds and datasets)")
        if self.fixed.get("test_dataset") and len(self.datasets) > 1:
            raise ValueError(f"{where}: fixed test_dataset is one test file for {len(self.datasets)} data sets; a "
                             f"test file goes with one data set (or bundle each with its own test set, as mlearn-Mo)")
        if "split_seed" in self.fixed and self.split_seeds == "vary":
            raise ValueError(f"{where}: fixed split_seed contradicts split_seeds: vary")
        self._validate_peers(where)
        if not isinstance(self.model_sizes, dict) or not all(isinstance(v, dict) for v in self.model_sizes.values()):
            raise ValueError(f"{where}: model_sizes must map model names to size mappings, got {self.model_sizes!r}")
        stray = [m for m in self.model_sizes if m not in self.models]
        not_sizes = sorted({k for m, v in self.model_sizes.items() for k in v
                            if not (is_size(k) or k in _size_names([m]))})
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

    def _validate_peers(self, where: str) -> None:
        labels = list(self.dataset_labels().values())
        metrics = [m.key for m in self.family.metrics]
        for k, peer in enumerate(self.peers):
            if not isinstance(peer, dict) or sorted(peer) != sorted(PEER_KEYS):
                raise ValueError(f"{where}: peers[{k}] must give exactly {', '.join(PEER_KEYS)}, got {peer!r}")
            if peer["data"] not in labels:
                raise ValueError(f"{where}: peers[{k}] ({peer['name']}): data {peer['data']!r} is not a data set of the "
                                 f"study ({', '.join(labels)})")
            if peer["metric"] not in metrics:
                raise ValueError(f"{where}: peers[{k}] ({peer['name']}): metric {peer['metric']!r} is not one of "
                                 f"{', '.join(metrics)}")
            value = peer["value"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{where}: peers[{k}] ({peer['name']}): value {value!r} must be a positive number in "
                                 f"the data set's units")

    def setting(self, key: str, model: str | None = None):
        """The value a trial of this study gets for a TrainConfig key (fixed, else TrainConfig's default), or
        for a size (`cutoff`, `size.cutoff`) the value the study sets (None: the preset's)."""
        model = model or self.models[0]
        cfg = TrainConfig.from_dict({**self.fixed_for(model), "model": model, "dataset": self.datasets[0]})
        if key.startswith(SIZE_PREFIX) or (key not in _FIELD_DEFAULTS and is_size(key)):
            return cfg.model_sizes().get(key.removeprefix(SIZE_PREFIX))
        return getattr(cfg, key)

    def resolved_settings(self) -> dict:
        """Every TrainConfig key but the study's axes, as its trials get it (the plan --resume compares)."""
        cfg = TrainConfig.from_dict({**self.fixed, "model": self.models[0], "dataset": self.datasets[0]}).to_dict()
        for key in FACTORS + ("model", "seed", "dataset", "threads", "device"):
            cfg.pop(key, None)
        cfg = {k: v for k, v in cfg.items() if not k.startswith(SIZE_PREFIX)}
        out = {**cfg, **{k: v for k, v in self.fixed.items() if is_size(k)}}
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
            same = {f.key: f.component[1] for f in self.factors if f.same_without_batchnorm}
            # the reference runs itself, never as another arm's twin
            for arm in sorted(self.arms, key=lambda a: a != self.reference):
                canonical = arm.with_levels(same)
                if canonical in seen:
                    out.setdefault(model, {})[arm.key] = seen[canonical]
                else:
                    seen[canonical] = arm.key
        return out

    def cells(self) -> list[tuple[str, Arm]]:
        """The (model, arm) pairs that run: every pair but the identical-by-construction twins."""
        skip = self.identical_arms()
        return [(model, arm) for arm in self.arms for model in self.models if arm.key not in skip.get(model, {})]

    def _factors_label(self) -> dict:
        """`factors`: the study's own factors' keys, so a trial's name and tags show them (none: no key)."""
        own = [f.key for f in self.own_factors]
        return {"factors": ",".join(own)} if own else {}

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
                   "dataset": dataset, "study": self.name, **self._factors_label()}
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
        from ray import (
            tune,  # here, not at import: `dcnn-ablate train` and `data` never load Ray
        )

        table = {arm.key: arm.as_config() for arm in self.arms}
        # Tune resolves the sample_from functions one after the other in the space's key order
        # (ray/tune/impl/placeholder.py: resolve_placeholders), so the trial's model and arm come before what
        # is read from them (a factor's value, a model's size).  `fixed` goes after them: a factor the study
        # also fixes keeps its key's place, and from first place it read an unresolved arm (KeyError).  The
        # grids keep their order, which is the order the trials run in.
        space: dict = {"study": self.name, "seed": tune.grid_search(list(self.seeds))}
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
        space.update({k: v for k, v in self.fixed.items() if k not in space})
        for f in self.factors:
            fallback = {m: self.fixed_for(m).get(f.key) for m in self.models}
            space[f.key] = tune.sample_from(ArmFactor(table, f.key, fallback))
        space.update(self._factors_label())
        for size in sorted({k for v in self.model_sizes.values() for k in v}):
            space[model_size_key(size)] = tune.sample_from(ModelSize(self.model_sizes, size))
        if self.split_seeds == "vary":
            space["split_seed"] = tune.sample_from(SplitSeed())
        return space


class ArmFactor:
    """`tune.sample_from` callable: the value of one factor for the trial's arm; an arm that leaves it at
    the study's setting gets the study's `fixed` value for the trial's model (None: TrainConfig's default
    or the preset's size) (picklable)."""

    def __init__(self, table: dict, factor: str, fallback: dict | None = None):
        self.table, self.factor, self.fallback = table, factor, fallback or {}

    def __call__(self, config: dict) -> object:
        value = self.table[config["arm"]].get(self.factor)
        if value is None:
            value = self.fallback.get(config["model"])
        if value is None and self.factor in _FIELD_DEFAULTS:
            value = _FIELD_DEFAULTS[self.factor]
        return value

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


def _levels(values, where: str, sizes: tuple) -> dict:
    """{factor key: level} of one combination a design or the reference names; built-ins it does not name
    take their default (a missing required one is an error), its own factors are checked by TrainConfig."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of factors ({', '.join(FACTORS)}, or any TrainConfig key "
                         f"or model size), got {values!r}")
    known, unknown = {}, []
    for name in values:
        try:
            known[name] = factor(str(name), sizes)
        except ValueError as e:
            unknown.append((name, str(e)))
    if len(unknown) == 1 and not unknown[0][1].startswith("unknown factor"):
        raise ValueError(f"{where}: {unknown[0][1]}")  # an axis named as a factor
    if unknown:
        raise ValueError(f"{where}: unknown factor(s) {sorted(str(n) for n, _ in unknown)}; factors are "
                         f"{', '.join(FACTORS)}, any TrainConfig key (force_weight, lr, …) or a model size "
                         f"(size.NAME" + (f"; the study's models have {', '.join(sizes)}" if sizes else "") + ")")
    out = {known[name].key: known[name].normalize(level, where) for name, level in values.items()}
    missing = [k for k, f in BUILTIN.items() if f.default == REQUIRED and k not in out]
    if missing:
        raise ValueError(f"{where}: missing factor(s) {missing}")
    return {**{k: f.default for k, f in BUILTIN.items() if f.default != REQUIRED}, **out}


def is_size(key: str) -> bool:
    """A model size's key: `size.NAME`, or a built-in size's bare name (studies written before sizes had keys)."""
    return key.startswith(SIZE_PREFIX) or key in LEGACY_SIZE_NAMES


def model_size_key(name: str) -> str:
    """The Tune key of a `model_sizes` entry: as the study writes it where TrainConfig reads that (`size.NAME`,
    or a built-in size's bare name, the key studies written before sizes had a prefix gave their trials, so
    `--resume` of such a study hands Tune the param space it started with), else `size.NAME` (a plug-in's own)."""
    return name if is_size(name) else SIZE_PREFIX + name


def _size_names(models: list[str]) -> tuple:
    """The size names of the study's models (their presets' keys), so a design may say `cutoff` for `size.cutoff`."""
    names = {}
    for model in models:
        try:
            names.update(dict.fromkeys(get_spec(model).size_names()))
        except ValueError:
            pass  # Study.validate names the unknown model
    return tuple(names)


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


def _extended(data, path: Path, seen: tuple = ()):
    """A study's data with `extends: NAME` resolved: the built-in study NAME's keys (its own `extends` first),
    then this file's over them, `fixed` merged key by key (so a variant declares the recipe and the published
    results once, in the study it extends, and changes only what differs)."""
    if not isinstance(data, dict) or "extends" not in data:
        return data
    base_name = data["extends"]
    if not isinstance(base_name, str) or not (STUDY_DIR / f"{base_name}.yaml").exists():
        raise ValueError(f"{path}: extends {base_name!r} is not a built-in study ({', '.join(list_studies())})")
    if base_name in seen:
        raise ValueError(f"{path}: extends {base_name!r} in a cycle ({' → '.join(seen + (base_name,))})")
    base_path = STUDY_DIR / f"{base_name}.yaml"
    base = _extended(read_study_file(base_path), base_path, seen + (base_name,))
    if not isinstance(base, dict):
        raise ValueError(f"{base_path}: a study is a mapping")
    out = {**base, **{k: v for k, v in data.items() if k != "extends"}}
    if isinstance(base.get("fixed"), dict) and isinstance(data.get("fixed"), dict):
        out["fixed"] = {**base["fixed"], **data["fixed"]}
    return out


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

    raw = read_study_file(path)
    data = _extended(raw, path)
    inherited_peers = isinstance(raw, dict) and "extends" in raw and "peers" not in raw
    where = str(path)
    check_study_data(data, where)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a study is a mapping with keys {sorted(_STUDY_KEYS)}")
    unknown = set(data) - _STUDY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_STUDY_KEYS)}")
    if not isinstance(data.get("designs"), list) or not data["designs"]:
        raise ValueError(f"{where}: 'designs' must be a non-empty list of factor grids")
    models = _list(data, "models", where, str, ["schnet", "cgcnn"])
    sizes = _size_names(models)
    combos: list[dict] = []
    for k, design in enumerate(data["designs"]):
        if not isinstance(design, dict):
            raise ValueError(f"{where}: designs[{k}] must map factors to lists of levels")
        grid = {f: v if isinstance(v, list) else [v] for f, v in design.items()}
        grid = {f: grid[f] for f in sorted(grid, key=lambda f: list(BUILTIN).index(f) if f in BUILTIN else len(BUILTIN))}
        for combo in itertools.product(*grid.values()):
            combos.append(_levels(dict(zip(grid, combo)), f"{where}: designs[{k}]", sizes))
    reference_levels = _levels(data.get("reference") or {"activation": "irelu", "denorm": True, "rescale": True},
                               f"{where}: reference", sizes)
    # every arm carries every factor of the study: one a design does not name stays at the study's setting (None)
    own = list(dict.fromkeys(k for c in [*combos, reference_levels] for k in c if k not in BUILTIN))
    blank = dict.fromkeys(own)
    arms: list[Arm] = list(dict.fromkeys(Arm.of({**blank, **c}) for c in combos))  # shared arms run once
    reference = Arm.of({**blank, **reference_levels})
    if reference not in arms:
        raise ValueError(f"{where}: the reference arm {reference.key} is not among the study's arms")
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ValueError(f"{where}: fixed must map TrainConfig keys to values, got {fixed!r}")
    family = family_of(models[0]) if models else family_of("")
    if fixed.get("test_dataset"):  # a test file, like the data sets, relative to the YAML file
        fixed = {**fixed, "test_dataset": resolve_dataset(family, fixed["test_dataset"], path.parent,
                                                          model=models[0] if models else "")}
    datasets = _list(data, "datasets", where, str, [family.default_dataset()])
    resolved_datasets = [resolve_dataset(family, d, path.parent, model=models[0] if models else '') for d in datasets]
    peers = list(data.get("peers") or [])
    if inherited_peers:  # published results the extended study declares on data sets this one does not have
        labels = {family.dataset_label(d) for d in resolved_datasets}
        peers = [p for p in peers if not isinstance(p, dict) or p.get("data") in labels]
    design = SeedDesign.parse(data.get("seeds"), where)
    study = Study(name=path.stem, arms=arms, reference=reference, models=models,
                  seeds=design.seeds if design else _list(data, "seeds", where, int, [0, 1, 2]),
                  seed_design=design,
                  datasets=resolved_datasets,
                  split_seeds=str(data.get("split_seeds", "fixed")), fixed=dict(fixed),
                  model_sizes=dict(data.get("model_sizes") or {}), peers=peers,
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
