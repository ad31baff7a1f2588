"""The factors an ablation varies, declared once.

A factor is a config key whose levels tell a study's arms apart. The five built-ins are the paper's
method and what we add to it (activation, DN, LR, ES, LSUV); **any other TrainConfig key or model size is
a factor too**, declared on the fly from a study YAML (`force_weight: [10, 30, 100]`, `cutoff: [4, 5]`,
`size.width: [16, 32]` for a plug-in's own size). Everything that names, tags, checks or compares a
factor reads its `Factor` here: arm keys and labels (search_spaces/study.py), MLflow tags
(orchestrator/tracking.py), the `--shift` shortcut (orchestrator/cli.py), the report's columns and
Findings (orchestrator/report.py) and the Contributions and ANOVA (orchestrator/contributions.py).

**Adding a built-in factor touches one place: `BUILTIN` below** (and the TrainConfig key it sets).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from dcnn.config import ACTIVATION_CHOICES, SIZE_PREFIX, TrainConfig
from dcnn.init import INIT_MODES

REQUIRED = "<required>"  # a built-in level every design must name (no level goes without saying)
REFERENCE = "<the reference arm's level>"  # a Contributions component's "on" level taken from the reference arm


@dataclass(frozen=True)
class Factor:
    """One axis of a study.

    `key` is the config key a level sets (a TrainConfig field, or `size.NAME` for a model size); `name`
    how tables and sentences call it. `tags` say how an arm's key names a level ('' = not named: the
    level goes without saying); a level without a tag is named `name=level` (`force_weight=10`). The
    first factor (`leads`) names its level bare, first: `irelu+DN+LR`. `default` is the level of an arm
    whose design does not name the factor (REQUIRED: every design must; None: the study's own setting,
    not written into the trial's config). `component` makes it a binary part of the method for the
    Contributions: (on, off), `on` may be REFERENCE. `same_without_batchnorm`: its levels are one
    computation on a model without BatchNorm (DN), so those arms run once. `shortcut`: an `ablate` flag
    that sets `component`'s on level on every arm (`--shift`).
    """

    key: str
    name: str
    levels: tuple = ()  # the allowed levels; () = whatever the config accepts (checked by building it)
    default: object = None
    tags: dict = field(default_factory=dict)
    leads: bool = False
    component: tuple | None = None
    component_label: str = ""  # the Contributions' name of the component, when not `name` ("LSUV")
    added: str = "added"  # how a Contributions row says the component is switched on ("DN added", "LSUV init")
    said: str = ""  # how a change of level is said: "" → "name a → b"; "flag" → "name added/removed"
    same_without_batchnorm: bool = False
    shortcut: str = ""
    help: str = ""

    @property
    def builtin(self) -> bool:
        return self.key in BUILTIN

    def normalize(self, level, where: str):
        """The level as the trials get it: checked against `levels`, bool flags as bools, numbers as
        numbers (YAML's 10 and 10.0 are one level)."""
        if self.levels and level not in self.levels:
            if all(isinstance(x, bool) for x in self.levels):
                raise ValueError(f"{where}: {self.key} must be true or false, got {level!r}")
            raise ValueError(f"{where}: {self.key} {level!r} is not one of {', '.join(map(str, self.levels))}")
        if self.key in _FIELD_TYPES:  # a TrainConfig field: its type (10 → 10.0 for force_weight)
            try:
                level = TrainConfig.from_dict({**_MINIMAL, self.key: level}).to_dict()[self.key]
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if isinstance(level, (list, dict)) or level is None:
            raise ValueError(f"{where}: {self.key} levels must be single values, got {level!r}")
        return level

    def tag(self, level) -> str:
        """How an arm's key names this factor's level: 'DN', 'LSUV', '' (unnamed), 'force_weight=10'."""
        if level is None:
            return ""
        if self.leads:
            return str(level)
        for known, text in self.tags.items():
            if type(known) is type(level) and known == level:
                return text
        return f"{self.name}={level_text(level)}"

    def change(self, before, after) -> str:
        """What moving from the reference's level to an arm's means, in words: 'DN removed', 'irelu →
        isilu', 'init default → lsuv', 'force_weight 30 → 10'."""
        if self.said == "flag":
            return f"{self.name} {'added' if after else 'removed'}"
        prefix = "" if self.leads else f"{self.name} "
        return f"{prefix}{level_text(before)} → {level_text(after)}"


def level_text(level) -> str:
    """A level in an arm's key or a sentence: 10.0 → '10', 1e-4 → '0.0001', True → 'true'."""
    if isinstance(level, bool):
        return "true" if level else "false"
    if isinstance(level, float) and math.isfinite(level):
        text = f"{level:g}"
        return text if float(text) == level else repr(level)
    return "preset's" if level is None else str(level)


_FIELD_TYPES = {f.name for f in dataclasses.fields(TrainConfig)}
_MINIMAL = {"model": "schnet"}  # enough for TrainConfig to type one key (no model is resolved)

# The built-in factors, in the order arm keys and tables list them. Adding one: an entry here.
BUILTIN: dict[str, Factor] = {f.key: f for f in (
    Factor("activation", "activation", levels=ACTIVATION_CHOICES, default=REQUIRED, leads=True,
           component=(REFERENCE, "original"),
           help="the activation: the architecture's own (original) or an integrated one (dcnn/activations.py)"),
    Factor("denorm", "DN", levels=(True, False), default=REQUIRED, tags={True: "DN", False: ""}, said="flag",
           component=(True, False), same_without_batchnorm=True, help="denormalization: BatchNorm removed"),
    Factor("rescale", "LR", levels=(True, False), default=REQUIRED, tags={True: "LR", False: ""}, said="flag",
           component=(True, False), help="label rescaling: E and F divided by rescale_factor"),
    Factor("shift", "ES", levels=(True, False), default=False, tags={True: "ES", False: ""}, said="flag",
           component=(True, False), shortcut="--shift",
           help="per-species energy shift fitted on the training split"),
    Factor("init", "init", levels=INIT_MODES, default="default", tags={"default": "", "lsuv": "LSUV"},
           component=("lsuv", "default"), component_label="LSUV", added="init", help="initialisation: the architecture's own or LSUV (dcnn/init.py)"),
)}

# Config keys that are a study's axes or labels, never factors
AXES = ("model", "seed", "dataset")
NOT_FACTORS = AXES + ("device", "threads", "split_seed")


def factor(name: str, sizes: tuple = ()) -> Factor:
    """The factor a study YAML names: a built-in, a TrainConfig key, `size.NAME`, or a bare size name of
    one of the study's models (`sizes`); ValueError naming what a factor can be otherwise."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name in NOT_FACTORS:
        raise ValueError(f"{name} is an axis of every study (models, seeds, datasets, split_seeds), not a factor")
    if name in _FIELD_TYPES:
        return Factor(name, name)
    size = name[len(SIZE_PREFIX):] if name.startswith(SIZE_PREFIX) else (name if name in sizes else "")
    if size:
        return Factor(SIZE_PREFIX + size, size)
    raise ValueError(f"unknown factor {name!r}: a factor is a built-in ({', '.join(BUILTIN)}), a TrainConfig key "
                     f"(force_weight, lr, cutoff of the data, …), or a model size (size.NAME"
                     + (f"; the study's models have {', '.join(sizes)}" if sizes else "") + ")")


def level_of(config: dict, f: Factor):
    """A trial's (or arm's) level of a factor from its config: the config's value, else the factor's
    default (a study made before ES or LSUV existed ran without them), else the study's setting as
    TrainConfig gives it (None for a size: the preset's)."""
    value = config.get(f.key) if hasattr(config, "get") else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if f.default not in (None, REQUIRED):
            return f.default
        if f.key in _FIELD_TYPES:
            return getattr(TrainConfig(), f.key)
        return None
    return value


def study_factors(frame) -> tuple[Factor, ...]:
    """The factors of a report's trials or summary table: the built-ins, then the study's own, which each
    trial lists in its `factors` column (search_spaces/study.py adds the label to every trial's config)."""
    own = []
    if "factors" in frame:
        for text in frame["factors"].fillna("").astype(str):
            own += [k for k in text.split(",") if k and k not in own]
    return tuple(BUILTIN.values()) + tuple(factor(k) for k in own)
